"""Mutual TLS on the compose lab as it starts by default: the plain ports refuse, a device's
certificate cannot ask as another device, and a revoked certificate is refused by the front
door, the server and the broker within 10 s, without a restart, until it is reprovisioned."""
from __future__ import annotations

import json
import socket
import time

import pytest
import requests

pytestmark = pytest.mark.e2e

# Run inside a device's container with its own credentials (/credentials): one HTTPS request
# through the link and one MQTT connection, and what each got.
PROBE = """
import json, ssl, sys, time
import paho.mqtt.client as mqtt
import requests
device = sys.argv[1]
tls = {"verify": "/credentials/ca.pem", "cert": ("/credentials/cert.pem", "/credentials/key.pem")}
result = {}
try:
    answer = requests.get("https://link:8000/api/v1/manifest", timeout=10, **tls,
                          params={"device": device, "hardware": "fotalab-m4", "version": "1.0.0"})
    result["manifest"] = answer.status_code
    answer = requests.post("https://link:8000/api/v1/rollouts", json={"release": "2.0.0"}, timeout=10, **tls)
    result["api_write"] = answer.status_code
except requests.RequestException as exc:
    result["manifest"] = result.get("manifest", type(exc).__name__)
client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="probe")
client.tls_set(ca_certs="/credentials/ca.pem", certfile="/credentials/cert.pem", keyfile="/credentials/key.pem")
connack = []
client.on_connect = lambda client, userdata, flags, code, properties: connack.append("0" if code == 0 else str(code))
try:
    client.connect("mosquitto", 8883, keepalive=5)     # TLS 1.3: the broker judges our certificate after this
    client.loop_start()
    deadline = time.monotonic() + 3
    while not connack and time.monotonic() < deadline:
        time.sleep(0.05)
    client.loop_stop()
    result["mqtt"] = connack[0] if connack else "no CONNACK"
except (OSError, ssl.SSLError) as exc:
    result["mqtt"] = type(exc).__name__
print(json.dumps(result))
"""


def probe(lab, device: str, asking_as: str) -> dict:
    """What `device`'s own certificate gets from the server and the broker, asking as `asking_as`."""
    output = lab.exec_text(device, "python3", "-c", PROBE, asking_as, timeout=60)
    assert output, f"the probe in {device} printed nothing"
    return json.loads(output.strip().splitlines()[-1])


def fota(lab, *args: str) -> str:
    return lab.compose("--profile", "tools", "run", "--rm", "--no-deps", "-T", "cli", "fota", *args,
                       timeout=120).stdout


def test_the_plain_mqtt_and_http_ports_refuse_by_default(compose_lab):
    connect = bytes.fromhex("101000044d5154540402003c0004") + b"test"     # MQTT 3.1.1 CONNECT, client id "test"
    with socket.create_connection(("127.0.0.1", int(compose_lab.env["MQTT_PORT"])), timeout=5) as plain:
        try:
            plain.sendall(connect)
            answer = plain.recv(4)
        except OSError:
            answer = b""                      # reset: nobody listens behind the published port
    assert answer == b"", f"the plain MQTT port answered {answer!r}"
    answer = requests.get(f"http://127.0.0.1:{compose_lab.env['SERVER_PORT']}/healthz", timeout=5)
    assert answer.status_code == 400 and "HTTPS port" in answer.text


def test_a_device_certificate_asks_only_as_itself_and_never_writes_to_the_api(compose_lab):
    assert probe(compose_lab, "device-1", "device-1") == {"manifest": 200, "api_write": 403, "mqtt": "0"}
    assert probe(compose_lab, "device-1", "device-2")["manifest"] == 403


def test_a_revoked_certificate_is_refused_within_ten_seconds_until_reprovisioned(compose_lab, fleet):
    assert "revoked device-3's certificate" in fota(compose_lab, "device", "revoke", "device-3")
    revoked_at = time.monotonic()
    refused: dict[str, float] = {}
    while len(refused) < 2:
        seen = probe(compose_lab, "device-3", "device-3")
        if seen["manifest"] in (400, 403):   # nginx's "The SSL certificate error", or the server's CRL check
            refused.setdefault("server", time.monotonic() - revoked_at)
        if seen["mqtt"] != "0":              # the broker's TLS handshake fails on the CRL
            refused.setdefault("broker", time.monotonic() - revoked_at)
        assert time.monotonic() - revoked_at < 10, f"still served 10 s after the revocation: {seen}"
    print("revoked device-3 refused after: " + ", ".join(f"{k} {v:.1f} s" for k, v in refused.items()))

    assert "issued device-3 a new certificate" in fota(compose_lab, "device", "reprovision", "device-3")
    assert probe(compose_lab, "device-3", "device-3") == {"manifest": 200, "api_write": 403, "mqtt": "0"}
    history = fota(compose_lab, "device", "device-3", "--limit", "5")
    assert "certificate_revoked" in history and "certificate_reissued" in history
    fleet.wait_for(lambda f: f.status.get("device-3") == "online", 30, "device-3 online again")
