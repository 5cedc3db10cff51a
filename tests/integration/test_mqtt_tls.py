"""The broker's TLS listener (real mosquitto, lab CA): who is refused, what an intruder holding
one device's certificate can and cannot do, and revocation without a restart."""
from __future__ import annotations

import datetime as dt
import json
import socket
import threading
import time

import paho.mqtt.client as mqtt
import pytest

from fotalab.lab import locallab
from fotalab.lab.pki import LabCA
from fotalab.protocol import Command, device_topic
from fotalab.tlsfiles import TlsFiles

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def tls_broker(tmp_path_factory):
    broker = locallab.Broker(tmp_path_factory.mktemp("tls-broker"), tls=True, plaintext=False).start()
    for identity in ("device-1", "device-2", "device-3"):
        broker.enroll(identity)
    yield broker
    broker.stop()


class Session:
    """A raw MQTT client over TLS with the given files and client id; records what happens."""

    def __init__(self, broker, tls: TlsFiles | None, client_id: str) -> None:
        self.inbox: list[tuple[str, bytes]] = []
        self.connected, self.closed = threading.Event(), threading.Event()
        self.refusal = None
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=False)
        if tls is not None:
            self.client.tls_set_context(tls.client_context())
        else:
            self.client.tls_set_context(TlsFiles(broker.ca.ca_cert_path).client_context())
        self.client.on_connect = self._connect
        self.client.on_disconnect = lambda c, u, f, rc, p: self.closed.set()
        self.client.on_message = lambda c, u, m: self.inbox.append((m.topic, m.payload))
        self.client.reconnect_delay_set(60, 60)     # no reconnect during a test
        try:
            self.client.connect("127.0.0.1", broker.tls_port, keepalive=30)
        except OSError as exc:                        # ssl.SSLError is an OSError
            self.refusal = exc
            self.closed.set()
            return
        self.client.loop_start()

    def _connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            self.refusal = reason_code
            self.closed.set()
        else:
            self.connected.set()

    def accepted(self, timeout: float = 5) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.connected.is_set():
                return True
            if self.closed.is_set():
                return False
            time.sleep(0.05)
        return False

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


@pytest.fixture
def session(tls_broker):
    opened = []

    def open_(tls: TlsFiles | None, client_id: str) -> Session:
        opened.append(Session(tls_broker, tls, client_id))
        return opened[-1]
    yield open_
    for s in opened:
        s.close()


def test_a_device_with_its_certificate_is_accepted_and_heard_by_the_server(tls_broker, session):
    with tls_broker.watcher() as server_view:
        device = session(tls_broker.tls_files("device-1"), "fota-device-1")
        assert device.accepted()
        device.client.publish(device_topic("device-1", "state"), json.dumps({"state": "running"}), qos=1)
        server_view.wait_for(lambda f: "device-1" in f.states, 5, "device-1's state over TLS")


def test_no_client_certificate_is_refused(tls_broker, session):
    assert not session(None, "fota-device-1").accepted()


def test_a_certificate_from_another_ca_is_refused(tls_broker, session, tmp_path):
    foreign = LabCA(tmp_path / "elsewhere", name="not the lab CA")
    foreign.ensure_identities(["device-1"])
    found = foreign.identity("device-1")
    assert not session(TlsFiles(tls_broker.ca.ca_cert_path, found.cert, found.key), "fota-device-1").accepted()


def test_an_expired_certificate_is_refused(tls_broker, session):
    past = dt.datetime.now(dt.UTC) - dt.timedelta(days=1)
    tls_broker.ca.issue("device-expired", not_before=past - dt.timedelta(days=30), not_after=past)
    assert not session(tls_broker.tls_files("device-expired"), "fota-device-expired").accepted()


def test_the_plaintext_port_is_closed(tls_broker):
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", tls_broker.port), timeout=2).close()


def test_device_1_with_device_2s_client_id_cannot_disconnect_it_or_read_its_messages(tls_broker, session):
    victim = session(tls_broker.tls_files("device-2"), "fota-device-2")
    assert victim.accepted()
    victim.client.subscribe(device_topic("device-2", "cmd"), qos=1)
    intruder = session(tls_broker.tls_files("device-1"), "fota-device-2")     # device-1's cert, device-2's id
    assert intruder.accepted()          # it connects, but as itself: the client id is forced to its CN
    intruder.client.subscribe([(device_topic("device-2", "cmd"), 1), (device_topic("device-2", "state"), 1),
                               ("#", 1)])
    time.sleep(1.0)
    with tls_broker.watcher() as server:
        server.command(["device-2"], {"cmd": "update"})
        deadline = time.monotonic() + 5
        while not victim.inbox and time.monotonic() < deadline:
            time.sleep(0.05)
    time.sleep(0.5)
    assert victim.inbox, "device-2 did not get its own command"
    assert not victim.closed.is_set(), "the intruder disconnected device-2"
    assert [t for t, _ in intruder.inbox if "device-2" in t] == []


def test_a_revoked_certificate_is_refused_within_10_s_without_a_restart_and_a_new_one_works(tls_broker, session):
    before = session(tls_broker.tls_files("device-3"), "fota-device-3")
    assert before.accepted()
    pid = tls_broker.process.pid
    with tls_broker.watcher() as server_view:
        tls_broker.revoke("device-3")
        revoked_at = time.monotonic()
        time.sleep(2)
        # the connection made before the revocation stays open but is cut off from every topic
        before.client.publish(device_topic("device-3", "state"), json.dumps({"state": "revoked-but-talking"}), qos=1)
        time.sleep(1.5)
        assert not before.closed.is_set()
        assert server_view.states.get("device-3", {}).get("state") != "revoked-but-talking"
    while session(tls_broker.tls_files("device-3"), "fota-device-3").accepted(2):
        assert time.monotonic() - revoked_at < 10, "the broker still accepts a revoked certificate after 10 s"
        time.sleep(0.5)
    assert tls_broker.process.pid == pid and tls_broker.process.poll() is None
    tls_broker.reissue("device-3")
    deadline = time.monotonic() + 10
    while not session(tls_broker.tls_files("device-3"), "fota-device-3").accepted(2):
        assert time.monotonic() < deadline, "the reissued certificate is not accepted"
        time.sleep(0.5)


def test_fota_trigger_sends_a_command_over_tls_as_the_server(tls_broker, session):
    import os
    import subprocess
    import sys
    device = session(tls_broker.tls_files("device-1"), "fota-device-1")
    assert device.accepted()
    device.client.subscribe(device_topic("device-1", "cmd"), qos=1)
    time.sleep(0.5)
    env = {**os.environ, **tls_broker.ca.identity("fota-server").env()}
    done = subprocess.run([sys.executable, "-m", "fotalab.lab.trigger", "--host", "127.0.0.1", "--port",
                           str(tls_broker.tls_port), "device-1"], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    deadline = time.monotonic() + 5
    while not device.inbox and time.monotonic() < deadline:
        time.sleep(0.05)
    assert device.inbox and json.loads(device.inbox[0][1])["cmd"] == Command.UPDATE
