"""The broker's authentication and ACL, as the lab provisions them (real mosquitto), and what the
server's watcher makes of the states it hears."""
import json
import threading
import time

import paho.mqtt.client as mqtt
import pytest

from fotalab.lab.fleetwatch import FleetWatcher
from fotalab.lab.provision import Credentials
from fotalab.protocol import device_topic

pytestmark = pytest.mark.integration


def client_as(broker, identity: str) -> tuple[mqtt.Client, list]:
    """A raw client logged in as `identity`, and the list its messages land in."""
    inbox, accepted = [], threading.Event()
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    client.username_pw_set(identity, Credentials(broker.credentials).password(identity))
    client.on_connect = lambda c, u, f, rc, p: accepted.set() if not rc.is_failure else None
    client.on_message = lambda c, u, m: inbox.append((m.topic, m.payload))
    client.connect("127.0.0.1", broker.port)
    client.loop_start()
    assert accepted.wait(5), f"broker refused {identity}"
    return client, inbox


@pytest.fixture
def two_devices(broker):
    for identity in ("dev-a", "dev-b"):
        broker.enroll(identity)
    clients = []

    def connect(identity):
        client, inbox = client_as(broker, identity)
        clients.append(client)
        return client, inbox
    yield connect
    for client in clients:
        client.loop_stop()
        client.disconnect()


def test_anonymous_client_is_refused(broker):
    with pytest.raises(ConnectionRefusedError, match="refused an anonymous client"):
        FleetWatcher("127.0.0.1", broker.port)


def test_a_device_reads_nothing_of_another_device(two_devices):
    a, a_inbox = two_devices("dev-a")
    b, _ = two_devices("dev-b")
    a.subscribe("#", qos=1)
    time.sleep(0.5)
    b.publish(device_topic("dev-b", "state"), json.dumps({"state": "running"}), qos=1).wait_for_publish(5)
    b.publish(device_topic("dev-b", "events"), json.dumps({"event": "booted"}), qos=1).wait_for_publish(5)
    time.sleep(1.0)
    assert [t for t, _ in a_inbox if "dev-b" in t] == []


def test_a_device_cannot_publish_another_devices_state_or_any_command(two_devices, broker):
    a, _ = two_devices("dev-a")
    with broker.watcher() as server_view:
        time.sleep(0.5)
        a.publish(device_topic("dev-b", "state"), json.dumps({"state": "committed", "version": "9.9.9"}),
                  qos=1).wait_for_publish(5)
        a.publish(device_topic("dev-a", "state"), json.dumps({"state": "running"}), qos=1).wait_for_publish(5)
        server_view.wait_for(lambda f: "dev-a" in f.states, 5, "dev-a's own state")
        assert "dev-b" not in server_view.states


def test_forged_command_from_a_device_is_not_delivered(two_devices):
    b, b_inbox = two_devices("dev-b")
    b.subscribe([(device_topic("dev-b", "cmd"), 1), ("fota/v1/fleet/cmd", 1)])
    a, _ = two_devices("dev-a")
    time.sleep(0.5)
    a.publish(device_topic("dev-b", "cmd"), json.dumps({"cmd": "update"}), qos=1).wait_for_publish(5)
    a.publish("fota/v1/fleet/cmd", json.dumps({"cmd": "update"}), qos=1).wait_for_publish(5)
    time.sleep(1.0)
    assert b_inbox == []


def test_the_server_identity_reaches_a_device(two_devices, broker):
    b, b_inbox = two_devices("dev-b")
    b.subscribe(device_topic("dev-b", "cmd"), qos=1)
    time.sleep(0.5)
    with broker.watcher() as server:
        server.command(["dev-b"], {"cmd": "update"})
    deadline = time.monotonic() + 5
    while not b_inbox and time.monotonic() < deadline:
        time.sleep(0.05)
    assert b_inbox and json.loads(b_inbox[0][1]) == {"cmd": "update"}


def test_the_watcher_keeps_a_newer_state_than_a_replayed_retained_one(two_devices, broker):
    """A SIGKILLed broker restores retained states from its last autosave: the server's view must
    not go back to such an older state (ordered by the device's clock, as the registry does)."""
    a, _ = two_devices("dev-a")
    topic = device_topic("dev-a", "state")
    with broker.watcher() as server:
        a.publish(topic, json.dumps({"ts": 200.0, "state": "committed"}), qos=1, retain=True).wait_for_publish(5)
        server.wait_for(lambda w: w.states.get("dev-a", {}).get("ts") == 200.0, 5, "the newer state")
        a.publish(topic, json.dumps({"ts": 100.0, "state": "downloading"}), qos=1, retain=True).wait_for_publish(5)
        a.publish(device_topic("dev-a", "events"), json.dumps({"ts": 300.0, "event": "booted"}),
                  qos=1).wait_for_publish(5)
        server.wait_for(lambda w: w.events.get("dev-a"), 5, "the event published after the old state")
        assert server.states["dev-a"]["state"] == "committed"
