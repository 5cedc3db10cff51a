"""MQTT ingestion on the real server (gunicorn, several workers) and the real broker: exactly
once, a killed ingester is replaced, and a restart loses nothing."""
from __future__ import annotations

import json
import os
import signal
import time

import paho.mqtt.client as mqtt
import pytest
import requests

from fotalab import locallab
from fotalab.provision import SERVER, Credentials
from server_samples import metric_value

pytestmark = pytest.mark.integration
TOKEN = "integration-token"


class Publisher:
    """Publishes as devices would (QoS 1), with the server's identity (allowed on every device topic)."""

    def __init__(self, broker: locallab.Broker) -> None:
        self._client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"publisher-{os.urandom(3).hex()}")
        self._client.username_pw_set(SERVER, Credentials(broker.credentials).password(SERVER))
        self._client.connect("127.0.0.1", broker.port)
        self._client.loop_start()

    def send(self, device: str, kind: str, payload: dict | str, *, retain: bool = False) -> None:
        body = payload if isinstance(payload, str) else json.dumps({"device": device, **payload})
        self._client.publish(f"fota/v1/devices/{device}/{kind}", body, qos=1, retain=retain).wait_for_publish(10)

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


@pytest.fixture
def publisher(broker):
    client = Publisher(broker)
    yield client
    client.close()


@pytest.fixture
def ingesting_server(release_store, broker, tmp_path):
    servers: list[locallab.Server] = []

    def start(workers: int = 3, name: str = "server") -> locallab.Server:
        server = locallab.Server(release_store, tmp_path / f"{name}.log", workers=workers, broker=broker,
                                 env={"FOTA_API_TOKEN": TOKEN}).start()
        servers.append(server)
        wait_for_ingester(server)
        return server
    yield start
    for server in servers:
        server.stop()


def wait_for_ingester(server: locallab.Server, *, not_pid: int = 0) -> int:
    def connected() -> bool:
        ingester = requests.get(f"{server.url}/readyz", timeout=2).json()["checks"].get("ingester") or {}
        return bool(ingester.get("connected")) and ingester["pid"] != not_pid
    locallab.wait_until(connected, 20, "the server's MQTT ingester")
    return requests.get(f"{server.url}/readyz", timeout=2).json()["checks"]["ingester"]["pid"]


def history(server: locallab.Server, device: str) -> list[dict]:
    response = requests.get(f"{server.url}/api/v1/devices/{device}/history?limit=1000", timeout=5)
    return response.json()["events"] if response.status_code == 200 else []


def wait_for_events(server: locallab.Server, device: str, count: int) -> list[dict]:
    locallab.wait_until(lambda: len(history(server, device)) >= count, 20, f"{count} events of {device}")
    time.sleep(0.5)           # anything extra (a duplicate) would arrive now
    return history(server, device)


def metric(server: locallab.Server, name: str, **labels: str) -> float:
    return metric_value(requests.get(f"{server.url}/metrics", timeout=5).text, name, **labels)


def test_each_message_is_ingested_once_by_one_of_several_workers(ingesting_server, publisher, tmp_path):
    server = ingesting_server(workers=4)
    device = f"multi-{tmp_path.name}"[-40:]
    for n in range(30):
        event = {"ts": 1000.0 + n, "event": "retry", "attempt": n}
        publisher.send(device, "events", event)
        publisher.send(device, "events", event)            # a replay, as after a reconnect
    events = wait_for_events(server, device, 30)
    assert [e["payload"]["attempt"] for e in events] == list(range(30))
    # every publication reached exactly one ingester once: 30 stored, the 30 replays seen as duplicates
    assert metric(server, "fotalab_mqtt_messages_total", kind="events", outcome="stored") == 30
    assert metric(server, "fotalab_mqtt_messages_total", kind="events", outcome="duplicate") == 30
    assert metric(server, "fotalab_mqtt_ingester_connected") == 1


def test_a_killed_ingester_is_replaced_and_queued_events_arrive(ingesting_server, publisher, tmp_path):
    server = ingesting_server(workers=3)
    device = f"takeover-{tmp_path.name}"[-40:]
    publisher.send(device, "events", {"ts": 1.0, "event": "update_started"})
    wait_for_events(server, device, 1)
    ingester = wait_for_ingester(server)
    os.kill(ingester, signal.SIGKILL)
    for n in range(5):                                       # while no one ingests: queued by the broker
        publisher.send(device, "events", {"ts": 2.0 + n, "event": "retry", "attempt": n})
    successor = wait_for_ingester(server, not_pid=ingester)
    events = wait_for_events(server, device, 6)
    assert successor != ingester
    assert [e["event"] for e in events] == ["update_started"] + ["retry"] * 5


def test_restart_loses_nothing_and_catches_up_from_retained_state(ingesting_server, publisher, release_store,
                                                                   broker, tmp_path):
    server = ingesting_server(workers=2)
    device = f"restart-{tmp_path.name}"[-40:]
    publisher.send(device, "state", {"ts": 1.0, "state": "downloading", "progress": 0.5}, retain=True)
    publisher.send(device, "events", {"ts": 1.0, "event": "update_started"})
    wait_for_events(server, device, 1)

    server.stop()                                            # SIGKILL: master and workers
    publisher.send(device, "events", {"ts": 2.0, "event": "downloaded"})
    publisher.send(device, "events", {"ts": 3.0, "event": "committed", "version": "2.0.0"})
    publisher.send(device, "state", {"ts": 3.0, "state": "committed", "version": "2.0.0"}, retain=True)
    publisher.send(device, "status", "online", retain=True)
    server.start()
    wait_for_ingester(server)

    events = wait_for_events(server, device, 3)
    assert [e["event"] for e in events] == ["update_started", "downloaded", "committed"]
    state = requests.get(f"{server.url}/api/v1/devices/{device}", timeout=5).json()
    assert (state["state"], state["version"], state["online"]) == ("committed", "2.0.0", True)

    # a server with an empty volume still learns every device's current state from the broker
    fresh = ingesting_server(workers=2, name="fresh")
    locallab.wait_until(lambda: requests.get(f"{fresh.url}/api/v1/devices/{device}", timeout=5).ok, 20,
                        "retained state on a fresh server")
    assert requests.get(f"{fresh.url}/api/v1/devices/{device}", timeout=5).json()["state"] == "committed"


def test_assignment_made_over_the_api_reaches_the_manifest(ingesting_server, publisher, release_store, tmp_path):
    server = ingesting_server(workers=2)
    index = json.loads((release_store / "index.json").read_text())
    factory = next(r for r in index["releases"] if r["version"] == "1.0.0")["image"]
    device = f"assigned-{tmp_path.name}"[-40:]
    publisher.send(device, "state", {"ts": 1.0, "state": "running", "hardware": "fotalab-m4", "version": "1.0.0"},
                   retain=True)
    locallab.wait_until(lambda: requests.get(f"{server.url}/api/v1/devices/{device}", timeout=5).ok, 20, "device")
    url = f"{server.url}/api/v1/devices/{device}/assignment"
    assert requests.put(url, json={"version": "2.1.0"}, timeout=5).status_code == 401
    assert requests.put(url, json={"version": "2.1.0"}, headers={"Authorization": f"Bearer {TOKEN}"},
                        timeout=5).json() == {"version": "2.1.0", "source": "device"}
    offer = requests.get(f"{server.url}/api/v1/manifest", timeout=5, params={
        "device": device, "hardware": "fotalab-m4", "version": "1.0.0", "image": factory}).json()
    assert (offer["update"], offer["version"], offer["artifact_kind"]) == (True, "2.1.0", "delta")
