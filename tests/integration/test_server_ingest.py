"""MQTT ingestion on the real server (gunicorn, several workers) and the real broker: exactly
once, a killed ingester is replaced, and a restart loses nothing."""
from __future__ import annotations

import json
import os
import signal
import time

import pytest
import requests

from fotalab.lab import locallab
from server_samples import scraped_metric

pytestmark = pytest.mark.integration


def history(server: locallab.Server, device: str) -> list[dict]:
    response = requests.get(f"{server.url}/api/v1/devices/{device}/history?limit=1000", timeout=5)
    return response.json()["events"] if response.status_code == 200 else []


def wait_for_events(server: locallab.Server, device: str, count: int) -> list[dict]:
    locallab.wait_until(lambda: len(history(server, device)) >= count, 20, f"{count} events of {device}")
    time.sleep(0.5)           # anything extra (a duplicate) would arrive now
    return history(server, device)


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
    assert scraped_metric(server.url, "fotalab_mqtt_messages_total", kind="events", outcome="stored") == 30
    assert scraped_metric(server.url, "fotalab_mqtt_messages_total", kind="events", outcome="duplicate") == 30
    assert scraped_metric(server.url, "fotalab_mqtt_ingester_connected") == 1


def test_a_killed_ingester_is_replaced_and_queued_events_arrive(ingesting_server, publisher, tmp_path):
    server = ingesting_server(workers=3)
    device = f"takeover-{tmp_path.name}"[-40:]
    publisher.send(device, "events", {"ts": 1.0, "event": "update_started"})
    wait_for_events(server, device, 1)
    ingester = server.ingester()
    os.kill(ingester, signal.SIGKILL)
    for n in range(5):                                       # while no one ingests: queued by the broker
        publisher.send(device, "events", {"ts": 2.0 + n, "event": "retry", "attempt": n})
    successor = server.ingester(not_pid=ingester)
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
    server.ingester()

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
    operator = {"Authorization": f"Bearer {server.env['FOTA_API_TOKEN']}"}
    assert requests.put(url, json={"version": "2.1.0"}, headers=operator, timeout=5).json() == \
        {"version": "2.1.0", "source": "device"}
    offer = requests.get(f"{server.url}/api/v1/manifest", timeout=5, params={
        "device": device, "hardware": "fotalab-m4", "version": "1.0.0", "image": factory}).json()
    assert (offer["update"], offer["version"], offer["artifact_kind"]) == (True, "2.1.0", "delta")
