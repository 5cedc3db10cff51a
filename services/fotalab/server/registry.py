"""The device registry: SQLite in WAL mode on the server's volume.

Every device with its last reported state, online status and last contact; an append-only
event history; per-device release assignments; rollouts and the log of their decisions; the
ingester's status. WAL lets every
gunicorn worker read while the one ingester writes. Each thread keeps its own connection
(sqlite3 connections are not shared between threads), opened on first use, so nothing
opened in the gunicorn master crosses a fork.

Idempotence is in the schema, so a replayed MQTT message changes nothing:
- an event is unique by (device, ts, event): a redelivery after a reconnect is ignored;
- a state report only replaces an older one (by the device's ts): the retained state the
  broker hands out again after a restart does not roll a newer state back.
"""
from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import NamedTuple

from ..protocol import ACTIVE_ROLLOUTS, RolloutStatus
from .ddi_store import SCHEMA as DDI_SCHEMA
from .errors import RolloutConflict
from .rollouts import Action, Actor, Decision, Rollout, assignments_to_clear, dumps, loads

SCHEMA_VERSION = 4      # 3: rollout_log, and indexes for the dashboard's change feed and charts; 4: DDI (ddi_store.py)
SCHEMA = """
CREATE TABLE IF NOT EXISTS devices (
    device_id    TEXT PRIMARY KEY,
    hardware     TEXT,
    state        TEXT,
    version      TEXT,
    slot         TEXT,
    image_sha256 TEXT,
    progress     REAL,
    reason       TEXT,
    state_ts     REAL NOT NULL DEFAULT 0,   -- the device's clock; orders state reports
    report       TEXT,                      -- the last state report as the device sent it
    online       INTEGER NOT NULL DEFAULT 0,
    first_seen   REAL NOT NULL,             -- server clock
    last_seen    REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS events (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    device_id   TEXT NOT NULL,
    ts          REAL NOT NULL,
    event       TEXT NOT NULL,
    received_at REAL NOT NULL,
    payload     TEXT NOT NULL,
    UNIQUE (device_id, ts, event)
);
CREATE INDEX IF NOT EXISTS events_by_device ON events (device_id, id);
CREATE TRIGGER IF NOT EXISTS events_no_update BEFORE UPDATE ON events
    BEGIN SELECT RAISE(ABORT, 'the event history is append-only'); END;
CREATE TRIGGER IF NOT EXISTS events_no_delete BEFORE DELETE ON events
    BEGIN SELECT RAISE(ABORT, 'the event history is append-only'); END;
CREATE TABLE IF NOT EXISTS assignments (
    device_id   TEXT PRIMARY KEY,
    version     TEXT NOT NULL,
    assigned_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS rollouts (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    status      TEXT NOT NULL,             -- in a column of its own: the engine selects active ones
    revision    INTEGER NOT NULL,          -- each save names the revision it read (optimistic locking)
    created_at  REAL NOT NULL,
    updated_at  REAL NOT NULL,
    body        TEXT NOT NULL              -- rollouts.dumps(): phases, policy, every device's progress
);
CREATE TABLE IF NOT EXISTS rollout_log (  -- every decision on a rollout, for people: append-only
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    rollout_id  INTEGER NOT NULL,
    at          REAL NOT NULL,
    actor       TEXT NOT NULL,             -- engine or operator
    action      TEXT NOT NULL,             -- created, advanced, paused, resumed, aborted, completed
    status      TEXT NOT NULL,             -- the rollout's status after the decision
    phase       INTEGER NOT NULL,          -- and its phase
    reason      TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS rollout_log_by_rollout ON rollout_log (rollout_id, id);
CREATE INDEX IF NOT EXISTS devices_by_last_seen ON devices (last_seen);     -- the change feed (live.py)
CREATE INDEX IF NOT EXISTS rollouts_by_update ON rollouts (updated_at);
CREATE INDEX IF NOT EXISTS events_by_kind ON events (event, received_at);   -- charts.py: one kind, a time window
CREATE TABLE IF NOT EXISTS hints (       -- operator triggers, sent by the one process on MQTT
    device_id    TEXT PRIMARY KEY,
    requested_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS ingester (
    id        INTEGER PRIMARY KEY CHECK (id = 1),
    pid       INTEGER NOT NULL,
    connected INTEGER NOT NULL,
    since     REAL NOT NULL
);
"""
# a v2 database gets a "created" entry for each rollout it holds: no rollout has an empty log
BACKFILL_V3 = f"""
INSERT INTO rollout_log (rollout_id, at, actor, action, status, phase, reason)
    SELECT id, created_at, '{Actor.OPERATOR}', '{Action.CREATED}', '{RolloutStatus.RUNNING}', 0,
           'created before this server kept a rollout log'
    FROM rollouts WHERE id NOT IN (SELECT rollout_id FROM rollout_log);
"""
LOG_COLUMNS = ("id", "rollout_id", "at", "actor", "action", "status", "phase", "reason")
DEVICE_COLUMNS = ("device_id", "hardware", "state", "version", "slot", "image_sha256", "progress", "reason",
                  "state_ts", "online", "first_seen", "last_seen")
EVENT_COLUMNS = ("id", "device_id", "ts", "event", "received_at", "payload")     # id first: it is assigned
UPSERT_ASSIGNMENT = ("INSERT INTO assignments (device_id, version, assigned_at) VALUES (?, ?, ?) "
                     "ON CONFLICT (device_id) DO UPDATE SET version = excluded.version, "
                     "assigned_at = excluded.assigned_at")
UNKNOWN_STATE = "unknown"        # the state of a device that has not reported one yet
PAGE_ORDERS = ("device_id", "state", "version", "last_seen")     # the fleet table's orders (device_page)
ACTIVE = f"status IN ({', '.join('?' * len(ACTIVE_ROLLOUTS))})"   # a rollout's; bind ACTIVE_ROLLOUTS to it


class RolloutRecord(NamedTuple):
    rollout: Rollout
    created_at: float
    updated_at: float


class Registry:
    def __init__(self, path: Path, *, busy_timeout_s: float = 10.0) -> None:
        self.path = path
        self._timeout = busy_timeout_s
        self._local = threading.local()

    def _db(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.path, timeout=self._timeout, isolation_level=None)
            db.row_factory = sqlite3.Row
            db.execute("PRAGMA synchronous=NORMAL")     # WAL: a process crash loses no commit
            self._local.db = db
        return db

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction; IMMEDIATE takes the write lock first, so it waits (busy timeout)
        instead of failing on a lock upgrade when another process writes. Inside `batch()` the
        writes join the batch's transaction."""
        db = self._db()
        if getattr(self._local, "batching", False):
            yield db
            return
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    @contextmanager
    def batch(self) -> Iterator[None]:
        """Many writes of this thread in one transaction (the ingester's batches): all or none."""
        with self._write():
            self._local.batching = True
            try:
                yield
            finally:
                self._local.batching = False

    def migrate(self) -> None:
        """Create the schema (once, in the master before workers start)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = self._db()
        if db.execute("PRAGMA journal_mode=WAL").fetchone()[0] != "wal":
            raise RuntimeError(f"{self.path}: SQLite refused WAL mode; put the data dir on a local filesystem")
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise RuntimeError(f"{self.path} has schema {version}, newer than this server's {SCHEMA_VERSION}: "
                               "run a newer server or move the file away")
        db.executescript("BEGIN IMMEDIATE;" + SCHEMA + DDI_SCHEMA + (BACKFILL_V3 if version < 3 else "")
                         + f"PRAGMA user_version = {SCHEMA_VERSION}; COMMIT;")

    def close(self) -> None:
        db = getattr(self._local, "db", None)
        if db is not None:
            db.close()
            self._local.db = None

    def ping(self) -> int:
        """Devices known; raises sqlite3.Error when the database cannot be read."""
        return self._db().execute("SELECT count(*) FROM devices").fetchone()[0]

    # --- ingestion (the one ingester writes these) --------------------------------------------

    def _seen(self, db: sqlite3.Connection, device_id: str, now: float) -> None:
        db.execute("INSERT INTO devices (device_id, first_seen, last_seen) VALUES (?, ?, ?) "
                   "ON CONFLICT (device_id) DO UPDATE SET last_seen = max(last_seen, excluded.last_seen)",
                   (device_id, now, now))

    def record_state(self, device_id: str, report: dict, now: float | None = None) -> bool:
        """Store a state report unless a newer one is stored; True if it was stored."""
        now = time.time() if now is None else now
        with self._write() as db:
            self._seen(db, device_id, now)
            changed = db.execute(
                "UPDATE devices SET hardware = ?, state = ?, version = ?, slot = ?, image_sha256 = ?, "
                "progress = ?, reason = ?, state_ts = ?, report = ? WHERE device_id = ? AND state_ts < ?",
                (report.get("hardware"), report.get("state"), report.get("version"), report.get("slot"),
                 report.get("image_sha256"), report.get("progress"), report.get("reason"), report["ts"],
                 json.dumps(report, sort_keys=True), device_id, report["ts"])).rowcount
        return changed == 1

    def record_status(self, device_id: str, online: bool, now: float | None = None) -> None:
        now = time.time() if now is None else now
        with self._write() as db:
            self._seen(db, device_id, now)
            db.execute("UPDATE devices SET online = ? WHERE device_id = ?", (int(online), device_id))

    def record_event(self, device_id: str, event: dict, now: float | None = None) -> bool:
        """Append an event; False if this (device, ts, event) is already in the history."""
        now = time.time() if now is None else now
        with self._write() as db:
            self._seen(db, device_id, now)
            stored = db.execute(f"INSERT OR IGNORE INTO events ({', '.join(EVENT_COLUMNS[1:])}) "
                                "VALUES (?, ?, ?, ?, ?)",
                                (device_id, event["ts"], event["event"], now, json.dumps(event, sort_keys=True))
                                ).rowcount
        return stored == 1

    def forget_ingester(self) -> None:
        """At server start: the previous run's ingester status says nothing about this run."""
        with self._write() as db:
            db.execute("DELETE FROM ingester")

    def set_ingester(self, pid: int, connected: bool) -> None:
        with self._write() as db:
            db.execute("INSERT INTO ingester (id, pid, connected, since) VALUES (1, ?, ?, ?) ON CONFLICT (id) "
                       "DO UPDATE SET pid = excluded.pid, connected = excluded.connected, since = excluded.since",
                       (pid, int(connected), time.time()))

    # --- queries --------------------------------------------------------------------------------

    def ingester(self) -> dict | None:
        row = self._db().execute("SELECT pid, connected, since FROM ingester WHERE id = 1").fetchone()
        return {"pid": row["pid"], "connected": bool(row["connected"]), "since": row["since"]} if row else None

    @staticmethod
    def _device(row: sqlite3.Row) -> dict:
        device = {column: row[column] for column in DEVICE_COLUMNS}
        device["online"] = bool(device["online"])
        device["report"] = json.loads(row["report"]) if row["report"] else None
        device["assigned_version"] = row["assigned_version"]
        return device

    _SELECT_DEVICES = ("SELECT d.*, a.version AS assigned_version FROM devices d "
                       "LEFT JOIN assignments a ON a.device_id = d.device_id")

    def devices(self, *, state: str | None = None, online: bool | None = None,
                seen_since: float | None = None) -> list[dict]:
        where, args = [], []
        if seen_since is not None:                   # last_seen moves on every state, status and event
            where.append("d.last_seen >= ?")
            args.append(seen_since)
        if state is not None:
            where.append("d.state = ?")
            args.append(state)
        if online is not None:
            where.append("d.online = ?")
            args.append(int(online))
        sql = self._SELECT_DEVICES + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY d.device_id"
        return [self._device(row) for row in self._db().execute(sql, args)]

    def state_rows(self) -> list[sqlite3.Row]:
        """(device_id, state, version, state_ts, report) of every device that reported a state,
        in one query: the rollout engine's facts (it parses a report only when it changed)."""
        return self._db().execute("SELECT device_id, state, version, state_ts, report FROM devices "
                                  "WHERE state_ts > 0").fetchall()

    def device(self, device_id: str) -> dict | None:
        row = self._db().execute(self._SELECT_DEVICES + " WHERE d.device_id = ?", (device_id,)).fetchone()
        return self._device(row) if row else None

    def history(self, device_id: str, *, after: int = 0, limit: int = 100) -> list[dict]:
        return self._events("device_id = ? AND id > ? ORDER BY id LIMIT ?", (device_id, after, limit))

    def events(self, *, after: int = 0, limit: int = 500) -> list[dict]:
        """Every device's events after event id `after`, oldest first."""
        return self._events("id > ? ORDER BY id LIMIT ?", (after, limit))

    def recent_events(self, kind: str, *, since: float, limit: int) -> list[dict]:
        """The newest events of one kind received since `since` (server clock), newest first."""
        return self._events("event = ? AND received_at >= ? ORDER BY received_at DESC LIMIT ?", (kind, since, limit))

    def events_before(self, device_id: str, before: int, kinds: Sequence[str], limit: int) -> list[dict]:
        """A device's events of the given kinds before event id `before`, newest first."""
        return self._events(f"device_id = ? AND id < ? AND event IN ({','.join('?' * len(kinds))}) "
                            "ORDER BY id DESC LIMIT ?", (device_id, before, *kinds, limit))

    def _events(self, where: str, args: Sequence) -> list[dict]:
        """Events as the API shows them (the payload parsed), selected by `where` (with its ORDER and LIMIT)."""
        rows = self._db().execute(f"SELECT {', '.join(EVENT_COLUMNS)} FROM events WHERE {where}", args)
        return [{**{column: row[column] for column in EVENT_COLUMNS[:-1]}, "payload": json.loads(row["payload"])}
                for row in rows]

    def high_water(self) -> tuple[int, int]:
        """The last event id and the last rollout log id: where a change feed starts."""
        row = self._db().execute("SELECT (SELECT coalesce(max(id), 0) FROM events), "
                                 "(SELECT coalesce(max(id), 0) FROM rollout_log)").fetchone()
        return row[0], row[1]

    def counts(self) -> tuple[dict[str, int], int]:
        """Devices by state (devices that never reported a state count as 'unknown'), and online:
        /metrics at scrape time, so one aggregate query (summary)."""
        by_state, online = self.summary()
        return by_state, sum(online.values())

    # --- the dashboard's fleet table (fleetview.py): counts and one page, never the whole fleet ---

    def summary(self) -> tuple[dict[str, int], dict[str, int]]:
        """Devices by state and online devices by state, in one scan that returns a row per state:
        the dashboard's counts and /metrics at 10,000 devices ship no device out of SQLite."""
        rows = self._db().execute("SELECT state, count(*), total(online) FROM devices GROUP BY state").fetchall()
        return ({row[0] or UNKNOWN_STATE: row[1] for row in rows},
                {row[0] or UNKNOWN_STATE: int(row[2]) for row in rows})

    def device_page(self, *, state: str | None = None, group: str | None = None, online: bool | None = None,
                    order: str = "device_id", descending: bool = False, offset: int = 0,
                    limit: int = 50) -> tuple[list[dict], int]:
        """One page of the devices matching the filter, in `order` (a PAGE_ORDERS column; the
        device id breaks ties, so pages never overlap), and how many match: the table's pager."""
        if order not in PAGE_ORDERS:
            raise ValueError(f"order must be one of {', '.join(PAGE_ORDERS)}, not {order!r}")
        where, args = [], []
        if state is not None:
            where.append("d.state = ?" if state != UNKNOWN_STATE else "d.state IS NULL")
            args += [state] if state != UNKNOWN_STATE else []
        if group is not None:                       # the group is in the report only: one JSON read per row
            where.append("json_extract(d.report, '$.group') = ?")
            args.append(group)
        if online is not None:
            where.append("d.online = ?")
            args.append(int(online))
        sql_where = " WHERE " + " AND ".join(where) if where else ""
        direction = "DESC" if descending else "ASC"
        db = self._db()
        total = db.execute(f"SELECT count(*) FROM devices d{sql_where}", args).fetchone()[0]
        ordered = f"ORDER BY d.{order} {direction}, d.device_id {direction}"
        # the window's ids first, from the devices table alone (an index walk for the id order), then
        # their rows: OFFSET 9950 with the join in the same query joined the 9,950 rows it skipped
        rows = db.execute(f"{self._SELECT_DEVICES} WHERE d.device_id IN (SELECT d.device_id FROM devices d"
                          f"{sql_where} {ordered} LIMIT ? OFFSET ?) {ordered}", [*args, limit, offset])
        return [self._device(row) for row in rows], total

    def rollout_heads(self, *, latest: int) -> list[tuple[int, int, float, float]]:
        """(id, revision, created_at, updated_at) of the newest `latest` rollouts, oldest first,
        without their bodies: a body with 10,000 device runs takes milliseconds to parse, so the
        dashboard reads one only when its revision is new to it (fleetview.rollout_views)."""
        rows = self._db().execute("SELECT id, revision, created_at, updated_at FROM rollouts ORDER BY id DESC LIMIT ?",
                                  (latest,)).fetchall()
        return [(row[0], row[1], row[2], row[3]) for row in reversed(rows)]

    def seen_since(self, since: float) -> list[tuple[str, float]]:
        """(device_id, last_seen) of the devices seen since `since`: the change feed's cursor,
        without reading their rows (live.py reads only the pages that are open)."""
        return [(row[0], row[1]) for row in
                self._db().execute("SELECT device_id, last_seen FROM devices WHERE last_seen >= ?", (since,))]

    # --- assignments ------------------------------------------------------------------------------

    def assignment(self, device_id: str) -> str | None:
        row = self._db().execute("SELECT version FROM assignments WHERE device_id = ?", (device_id,)).fetchone()
        return row[0] if row else None

    def set_assignment(self, device_id: str, version: str) -> None:
        with self._write() as db:
            db.execute(UPSERT_ASSIGNMENT, (device_id, version, time.time()))

    # --- rollouts (rollouts.py decides, the engine and the API save) ----------------------------------

    def create_rollout(self, rollout: Rollout, reason: str) -> Rollout:
        """Store a new rollout unless another one is active (one at a time keeps devices unambiguous)."""
        with self._write() as db:
            now = time.time()                  # under the write lock: updated_at follows commit order
            active = db.execute(f"SELECT id, status FROM rollouts WHERE {ACTIVE}", (*ACTIVE_ROLLOUTS,)).fetchone()
            if active:
                raise RolloutConflict(f"rollout {active['id']} is {active['status']}: abort it or let it finish "
                                      "before creating another one")
            rollout_id = db.execute("INSERT INTO rollouts (status, revision, created_at, updated_at, body) "
                                    "VALUES (?, 1, ?, ?, ?)", (rollout.status, now, now, dumps(rollout))).lastrowid
            created = replace(rollout, id=rollout_id, revision=1)
            self._log(db, created, Actor.OPERATOR, [Decision(Action.CREATED, reason)], now)
        return created

    def rollout(self, rollout_id: int) -> Rollout | None:
        row = self._db().execute("SELECT id, revision, body FROM rollouts WHERE id = ?", (rollout_id,)).fetchone()
        return loads(row["id"], row["revision"], row["body"]) if row else None

    def rollouts(self, *, active_only: bool = False) -> list[Rollout]:
        where, args = (f" WHERE {ACTIVE}", (*ACTIVE_ROLLOUTS,)) if active_only else ("", ())
        rows = self._db().execute(f"SELECT id, revision, body FROM rollouts{where} ORDER BY id", args)
        return [loads(r["id"], r["revision"], r["body"]) for r in rows]

    def rollout_records(self, *, updated_since: float | None = None, rollout_id: int | None = None,
                        latest: int = -1) -> list[RolloutRecord]:
        """Rollouts with their creation and last-change times (server clock), oldest first: those
        saved since `updated_since`, one by id, or the `latest` ones (-1: all)."""
        sql, args = "SELECT id, revision, body, created_at, updated_at FROM rollouts WHERE 1", []
        if updated_since is not None:
            sql, args = sql + " AND updated_at >= ?", [*args, updated_since]
        if rollout_id is not None:
            sql, args = sql + " AND id = ?", [*args, rollout_id]
        rows = self._db().execute(sql + " ORDER BY id DESC LIMIT ?", [*args, latest])
        return [RolloutRecord(loads(r["id"], r["revision"], r["body"]), r["created_at"], r["updated_at"])
                for r in reversed(rows.fetchall())]

    def save_rollout(self, rollout: Rollout, *, assign: Sequence[str] = (), actor: Actor = Actor.ENGINE,
                     decisions: Sequence[Decision] = ()) -> Rollout | None:
        """Save if nobody saved since `rollout.revision` was read, with the assignments it implies
        (`assign`: the devices now offered its release; those an abort withdraws it from are worked
        out here, rollouts.assignments_to_clear) and the decisions to log, in one transaction; the
        saved rollout, or None when it lost the race (read it again)."""
        with self._write() as db:
            now = time.time()                  # under the write lock: updated_at follows commit order
            saved = db.execute("UPDATE rollouts SET status = ?, revision = revision + 1, updated_at = ?, body = ? "
                               "WHERE id = ? AND revision = ?",
                               (rollout.status, now, dumps(rollout), rollout.id, rollout.revision)).rowcount
            if not saved:
                return None
            db.executemany(UPSERT_ASSIGNMENT, [(d, rollout.release, now) for d in assign])
            db.executemany("DELETE FROM assignments WHERE device_id = ? AND version = ?",
                           [(d, rollout.release) for d in assignments_to_clear(rollout)])
            self._log(db, rollout, actor, decisions, now)
        return replace(rollout, revision=rollout.revision + 1)

    @staticmethod
    def _log(db: sqlite3.Connection, rollout: Rollout, actor: Actor, decisions: Sequence[Decision], now: float) -> None:
        db.executemany("INSERT INTO rollout_log (rollout_id, at, actor, action, status, phase, reason) "
                       "VALUES (?, ?, ?, ?, ?, ?, ?)",
                       [(rollout.id, now, actor, d.action, rollout.status, rollout.phase, d.reason) for d in decisions])

    def rollout_log(self, *, rollout_id: int | None = None, after: int = 0, limit: int = 1000) -> list[dict]:
        """Decisions, oldest first: of one rollout, or of every rollout after log entry `after`."""
        sql, args = "SELECT * FROM rollout_log WHERE id > ?", [after]
        if rollout_id is not None:
            sql, args = sql + " AND rollout_id = ?", [*args, rollout_id]
        rows = self._db().execute(sql + " ORDER BY id LIMIT ?", [*args, limit])
        return [{column: row[column] for column in LOG_COLUMNS} for row in rows]

    def request_hint(self, device_id: str) -> None:
        with self._write() as db:
            db.execute("INSERT OR REPLACE INTO hints (device_id, requested_at) VALUES (?, ?)", (device_id, time.time()))

    def take_hints(self) -> list[str]:
        with self._write() as db:
            return [row[0] for row in db.execute("DELETE FROM hints RETURNING device_id")]

    def clear_assignment(self, device_id: str) -> bool:
        with self._write() as db:
            return db.execute("DELETE FROM assignments WHERE device_id = ?", (device_id,)).rowcount == 1
