"""The update server over HTTPS with client certificates (real gunicorn, lab CA): the device's
identity comes from its certificate, another identity is 403, revocation within 10 s, and a
device updates over TLS end to end (MQTT over TLS, HTTPS through the server)."""
from __future__ import annotations

import datetime as dt
import os
import signal
import subprocess
import sys
import time

import pytest
import requests

from fotalab.lab import locallab
from fotalab.lab.fleetwatch import FleetWatcher
from fotalab.lab.pki import LabCA
from fotalab.lab.provision import SERVER

pytestmark = pytest.mark.integration
MANIFEST = {"hardware": "fotalab-m4", "version": "1.0.0"}
TOKEN = "tls-test-token"


@pytest.fixture(scope="module")
def lab(release_store, tmp_path_factory):
    root = tmp_path_factory.mktemp("tls-lab")
    broker = locallab.Broker(root / "broker", tls=True, plaintext=False).start()
    broker.ca.ensure_identities(["device-1", "device-2", "device-3", "fota-cli"])
    server = locallab.Server(release_store, root / "server.log", broker=broker,
                             env={"FOTA_API_TOKEN": TOKEN}).start()
    yield broker, server
    server.stop()
    broker.stop()


def get(server, path: str, identity: str = "", **kwargs) -> requests.Response:
    return requests.get(f"{server.url}{path}", timeout=10, **server.client_tls(identity), **kwargs)


def test_a_device_gets_its_manifest_by_its_certificate_alone(lab):
    _, server = lab
    answer = get(server, "/api/v1/manifest", "device-1", params=MANIFEST)
    assert answer.status_code == 200 and answer.json()["update"]
    assert get(server, "/api/v1/manifest", "device-1", params={**MANIFEST, "device": "device-1"}).status_code == 200


def test_device_1_asking_as_device_2_is_forbidden(lab):
    _, server = lab
    answer = get(server, "/api/v1/manifest", "device-1", params={**MANIFEST, "device": "device-2"})
    assert answer.status_code == 403 and "device-1" in answer.json()["error"]
    assert get(server, "/api/v1/devices/device-2/assignment", "device-1").status_code == 403
    assert get(server, "/api/v1/devices/device-1/assignment", "device-1").status_code != 403


def test_device_1_asking_for_device_2s_ddi_resources_is_forbidden(lab):
    _, server = lab
    assert get(server, "/DEFAULT/controller/v1/device-2", "device-1").status_code == 403


def test_the_manifest_needs_a_client_certificate(lab):
    _, server = lab
    answer = get(server, "/api/v1/manifest", params={**MANIFEST, "device": "device-1"})
    assert answer.status_code == 403 and "FOTA_TLS_CERT" in answer.json()["error"]


def test_a_devices_certificate_is_refused_on_the_apis_write_endpoints_even_with_the_token(lab):
    _, server = lab
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    answer = requests.put(f"{server.url}/api/v1/devices/device-1/assignment", json={"version": "2.0.0"},
                          headers=bearer, timeout=10, **server.client_tls("device-1"))
    assert answer.status_code == 403
    operator = requests.put(f"{server.url}/api/v1/devices/device-1/assignment", json={"version": "2.0.0"},
                            headers=bearer, timeout=10, **server.client_tls("fota-cli"))
    assert operator.status_code < 300, operator.text
    requests.delete(f"{server.url}/api/v1/devices/device-1/assignment", headers=bearer, timeout=10,
                    **server.client_tls("fota-cli")).raise_for_status()


def test_the_dashboard_and_reads_work_over_https_without_a_client_certificate(lab):
    _, server = lab
    assert get(server, "/").status_code == 200
    assert get(server, "/api/v1/devices").status_code == 200


def test_refused_in_the_handshake_a_foreign_ca_and_an_expired_certificate_and_plain_http(lab, tmp_path):
    broker, server = lab
    foreign = LabCA(tmp_path / "elsewhere", name="not the lab CA")
    foreign.ensure_identities(["device-1"])
    stranger = foreign.identity("device-1")
    with pytest.raises(requests.exceptions.ConnectionError):   # TLS 1.3: an alert after the handshake
        requests.get(f"{server.url}/api/v1/manifest", params=MANIFEST, timeout=10, verify=str(broker.ca.ca_cert_path),
                     cert=(str(stranger.cert), str(stranger.key)))
    past = dt.datetime.now(dt.UTC) - dt.timedelta(days=1)
    old = broker.ca.issue("device-expired", not_before=past - dt.timedelta(days=30), not_after=past)
    with pytest.raises(requests.exceptions.ConnectionError):   # TLS 1.3: an alert after the handshake
        requests.get(f"{server.url}/api/v1/manifest", params=MANIFEST, timeout=10, verify=str(old.ca),
                     cert=(str(old.cert), str(old.key)))
    with pytest.raises(requests.exceptions.ConnectionError):
        requests.get(f"http://127.0.0.1:{server.port}/healthz", timeout=10)


def test_a_revoked_certificate_is_refused_within_10_s_and_a_reissued_one_works(lab):
    broker, server = lab
    session = requests.Session()         # one kept-alive connection, made before the revocation
    assert session.get(f"{server.url}/api/v1/manifest", params=MANIFEST, timeout=10,
                       **server.client_tls("device-3")).status_code == 200
    broker.revoke("device-3")
    revoked_at = time.monotonic()
    while session.get(f"{server.url}/api/v1/manifest", params=MANIFEST, timeout=10,
                      **server.client_tls("device-3")).status_code != 403:
        assert time.monotonic() - revoked_at < 10, "the server still serves a revoked certificate after 10 s"
        time.sleep(0.5)
    assert get(server, "/api/v1/manifest", "device-3", params=MANIFEST).status_code == 403   # a new connection too
    broker.reissue("device-3")
    assert get(server, "/api/v1/manifest", "device-3", params=MANIFEST).status_code == 200


def test_a_device_updates_over_tls_end_to_end(lab, release_store, tmp_path):
    broker, server = lab
    device = locallab.Device("device-1", tmp_path / "flash", release_store, broker, server)
    device.flash_dir.mkdir(parents=True)
    assert "FOTA_MQTT_PASSWORD" not in str(device.tls_env())
    with FleetWatcher("127.0.0.1", broker.tls_port, tls=broker.tls_files(SERVER)) as fleet:
        try:
            device.start()
            fleet.wait_for(lambda f: f.states.get("device-1", {}).get("state") == "running", 60, "first boot")
            fleet.command(["device-1"], {"cmd": "update"})
            fleet.wait_for(lambda f: f.states.get("device-1", {}).get("state") == "committed", 120,
                           "commit of 2.0.0 over TLS")
            assert fleet.states["device-1"]["version"] == "2.0.0"
        finally:
            device.power_cut()


def test_bytes_flipped_on_the_link_end_in_a_tls_error_and_a_retry(lab, release_store, tmp_path):
    from fotalab.lab.linkproxy import LinkProxy
    from fotalab.protocol import Event
    broker, server = lab
    link = LinkProxy(("127.0.0.1", server.port), corrupt_probability=1.0).start()
    broker.ca.ensure_identities(["device-4"])
    device = locallab.Device("device-4", tmp_path / "flash", release_store, broker, server,
                             {"FOTA_SERVER_URL": f"https://127.0.0.1:{link.port}"})
    device.flash_dir.mkdir(parents=True)
    with FleetWatcher("127.0.0.1", broker.tls_port, tls=broker.tls_files(SERVER)) as fleet:
        try:
            device.start()
            fleet.wait_for(lambda f: f.states.get("device-4", {}).get("state") == "running", 60, "first boot")
            fleet.command(["device-4"], {"cmd": "update"})
            fleet.wait_for(lambda f: any(e.get("event") == Event.RETRY and "TLS error" in e.get("reason", "")
                                         for e in f.events.get("device-4", [])), 120, "a retry after a TLS error")
        finally:
            device.power_cut()
            link.stop()
    assert link.flipped >= 1
    assert device.inspect()["running"]["verified"]


@pytest.fixture
def fota(lab):
    """`fota ARGS...` as the operator, over HTTPS with the CLI's certificate and the lab CA at hand:
    its output; `ok=False` for a command expected to fail (then its stderr)."""
    broker, server = lab
    env = {**os.environ, **broker.ca.identity("fota-cli").env(), "FOTA_SERVER_URL": server.url,
           "FOTA_API_TOKEN": TOKEN, "FOTA_CA_DIR": str(broker.credentials)}

    def run(*args: str, ok: bool = True, **overrides: str) -> str:
        done = subprocess.run([sys.executable, "-m", "fotalab.cli", *args], env={**env, **overrides},
                              capture_output=True, text=True)
        assert (done.returncode == 0) == ok, done.stderr
        return done.stdout if ok else done.stderr
    return run


def test_a_controller_enrolled_with_cert_dir_polls_by_that_certificate_alone_as_itself(lab, fota, tmp_path):
    _, server = lab
    out = fota("controllers", "add", "ctl-tls", "--hardware", "fotalab-m4", "--cert-dir", str(tmp_path / "ctl"))
    token = out.split("TargetToken ")[1].split()[0]
    files = {name: tmp_path / "ctl" / name for name in ("ca.pem", "cert.pem", "key.pem")}
    assert all(f.is_file() for f in files.values()) and (files["key.pem"].stat().st_mode & 0o077) == 0
    assert str(files["key.pem"]) in out
    tls = {"verify": str(files["ca.pem"]), "cert": (str(files["cert.pem"]), str(files["key.pem"])),
           "headers": {"Authorization": f"TargetToken {token}"}, "timeout": 10}
    assert requests.get(f"{server.url}/DEFAULT/controller/v1/ctl-tls", **tls).status_code == 200
    assert requests.get(f"{server.url}/DEFAULT/controller/v1/device-1", **tls).status_code == 403


def test_cert_dir_without_the_lab_ca_enrols_nothing_and_says_what_to_set(fota, tmp_path):
    error = fota("controllers", "add", "ctl-no-ca", "--cert-dir", str(tmp_path / "x"), ok=False, FOTA_CA_DIR="")
    assert "FOTA_CA_DIR" in error
    assert "ctl-no-ca" not in fota("controllers", "list") and not (tmp_path / "x").exists()


def test_fota_device_revoke_and_reprovision(lab, fota):
    broker, server = lab
    broker.ca.ensure_identities(["device-5"])

    assert get(server, "/api/v1/manifest", "device-5", params=MANIFEST).status_code == 200
    assert "revoked device-5's certificate" in fota("device", "revoke", "device-5")
    revoked_at = time.monotonic()
    broker.process.send_signal(signal.SIGHUP)        # what the lab's broker does when the CRL changes
    while get(server, "/api/v1/manifest", "device-5", params=MANIFEST).status_code != 403:
        assert time.monotonic() - revoked_at < 10
        time.sleep(0.5)
    with pytest.raises(ConnectionRefusedError):
        FleetWatcher("127.0.0.1", broker.tls_port, tls=broker.tls_files("device-5")).close()
    assert time.monotonic() - revoked_at < 10
    assert "new certificate" in fota("device", "reprovision", "device-5")
    broker.process.send_signal(signal.SIGHUP)
    assert get(server, "/api/v1/manifest", "device-5", params=MANIFEST).status_code == 200
    FleetWatcher("127.0.0.1", broker.tls_port, tls=broker.tls_files("device-5")).close()
    history = fota("device", "device-5")
    assert "certificate_revoked" in history and "certificate_reissued" in history
