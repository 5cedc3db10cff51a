"""The registry and the ingestion rules: replays change nothing, history is append-only."""
import sqlite3

import pytest

from fotalab.server import ingest
from fotalab.server.ingest import InvalidMessage
from fotalab.server.registry import Registry


@pytest.fixture
def registry(tmp_path):
    registry = Registry(tmp_path / "registry.sqlite3")
    registry.migrate()
    return registry


def test_wal_mode_and_schema_version(registry):
    db = sqlite3.connect(registry.path)
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.execute("PRAGMA user_version").fetchone()[0] == 4     # 3: rollout log; 4: DDI controllers and actions
    registry.migrate()                       # idempotent


def test_replayed_event_is_stored_once(registry):
    payload = b'{"device": "d", "ts": 5.125, "event": "committed", "version": "2.0.0"}'
    outcomes = [ingest.handle(registry, "fota/v1/devices/d/events", payload) for _ in range(3)]
    assert outcomes == [("events", "stored"), ("events", "duplicate"), ("events", "duplicate")]
    assert [e["event"] for e in registry.history("d")] == ["committed"]


def test_same_event_at_another_time_is_a_new_event(registry):
    for ts in (1.0, 2.0):
        ingest.handle(registry, "fota/v1/devices/d/events", f'{{"ts": {ts}, "event": "retry"}}'.encode())
    assert len(registry.history("d")) == 2


def test_an_older_state_never_replaces_a_newer_one(registry):
    newer = b'{"ts": 20, "state": "committed", "version": "2.0.0"}'
    older = b'{"ts": 10, "state": "downloading", "version": "1.0.0"}'
    assert ingest.handle(registry, "fota/v1/devices/d/state", newer) == ("state", "stored")
    assert ingest.handle(registry, "fota/v1/devices/d/state", older) == ("state", "stale")
    assert ingest.handle(registry, "fota/v1/devices/d/state", newer) == ("state", "stale")
    assert registry.device("d")["state"] == "committed"


def test_history_is_append_only(registry):
    ingest.handle(registry, "fota/v1/devices/d/events", b'{"ts": 1, "event": "booted"}')
    db = sqlite3.connect(registry.path)
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        db.execute("UPDATE events SET event = 'committed'")
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        db.execute("DELETE FROM events")


def test_status_marks_online_and_offline(registry):
    ingest.handle(registry, "fota/v1/devices/d/status", b"online", now=100.0)
    ingest.handle(registry, "fota/v1/devices/d/status", b"offline", now=200.0)
    device = registry.device("d")
    assert device["online"] is False and (device["first_seen"], device["last_seen"]) == (100.0, 200.0)


@pytest.mark.parametrize("topic, payload, reason", [
    ("fota/v1/devices/d/state", b"not json", "not JSON"),
    ("fota/v1/devices/d/state", b"[1, 2]", "not a JSON object"),
    ("fota/v1/devices/d/state", b'{"state": "x"}', "numeric 'ts'"),
    ("fota/v1/devices/d/state", b'{"ts": true, "state": "x"}', "numeric 'ts'"),
    ("fota/v1/devices/d/events", b'{"ts": 1}', "string 'event'"),
    ("fota/v1/devices/d/events", b'{"ts": 1, "event": "x", "device": "e"}', "names device 'e'"),
    ("fota/v1/devices/d/status", b"maybe", "neither 'online' nor 'offline'"),
    ("fota/v1/devices/d/cmd", b"{}", "unexpected topic kind"),
    ("fota/v1/other/d/state", b"{}", "unexpected topic"),
    ("fota/v1/devices/d/state", b"{" + b" " * 70000 + b"}", "exceeds"),
])
def test_invalid_messages_are_rejected_with_the_reason(registry, topic, payload, reason):
    with pytest.raises(InvalidMessage, match=reason):
        ingest.handle(registry, topic, payload)
    assert registry.devices() == []


def test_counts_by_state(registry):
    for device, state in (("a", "committed"), ("b", "committed"), ("c", "rolled_back")):
        ingest.handle(registry, f"fota/v1/devices/{device}/state", f'{{"ts": 1, "state": "{state}"}}'.encode())
    assert registry.counts() == ({"committed": 2, "rolled_back": 1}, 0)
