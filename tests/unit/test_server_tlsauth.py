"""tlsauth: what a client certificate allows (Flask side), the CRL re-read as it changes, the
front door's word taken only with its secret, and the TLS settings each service reads
(FOTA_TLS_CA/CERT/KEY, FOTA_FRONTDOOR_SECRET_FILE)."""
from __future__ import annotations

import asyncio
import os

import pytest
from flask import Blueprint, Flask

from fotalab.device.config import DeviceConfig
from fotalab.envconfig import ConfigError, Env
from fotalab.lab.pki import LabCA
from fotalab.server.config import ServerConfig
from fotalab.server.errors import ServerError
from fotalab.server.tlsauth import (
    IDENTITY,
    PEER,
    ClientCertificates,
    FrontDoorPeers,
    Revocations,
    require_own_identity,
    token_needs_tls,
    vouched,
)
from fotalab.tlsfiles import TlsFiles


@pytest.fixture
def client():
    app = Flask("t")
    api = Blueprint("api", __name__, url_prefix="/api/v1")
    api.get("/manifest", endpoint="manifest")(lambda: "manifest")
    api.get("/devices/<device_id>/assignment", endpoint="get_assignment")(lambda device_id: "assignment")
    api.put("/devices/<device_id>/assignment", endpoint="put_assignment")(lambda device_id: "put")
    app.register_blueprint(api)
    app.get("/DEFAULT/controller/v1/<controller_id>", endpoint="ddi")(lambda controller_id: "ddi")
    app.before_request(require_own_identity)
    app.register_error_handler(ServerError, lambda exc: (str(exc), exc.status))
    test = app.test_client()

    def call(path: str, identity: str | None, method: str = "GET"):
        scope = {IDENTITY: identity} if identity else {}
        return test.open(path, method=method, environ_overrides={"asgi.scope": scope})
    return call


def test_a_device_certificate_may_name_only_itself(client):
    assert client("/api/v1/manifest?device=device-1", "device-1").status_code == 200
    assert client("/api/v1/manifest", "device-1").status_code == 200
    assert client("/api/v1/manifest?device=device-2", "device-1").status_code == 403
    assert client("/api/v1/manifest?device=device-1&device=device-2", "device-1").status_code == 403
    assert client("/api/v1/devices/device-2/assignment", "device-1").status_code == 403
    assert client("/api/v1/devices/device-1/assignment", "device-1").status_code == 200
    assert client("/DEFAULT/controller/v1/device-2", "device-1").status_code == 403
    assert client("/DEFAULT/controller/v1/device-1", "device-1").status_code == 200


def test_the_manifest_needs_a_certificate_and_writes_never_take_a_devices(client):
    answer = client("/api/v1/manifest?device=device-1", None)
    assert answer.status_code == 403 and b"FOTA_TLS_CERT" in answer.data
    assert client("/api/v1/devices/device-1/assignment", None).status_code == 200      # operators' reads
    assert client("/api/v1/devices/device-1/assignment", "device-1", "PUT").status_code == 403
    assert client("/api/v1/devices/device-1/assignment", "fota-cli", "PUT").status_code == 200
    assert client("/api/v1/devices/device-2/assignment", "fota-cli").status_code == 200


def test_the_token_needs_tls():
    app = Flask("t")
    with app.test_request_context("/", base_url="http://x"):
        from flask import request
        assert "only over TLS" in token_needs_tls(request)
    with app.test_request_context("/", base_url="https://x"):
        from flask import request
        assert token_needs_tls(request) is None


def test_revocations_follow_the_crl_file(tmp_path):
    ca = LabCA(tmp_path / "ca")
    ca.ensure_identities(["device-1"])
    revocations = Revocations(ca.crl_path, every_s=0)
    serial = ca.serial("device-1")
    assert not revocations.revoked(serial)
    ca.revoke("device-1")
    os.utime(ca.crl_path, ns=(1, 1))       # a new stamp even within the file system's time granularity
    assert revocations.revoked(serial)
    assert not Revocations(None).revoked(serial)


def test_a_revoked_peer_gets_403_before_the_app_runs(tmp_path):
    ca = LabCA(tmp_path / "ca")
    ca.ensure_identities(["device-1", "device-2"])
    ca.revoke("device-1")
    seen, sent = [], []

    async def app(scope, receive, send):
        seen.append(scope.get(IDENTITY))

    async def send(message):
        sent.append(message)

    layer = ClientCertificates(app, ca.crl_path)
    asyncio.run(layer({"type": "http", PEER: ("device-1", ca.serial("device-1"))}, None, send))
    assert sent[0]["status"] == 403 and b"revoked" in sent[1]["body"] and seen == []
    asyncio.run(layer({"type": "http", PEER: ("device-2", ca.serial("device-2"))}, None, send))
    assert seen == ["device-2"]


def test_services_read_their_tls_files_from_the_environment(tmp_path):
    files = {"FOTA_TLS_CA": "/c/ca.pem", "FOTA_TLS_CERT": "/c/cert.pem", "FOTA_TLS_KEY": "/c/key.pem"}
    assert DeviceConfig.from_env(Env({"FOTA_DEVICE_ID": "device-1", **files})).tls == TlsFiles(
        *(__import__("pathlib").Path(v) for v in files.values()))
    assert DeviceConfig.from_env(Env({"FOTA_DEVICE_ID": "device-1"})).tls is None
    server = ServerConfig.from_env(Env({**files, "FOTA_TLS_CRL": "/c/crl.pem"}))
    assert server.tls.cert.name == "cert.pem" and server.tls_crl.name == "crl.pem"
    with pytest.raises(ConfigError, match="FOTA_TLS_KEY"):
        TlsFiles.from_env(Env({"FOTA_TLS_CA": "/c/ca.pem", "FOTA_TLS_CERT": "/c/cert.pem"}))
    with pytest.raises(ConfigError, match="without FOTA_TLS_CA"):
        TlsFiles.from_env(Env({"FOTA_TLS_CERT": "/c/cert.pem", "FOTA_TLS_KEY": "/c/key.pem"}))


def test_a_ddi_poll_answered_before_flask_is_refused_for_another_controller(tmp_path):
    ca = LabCA(tmp_path / "ca")
    ca.ensure_identities(["device-1"])
    seen, sent = [], []

    async def app(scope, receive, send):
        seen.append(scope["path"])

    async def send(message):
        sent.append(message)

    layer = ClientCertificates(app, ca.crl_path)
    peer = ("device-1", ca.serial("device-1"))
    asyncio.run(layer({"type": "http", "path": "/DEFAULT/controller/v1/device-2", PEER: peer}, None, send))
    assert sent[0]["status"] == 403 and seen == []
    for path in ("/DEFAULT/controller/v1/device-1", "/DEFAULT/controller/v1/device-1/deploymentBase/3",
                 "/api/v1/releases"):
        asyncio.run(layer({"type": "http", "path": path, PEER: peer}, None, send))
    assert len(seen) == 3


SECRET = b"door-secret-0123456789"


def door_scope(*headers: tuple[bytes, bytes], scheme: str = "http", **extra) -> dict:
    return {"type": "http", "path": "/api/v1/manifest", "scheme": scheme,
            "headers": [(b"host", b"lab"), *headers], **extra}


VOUCHED = ((b"x-fota-frontdoor", SECRET), (b"x-fota-client-identity", b"device-1"),
           (b"x-fota-client-serial", b"1A2B"), (b"x-forwarded-proto", b"https"))


def test_the_front_doors_word_is_taken_only_with_its_secret():
    scope = vouched(door_scope(*VOUCHED), SECRET)
    assert scope[PEER] == ("device-1", 0x1A2B) and scope["scheme"] == "https"
    assert scope["headers"] == [(b"host", b"lab"), (b"x-forwarded-proto", b"https")]   # the secret goes no further
    browser = vouched(door_scope(*VOUCHED[:1], (b"x-fota-client-identity", b""), (b"x-fota-client-serial", b""),
                                 VOUCHED[3]), SECRET)
    assert browser[PEER] is None and browser["scheme"] == "https"


@pytest.mark.parametrize("headers", [
    VOUCHED[1:],                                                     # no secret: a client straight to gunicorn
    ((b"x-fota-frontdoor", b"a guess"), *VOUCHED[1:]),
    ((b"x-fota-frontdoor", SECRET + b"x"), *VOUCHED[1:]),
    (*VOUCHED, (b"x-fota-frontdoor", b"a guess")),                   # each header once, or not at all
    (*VOUCHED, (b"x-fota-client-identity", b"device-2"))])
def test_headers_without_the_secret_name_nobody_and_say_nothing_of_tls(headers):
    scope = vouched(door_scope(*headers, scheme="https", **{PEER: ("device-9", 9)}), SECRET)
    assert PEER not in scope and scope["scheme"] == "http"        # gunicorn may have believed X-Forwarded-Proto
    assert all(not name.startswith(b"x-fota-") for name, _ in scope["headers"])


def test_a_serial_that_is_not_hex_is_no_peer():
    scope = vouched(door_scope(VOUCHED[0], VOUCHED[1], (b"x-fota-client-serial", b"zz")), SECRET)
    assert scope[PEER] is None and scope["scheme"] == "http"


def test_behind_the_door_the_crl_and_the_controller_rule_still_apply(tmp_path):
    ca = LabCA(tmp_path / "ca")
    ca.ensure_identities(["device-1", "device-2"])
    ca.revoke("device-2")
    seen, sent = [], []

    async def app(scope, receive, send):
        seen.append((scope.get(IDENTITY), scope["scheme"]))

    async def send(message):
        sent.append(message)

    layer = FrontDoorPeers(ClientCertificates(app, ca.crl_path), SECRET.decode())

    def call(identity: str, path: str = "/api/v1/manifest") -> None:
        headers = ((b"x-fota-frontdoor", SECRET), (b"x-fota-client-identity", identity.encode()),
                   (b"x-fota-client-serial", f"{ca.serial(identity):X}".encode()), (b"x-forwarded-proto", b"https"))
        asyncio.run(layer({**door_scope(*headers), "path": path}, None, send))
    call("device-1")
    assert seen == [("device-1", "https")]
    call("device-2")
    assert sent[0]["status"] == 403 and b"revoked" in sent[1]["body"]
    call("device-1", "/DEFAULT/controller/v1/device-2")
    assert sent[2]["status"] == 403 and len(seen) == 1


def test_the_server_reads_the_front_doors_secret_only_with_tls(tmp_path):
    files = {"FOTA_TLS_CA": "/c/ca.pem", "FOTA_TLS_CERT": "/c/cert.pem", "FOTA_TLS_KEY": "/c/key.pem"}
    (tmp_path / "secret").write_text(SECRET.decode() + "\n")
    door = {"FOTA_FRONTDOOR_SECRET_FILE": str(tmp_path / "secret")}
    behind = ServerConfig.from_env(Env({**files, **door}))
    assert behind.frontdoor_secret == SECRET.decode() and not behind.gunicorn_tls
    assert SECRET.decode() not in repr(behind)
    assert ServerConfig.from_env(Env(files)).gunicorn_tls
    assert ServerConfig.from_env(Env(door)).frontdoor_secret == ""
    for content in ("", "short"):
        (tmp_path / "secret").write_text(content)
        with pytest.raises(ConfigError, match="empty or shorter than 16"):
            ServerConfig.from_env(Env({**files, **door}))
