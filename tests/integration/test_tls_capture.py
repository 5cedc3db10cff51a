"""No secrets on the wire: a packet capture (tcpdump on loopback, the lab's ports only) during a
full update over TLS holds no password, no API token and no private key, and no readable
protocol text at all."""
from __future__ import annotations

import shutil
import signal
import subprocess
import time

import pytest
import requests
from cryptography.hazmat.primitives import serialization

from fotalab.lab import locallab
from fotalab.lab.fleetwatch import FleetWatcher
from fotalab.lab.provision import SERVER, Credentials

pytestmark = pytest.mark.integration
TOKEN = "capture-test-token-6f1c2b9e"


def key_secrets(path) -> list[bytes]:
    """A private key's PEM body, its DER encoding and its raw scalar."""
    pem = path.read_bytes()
    key = serialization.load_pem_private_key(pem, password=None)
    der = key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    body = b"".join(pem.splitlines()[1:-1])
    return [body[:40], der, key.private_numbers().private_value.to_bytes(32, "big")]


@pytest.mark.skipif(not shutil.which("tcpdump"), reason="tcpdump is not installed (apt-get install tcpdump)")
def test_a_full_update_over_tls_puts_no_secret_on_the_wire(release_store, tmp_path):
    broker = locallab.Broker(tmp_path / "broker", tls=True, plaintext=False).start()
    broker.ca.ensure_identities(["device-1", "fota-cli"])
    server = locallab.Server(release_store, tmp_path / "server.log", broker=broker,
                             env={"FOTA_API_TOKEN": TOKEN}).start()
    pcap = tmp_path / "lab.pcap"
    ports = f"tcp port {broker.tls_port} or tcp port {server.port}"
    capture = subprocess.Popen(["tcpdump", "-i", "lo", "-U", "-s", "0", "-w", str(pcap), ports],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    device = locallab.Device("device-1", tmp_path / "flash", release_store, broker, server)
    device.flash_dir.mkdir(parents=True)
    try:
        time.sleep(1.0)
        with FleetWatcher("127.0.0.1", broker.tls_port, tls=broker.tls_files(SERVER)) as fleet:
            device.start()
            fleet.wait_for(lambda f: f.states.get("device-1", {}).get("state") == "running", 60, "first boot")
            requests.put(f"{server.url}/api/v1/devices/device-1/assignment", json={"version": "2.0.0"},
                         headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10,
                         **server.client_tls("fota-cli")).raise_for_status()
            fleet.command(["device-1"], {"cmd": "update"})
            fleet.wait_for(lambda f: f.states.get("device-1", {}).get("state") == "committed", 120, "commit")
        time.sleep(1.0)
    finally:
        capture.send_signal(signal.SIGINT)
        capture.wait(10)
        device.power_cut()
        server.stop()
        broker.stop()
    wire = pcap.read_bytes()
    assert len(wire) > 50_000, "the capture caught (almost) nothing: check the ports"
    secrets = {"the API token": TOKEN.encode(),
               "the server's MQTT password": Credentials(broker.credentials).password(SERVER).encode()}
    for name in ("device-1", SERVER, "fota-cli", "tls-server"):
        for n, secret in enumerate(key_secrets(broker.ca.identity(name).key)):
            secrets[f"{name}'s private key ({n})"] = secret
    for n, secret in enumerate(key_secrets(broker.ca.directory / "ca-private" / "ca.key")):
        secrets[f"the CA's private key ({n})"] = secret
    assert [name for name, secret in secrets.items() if secret in wire] == []
    # nothing of the protocols is readable either: topics, paths, JSON
    assert [text for text in (b"fota/v1/devices", b"/api/v1/manifest", b"Authorization", b"committed")
            if text in wire] == []
