"""The front door with TLS (fota-frontdoor: the real nginx) in front of the real server under
gunicorn, which believes the client identity the door verified, and only the door: a device's
certificate speaks for that device alone, nginx refuses what it cannot verify (another CA,
expired, revoked within 10 s without a restart, plain HTTP), headers forged straight to gunicorn
name nobody, artifacts need no certificate, and the server still ingests MQTT over TLS."""
from __future__ import annotations

import datetime as dt
import json
import socket
import ssl
import subprocess
import sys
import time

import pytest
import requests

from fotalab.lab import locallab
from fotalab.lab.pki import LabCA
from fotalab.lab.provision import frontdoor_secret

pytestmark = pytest.mark.integration
MANIFEST = {"hardware": "fotalab-m4", "version": "1.0.0"}
TOKEN = "frontdoor-tls-token"
REFUSED_BY_NGINX = b"SSL certificate error"


@pytest.fixture(scope="module")
def lab(store, tmp_path_factory):
    """(door, server, broker): the server behind the TLS door, ingesting from the broker over TLS."""
    root = tmp_path_factory.mktemp("frontdoor-tls")
    broker = locallab.Broker(root / "broker", tls=True, plaintext=False).start()
    broker.ca.ensure_identities(["device-1", "device-2", "device-3", "fota-cli"])
    env = {**locallab.FrontDoor.server_env(broker.ca), "FOTA_API_TOKEN": TOKEN,
           "FOTA_MQTT_HOST": "127.0.0.1", "FOTA_MQTT_PORT": str(broker.tls_port)}
    server = locallab.Server(store, root / "server.log", env=env).start()
    door = locallab.FrontDoor(root / "door", server, ca=broker.ca).start()
    yield door, server, broker
    door.stop()
    server.stop()
    broker.stop()


@pytest.fixture(scope="module")
def door(lab) -> locallab.FrontDoor:
    return lab[0]


def get(door: locallab.FrontDoor, path: str, identity: str = "", **kwargs) -> requests.Response:
    return requests.get(f"{door.url}{path}", timeout=10, **door.client_tls(identity), **kwargs)


def test_the_dashboard_and_healthz_need_no_certificate_but_the_manifest_does(door):
    assert get(door, "/").status_code == 200
    assert get(door, "/healthz").status_code == 200
    answer = get(door, "/api/v1/manifest", params={**MANIFEST, "device": "device-1"})
    assert answer.status_code == 403 and "FOTA_TLS_CERT" in answer.json()["error"]


def test_a_device_gets_its_own_manifest_and_nothing_of_another_device(door):
    answer = get(door, "/api/v1/manifest", "device-1", params=MANIFEST)
    assert answer.status_code == 200 and answer.json()["update"]
    assert get(door, "/api/v1/manifest", "device-1", params={**MANIFEST, "device": "device-1"}).status_code == 200
    other = get(door, "/api/v1/manifest", "device-1", params={**MANIFEST, "device": "device-2"})
    assert other.status_code == 403 and "device-1" in other.json()["error"]
    assert get(door, "/api/v1/devices/device-2/assignment", "device-1").status_code == 403
    assert get(door, "/DEFAULT/controller/v1/device-2", "device-1").status_code == 403


def test_the_token_over_the_doors_tls_writes_and_a_devices_certificate_never_does(door):
    url, bearer = f"{door.url}/api/v1/devices/device-1/assignment", {"Authorization": f"Bearer {TOKEN}"}
    assert requests.put(url, json={"version": "2.0.0"}, headers=bearer, timeout=10,
                        **door.client_tls("device-1")).status_code == 403
    operator = requests.put(url, json={"version": "2.0.0"}, headers=bearer, timeout=10, **door.client_tls())
    assert operator.status_code < 300, operator.text
    requests.delete(url, headers=bearer, timeout=10, **door.client_tls("fota-cli")).raise_for_status()


def test_headers_forged_straight_to_gunicorn_or_through_the_door_name_nobody(lab):
    door, server, broker = lab
    forged = {"X-Fota-Frontdoor": "a-guess-at-the-secret", "X-Fota-Client-Identity": "device-1",
              "X-Fota-Client-Serial": f"{broker.ca.serial('device-1'):X}", "X-Forwarded-Proto": "https"}
    for headers in (forged, {k: v for k, v in forged.items() if k != "X-Fota-Frontdoor"}):
        direct = requests.get(f"{server.url}/api/v1/manifest", params=MANIFEST, headers=headers, timeout=10)
        assert server.url.startswith("http://") and direct.status_code == 403
        assert "FOTA_TLS_CERT" in direct.json()["error"]
    write = requests.put(f"{server.url}/api/v1/devices/device-1/assignment", json={"version": "2.0.0"}, timeout=10,
                         headers={**forged, "Authorization": f"Bearer {TOKEN}"})
    assert write.status_code == 401 and "only over TLS" in write.json()["error"]
    secret = frontdoor_secret(door.ca.directory)
    through = get(door, "/api/v1/manifest", params=MANIFEST, headers={**forged, "X-Fota-Frontdoor": secret})
    assert through.status_code == 403 and "FOTA_TLS_CERT" in through.json()["error"]


def test_certificates_nginx_cannot_verify_are_refused_at_the_door(lab, tmp_path):
    door, _, broker = lab
    foreign = LabCA(tmp_path / "elsewhere", name="not the lab CA")
    foreign.ensure_identities(["device-1"])
    past = dt.datetime.now(dt.UTC) - dt.timedelta(days=1)
    expired = broker.ca.issue("device-expired", not_before=past - dt.timedelta(days=30), not_after=past)
    for who in (foreign.identity("device-1"), expired):
        for path in ("/api/v1/manifest", "/healthz"):
            answer = requests.get(f"{door.url}{path}", params=MANIFEST, timeout=10, verify=door.client_tls()["verify"],
                                  cert=(str(who.cert), str(who.key)))
            assert answer.status_code == 400 and REFUSED_BY_NGINX in answer.content, (who, path)
            assert "fota device reprovision" in answer.json()["error"]      # what to do, as the server's errors say


def test_plain_http_to_the_tls_port_is_refused(door):
    answer = requests.get(f"http://127.0.0.1:{door.port}/api/v1/devices", timeout=10)
    assert answer.status_code == 400 and b"plain HTTP request was sent to HTTPS port" in answer.content
    assert "use https://" in answer.json()["error"]


def test_a_cn_with_an_escaped_comma_cannot_pass_for_another_identity(lab):
    door, _, broker = lab
    tricky = broker.ca.issue("x,CN=device-2")        # nginx's subject: CN=x\,CN=device-2
    answer = requests.get(f"{door.url}/api/v1/manifest", params={**MANIFEST, "device": "device-2"}, timeout=10,
                          verify=door.client_tls()["verify"], cert=(str(tricky.cert), str(tricky.key)))
    assert answer.status_code == 403 and "FOTA_TLS_CERT" in answer.json()["error"]


def test_an_artifact_needs_no_certificate_and_comes_whole_and_by_range_over_tls(door, store):
    index = json.loads((store / "index.json").read_text())
    sha = next(r["image"] for r in index["releases"] if r["version"] == "2.0.0")
    data = (store / "artifacts" / sha).read_bytes()
    whole = get(door, f"/artifacts/{sha}")
    assert whole.status_code == 200 and whole.content == data
    assert whole.headers["Cache-Control"] == "public, max-age=31536000, immutable"     # nginx sent it
    part = get(door, f"/artifacts/{sha}", headers={"Range": "bytes=1000-4095", "If-Range": whole.headers["ETag"]})
    assert part.status_code == 206 and part.content == data[1000:4096]
    assert part.headers["Content-Range"] == f"bytes 1000-4095/{len(data)}"
    assert get(door, f"/artifacts/{sha}", "device-1", headers={"Range": "bytes=-10"}).content == data[-10:]


def test_the_server_behind_the_door_ingests_mqtt_over_tls(lab):
    _, server, _ = lab
    assert server.ingester() > 0


def test_health_goes_through_the_door_over_tls(door):
    def health(**env: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "fotalab.frontdoor.main", "health"], capture_output=True,
                              text=True, env={**door.environment(), **env}, timeout=30)
    good = health()
    assert good.returncode == 0 and f"https://127.0.0.1:{door.port}/healthz answered 200" in good.stdout
    bad = health(FOTA_FRONTDOOR_LISTEN=f"127.0.0.1:{locallab.free_port()}")
    assert bad.returncode == 1 and "unhealthy" in bad.stderr


def manifest_over(door: locallab.FrontDoor, context: ssl.SSLContext,
                  session: ssl.SSLSession | None = None) -> tuple[int, ssl.SSLSession, bool]:
    """GET the manifest on a new connection, resuming `session` if given: (status, session, resumed)."""
    with socket.create_connection(("127.0.0.1", door.port), timeout=10) as raw, \
            context.wrap_socket(raw, server_hostname="127.0.0.1", session=session) as tls:
        tls.sendall(b"GET /api/v1/manifest?hardware=fotalab-m4&version=1.0.0 HTTP/1.1\r\nHost: lab\r\n"
                    b"Connection: close\r\n\r\n")
        answer = b""
        while chunk := tls.recv(65536):
            answer += chunk
        return int(answer.split()[1]), tls.session, tls.session_reused


def test_a_revoked_certificate_is_refused_by_the_door_within_10_s_without_a_restart(lab):
    door, _, broker = lab
    pid = door.process.pid
    device = broker.ca.identity("device-3")
    context, ids_only = (ssl.create_default_context(cafile=door.client_tls()["verify"]) for _ in range(2))
    for each in (context, ids_only):
        each.load_cert_chain(device.cert, device.key)
    ids_only.maximum_version, ids_only.options = ssl.TLSVersion.TLSv1_2, ids_only.options | ssl.OP_NO_TICKET
    status, session, _ = manifest_over(door, context)
    assert status == 200 and manifest_over(door, context, session)[2]      # the door resumes by its tickets
    # but keeps no session cache, which would outlive the reload with the old verification result
    assert not manifest_over(door, ids_only, manifest_over(door, ids_only)[1])[2]
    broker.ca.revoke("device-3")
    revoked_at = time.monotonic()
    while (answer := get(door, "/api/v1/manifest", "device-3", params=MANIFEST)).status_code != 400:
        assert time.monotonic() - revoked_at < 10, f"the door still lets a revoked certificate in: {answer.status_code}"
        time.sleep(0.5)
    assert REFUSED_BY_NGINX in answer.content
    assert door.process.poll() is None and door.process.pid == pid
    assert "reloading nginx" in (door.root / "frontdoor.log").read_text()
    assert manifest_over(door, context, session)[::2] == (400, False)       # a session from before: no way in
    assert get(door, "/api/v1/manifest", "device-1", params=MANIFEST).status_code == 200
