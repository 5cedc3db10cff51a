"""MQTT ingestion: device state, events and status into the registry, exactly once.

Exactly one process ingests, whatever the number of gunicorn workers: every worker runs an
elector thread that tries to take an exclusive flock(2) on `<data dir>/ingest.lock`; the one
that gets it ingests, the others retry every second. The kernel drops the lock when its
holder dies in any way (SIGKILL, worker timeout, restart), so another worker takes over
within a second, and two servers on one data volume still ingest once. This was chosen over
running the client in the gunicorn master (when_ready hook): the master would fork workers
while the MQTT thread holds locks (logging, sqlite, paho), which can deadlock the children,
and the master's SIGCHLD reaping would have to supervise a client it is not built for.

Exactly once end to end:
- one persistent MQTT session (clean_session False, fixed client id, QoS 1): the broker
  queues events while no ingester is connected (server restart, takeover) and redelivers
  any message not acknowledged;
- manual acknowledgement: a message is acknowledged only after its transaction committed;
  if the database write fails the client disconnects, and the broker redelivers it;
- batches: paho's thread only queues each message; a writer thread stores what has queued up
  (up to BATCH_MAX, waiting at most BATCH_WAIT_S for more) in one transaction and then
  acknowledges each of them, in arrival order. One commit per batch instead of one per message
  is what lets 10,000 devices' reports in: the commit, not the rows, is the cost. A batch
  that fails is rolled back whole and nothing of it is acknowledged; messages of a connection
  that has since dropped are stored (harmless: the redelivery is recognised) but never
  acknowledged on the new one, whose message ids mean other messages;
- redeliveries are harmless: events are unique by (device, ts, event) and a state report
  never replaces a newer one (registry.py);
- retained state and status are handed out again on every subscription, so a server that
  was down, or lost its volume, catches up with every device's current state.
"""
from __future__ import annotations

import fcntl
import json
import logging
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path

import paho.mqtt.client as mqtt

from ..protocol import PREFIX, Presence, device_topic
from . import metrics
from .config import ServerConfig
from .errors import InvalidMessage
from .registry import Registry
from .rollout_engine import HINT, RolloutEngine

log = logging.getLogger("fotalab.server.ingest")
SUBSCRIPTIONS = [(f"{PREFIX}/devices/+/{kind}", 1) for kind in ("state", "events", "status")]
MAX_PAYLOAD = 64 * 1024
BATCH_MAX = 500          # messages per transaction (the broker's max_inflight_messages bounds it too)
BATCH_WAIT_S = 0.05      # how long a batch waits for more once it has one message


def _report(device_id: str, payload: bytes, required: str) -> dict:
    if len(payload) > MAX_PAYLOAD:
        raise InvalidMessage(f"payload of {len(payload)} bytes exceeds {MAX_PAYLOAD}")
    try:
        report = json.loads(payload)
    except ValueError:
        raise InvalidMessage("payload is not JSON") from None
    if not isinstance(report, dict):
        raise InvalidMessage("payload is not a JSON object")
    if not isinstance(report.get("ts"), (int, float)) or isinstance(report.get("ts"), bool):
        raise InvalidMessage("payload has no numeric 'ts'")
    if not isinstance(report.get(required), str):
        raise InvalidMessage(f"payload has no string {required!r}")
    if report.get("device", device_id) != device_id:
        raise InvalidMessage(f"payload names device {report['device']!r}, the topic {device_id!r}")
    return report


def handle(registry: Registry, topic: str, payload: bytes, now: float | None = None) -> tuple[str, str]:
    """Store one device message; (topic kind, outcome). Raises InvalidMessage or sqlite3.Error."""
    parts = topic.split("/")
    if len(parts) != 5 or "/".join(parts[:3]) != f"{PREFIX}/devices" or not parts[3]:
        raise InvalidMessage(f"unexpected topic {topic!r}")
    device_id, kind = parts[3], parts[4]
    if kind == "status":
        status = payload.decode(errors="replace")
        if status not in tuple(Presence):
            raise InvalidMessage(f"status {status[:40]!r} is neither '{Presence.ONLINE}' nor '{Presence.OFFLINE}'")
        registry.record_status(device_id, status == Presence.ONLINE, now)
        return kind, "stored"
    if kind == "state":
        stored = registry.record_state(device_id, _report(device_id, payload, "state"), now)
        return kind, "stored" if stored else "stale"
    if kind == "events":
        stored = registry.record_event(device_id, _report(device_id, payload, "event"), now)
        return kind, "stored" if stored else "duplicate"
    raise InvalidMessage(f"unexpected topic kind {kind!r}")


class Ingester:
    """The MQTT client of the elected process."""

    def __init__(self, config: ServerConfig, registry: Registry) -> None:
        self._registry = registry
        self._host, self._port = config.mqtt_host, config.mqtt_port
        self._client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=config.mqtt_client_id,
                                   clean_session=False, manual_ack=True)
        if config.tls:      # over TLS the broker knows us by our certificate (its CN is our username)
            self._client.tls_set_context(config.tls.client_context())
        elif config.mqtt_username:
            self._client.username_pw_set(config.mqtt_username, config.mqtt_password)
        self._client.reconnect_delay_set(min_delay=1, max_delay=10)
        self._client.on_connect = self._connected
        self._client.on_disconnect = self._disconnected
        self._client.on_message = self._message
        self._queue: queue.Queue[tuple[int, mqtt.MQTTMessage]] = queue.Queue()
        self._connection = 0          # counts connections: a message id means something on its own only
        self._writer = threading.Thread(target=self._write_forever, name="ingest-writer", daemon=True)
        self._writer.start()

    def run_forever(self, retry_s: float = 2.0) -> None:
        while True:
            try:
                self._client.connect(self._host, self._port, keepalive=30)
                self._client.loop_forever(retry_first_connection=True)
            except OSError as exc:
                log.warning("MQTT broker %s:%d unreachable (%s); retrying", self._host, self._port, exc)
            time.sleep(retry_s)

    def hint(self, device_id: str) -> None:
        """Ask a device to check for its update (QoS 1, not retained); paho keeps it while the
        broker is away and sends it on reconnection."""
        self._client.publish(device_topic(device_id, "cmd"), HINT, qos=1)

    def _connected(self, client: mqtt.Client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            log.warning("MQTT broker refused the ingester: %s (check FOTA_MQTT_USERNAME/PASSWORD)", reason_code)
            return
        self._connection += 1
        client.subscribe(SUBSCRIPTIONS)
        self._registry.set_ingester(os.getpid(), True)
        metrics.INGESTER.set(1)
        log.info("ingesting device messages from %s:%d (session resumed: %s)", self._host, self._port,
                 bool(flags.session_present))

    def _disconnected(self, client: mqtt.Client, userdata, flags, reason_code, properties) -> None:
        self._connection += 1         # what is still queued will not be acknowledged on the next one
        metrics.INGESTER.set(0)
        try:
            self._registry.set_ingester(os.getpid(), False)
        except sqlite3.Error:
            pass                         # the status row is informative; the database error is logged elsewhere
        log.warning("MQTT ingester disconnected: %s", reason_code)

    def _message(self, client: mqtt.Client, userdata, message: mqtt.MQTTMessage) -> None:
        self._queue.put((self._connection, message))      # stored and acknowledged by the writer

    def _write_forever(self) -> None:
        while True:
            batch = [self._queue.get()]
            deadline = time.monotonic() + BATCH_WAIT_S
            while len(batch) < BATCH_MAX:
                try:
                    batch.append(self._queue.get(timeout=max(0.0, deadline - time.monotonic())))
                except queue.Empty:
                    break
            self._store(batch)

    def _store(self, batch: list[tuple[int, mqtt.MQTTMessage]]) -> None:
        """One transaction for the batch, then each message acknowledged (if its connection lasts)."""
        outcomes = []
        try:
            with self._registry.batch():
                for _, message in batch:
                    try:
                        outcomes.append(handle(self._registry, message.topic, message.payload))
                    except InvalidMessage as exc:
                        outcomes.append((message.topic.rsplit("/", 1)[-1], "invalid"))
                        log.warning("dropping message on %s: %s", message.topic, exc)
        except sqlite3.Error as exc:
            # nothing acknowledged: disconnecting makes the broker redeliver the batch on the next session
            log.error("registry write failed (%s); reconnecting so the broker redelivers", exc)
            self._client.disconnect()
            return
        metrics.INGEST_BATCH.observe(len(batch))
        for (connection, message), (kind, outcome) in zip(batch, outcomes):
            metrics.MQTT_MESSAGES.labels(kind, outcome).inc()
            if connection == self._connection:
                self._client.ack(message.mid, message.qos)


class Elector(threading.Thread):
    """Takes the ingest lock when it is free and then runs `work` in this process, for good."""

    def __init__(self, lock_path: Path, work: Callable[[], None], *, retry_s: float = 1.0,
                 name: str = "ingest") -> None:
        super().__init__(name=f"{name}-elector", daemon=True)
        self._lock_path, self._work, self._retry_s = lock_path, work, retry_s

    def run(self) -> None:
        fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                time.sleep(self._retry_s)
        log.info("this worker (pid %d) runs the %s", os.getpid(), self.name.removesuffix("-elector"))
        self._work()          # never returns; the lock goes with the process


def start_ingestion(config: ServerConfig, registry: Registry) -> Elector:
    """Ingester and rollout engine in whichever worker gets the lock: both exactly once."""
    ingester = Ingester(config, registry)

    def work() -> None:
        RolloutEngine(registry, ingester.hint, ddi_offline_s=config.ddi_offline_s).start()
        ingester.run_forever()
    elector = Elector(config.data_dir / "ingest.lock", work)
    elector.start()
    return elector
