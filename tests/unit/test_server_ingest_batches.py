"""The ingester's batches: one registry transaction per batch, each message acknowledged only
after the transaction holding it committed (exactly once end to end, with far fewer commits)."""
from __future__ import annotations

import json
import sqlite3

import paho.mqtt.client as mqtt
import pytest

from fotalab.protocol import Event, Presence, State
from fotalab.server import ingest
from fotalab.server.config import ServerConfig
from fotalab.server.registry import Registry


class Broker:
    """The paho client as the writer sees it: acknowledgements and a hang-up."""

    def __init__(self) -> None:
        self.acked: list[int] = []
        self.hung_up = False

    def ack(self, mid: int, qos: int) -> None:
        self.acked.append(mid)

    def disconnect(self) -> None:
        self.hung_up = True


def message(mid: int, device: str, kind: str, body: dict | str) -> mqtt.MQTTMessage:
    sent = mqtt.MQTTMessage(mid=mid, topic=f"fota/v1/devices/{device}/{kind}".encode())
    sent.payload = (body if isinstance(body, str) else json.dumps({"device": device, **body})).encode()
    sent.qos = 1
    return sent


@pytest.fixture
def writer(tmp_path):
    registry = Registry(tmp_path / "registry.sqlite3")
    registry.migrate()
    ingester = ingest.Ingester(ServerConfig(data_dir=tmp_path), registry)
    ingester._client = Broker()
    ingester._connection = 1
    return ingester, registry


def test_a_batch_is_stored_in_one_transaction_then_every_message_acknowledged_in_order(writer):
    ingester, registry = writer
    commits = []
    registry._db().set_trace_callback(lambda sql: commits.append(sql) if sql == "COMMIT" else None)
    batch = [(1, message(7, "sim-00001", "status", Presence.ONLINE)),
             (1, message(8, "sim-00001", "state", {"ts": 1.0, "state": State.RUNNING, "version": "1.0.0"})),
             (1, message(9, "sim-00001", "events", {"ts": 1.0, "event": Event.BOOTED})),
             (1, message(10, "sim-00001", "events", "not json")),          # invalid: dropped, acknowledged
             (1, message(11, "sim-00001", "events", {"ts": 1.0, "event": Event.BOOTED}))]  # a redelivery
    ingester._store(batch)
    assert commits == ["COMMIT"]
    assert ingester._client.acked == [7, 8, 9, 10, 11]
    device = registry.device("sim-00001")
    assert (device["state"], device["online"]) == (State.RUNNING, True)
    assert [e["event"] for e in registry.history("sim-00001")] == [Event.BOOTED]


def test_a_batch_that_fails_is_rolled_back_whole_and_nothing_is_acknowledged(writer, monkeypatch):
    ingester, registry = writer
    calls = []

    def failing(*args, **kwargs):
        calls.append(args)
        if len(calls) == 2:
            raise sqlite3.OperationalError("disk I/O error")
        return ingest_handle(*args, **kwargs)
    ingest_handle = ingest.handle
    monkeypatch.setattr(ingest, "handle", failing)
    ingester._store([(1, message(1, "sim-00002", "events", {"ts": 2.0, "event": Event.BOOTED})),
                     (1, message(2, "sim-00002", "events", {"ts": 3.0, "event": Event.STAGED}))])
    assert ingester._client.acked == [] and ingester._client.hung_up     # the broker redelivers both
    assert registry.history("sim-00002") == []                            # the first one's write rolled back


def test_messages_of_a_connection_that_dropped_are_stored_but_never_acknowledged_on_the_next(writer):
    ingester, registry = writer
    ingester._store([(0, message(5, "sim-00003", "events", {"ts": 4.0, "event": Event.BOOTED})),
                     (1, message(5, "sim-00003", "events", {"ts": 5.0, "event": Event.STAGED}))])
    assert ingester._client.acked == [5]                  # mid 5 of this connection, not the old one's
    assert len(registry.history("sim-00003")) == 2
