"""DDI controllers and their actions in the registry's SQLite database (tables created by
Registry.migrate, schema 4).

A controller is a device the server learns about by enrolment (`POST /api/v1/controllers`), not
by MQTT: its row in `controllers` holds its hardware and the SHA-256 of its TargetToken (the
token itself is shown once and never stored), and it is an ordinary row in `devices` too, so
the fleet views, history and rollouts see it. An action is hawkBit's word for one offer of a
release to one controller: at most one is open per controller. Its feedback is kept per
action (the client's own words, for `actionHistory`); what it means for the device goes
through Registry.record_state and record_event, like an MQTT report (ddi.py).
"""
from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING

from .errors import ControllerExists

if TYPE_CHECKING:                    # registry.py creates these tables (its migrate), so it imports this module
    from .registry import Registry

SCHEMA = """
CREATE TABLE IF NOT EXISTS controllers (       -- DDI clients, enrolled by the operator
    controller_id   TEXT PRIMARY KEY,          -- hawkBit's controllerId; the device id everywhere else
    hardware        TEXT NOT NULL,
    token_sha256    TEXT NOT NULL,             -- SHA-256 of the TargetToken; the token is never stored
    created_at      REAL NOT NULL,
    offer_requested REAL NOT NULL DEFAULT 0,   -- a hint (rollout engine, operator): offer the release again
    attributes      TEXT NOT NULL DEFAULT '{}', -- what the client sent to configData
    attributes_at   REAL NOT NULL DEFAULT 0      -- when (0: never; the poll then asks for them)
);
CREATE TABLE IF NOT EXISTS ddi_actions (       -- one offer of a release to one controller
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    controller_id TEXT NOT NULL,
    version       TEXT NOT NULL,
    source        TEXT NOT NULL,               -- 'device': an assignment; 'default': the server's default release
    status        TEXT NOT NULL,               -- ActionStatus
    cancel_rejected INTEGER NOT NULL DEFAULT 0,
    created_at    REAL NOT NULL,
    updated_at    REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS ddi_actions_by_controller ON ddi_actions (controller_id, id);
CREATE TABLE IF NOT EXISTS ddi_feedback (      -- every feedback, as the client sent it: append-only
    id        INTEGER PRIMARY KEY AUTOINCREMENT,
    action_id INTEGER NOT NULL,
    at        REAL NOT NULL,
    channel   TEXT NOT NULL,                   -- deploymentBase or cancelAction
    execution TEXT NOT NULL,
    finished  TEXT NOT NULL,
    details   TEXT NOT NULL                    -- JSON list of strings
);
CREATE INDEX IF NOT EXISTS ddi_feedback_by_action ON ddi_feedback (action_id, id);
"""


class ActionStatus(StrEnum):
    """An action's status, in hawkBit's words (its Action.Status, shown in actionHistory.status)."""
    RUNNING = "RUNNING"
    CANCELING = "CANCELING"
    FINISHED = "FINISHED"            # closed + success
    ERROR = "ERROR"                  # closed + failure
    CANCELED = "CANCELED"


OPEN = (ActionStatus.RUNNING, ActionStatus.CANCELING)
HISTORY_LIMIT = 100                  # actionHistory messages at most (hawkBit caps them too)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class Action:
    id: int
    controller_id: str
    version: str
    source: str
    status: str
    cancel_rejected: bool
    created_at: float
    updated_at: float

    @property
    def open(self) -> bool:
        return self.status in OPEN


@dataclass(frozen=True)
class PollView:
    """All a poll needs, in one read: the controller, its device row, its assignment, its open action."""
    controller_id: str
    hardware: str
    token_sha256: str
    offer_requested: float
    version: str | None              # what the device runs, as far as the registry knows
    last_seen: float
    online: bool
    assigned: str | None             # its own assignment (a rollout's or an operator's), not the default
    action: Action | None            # the open action, if any
    attributes_at: float             # when configData last came (0: never)
    finished_at: float               # when an action last finished with success (0: never)
    rolled_back: str | None = None   # the release that last failed after it was installed: never offered again

    def token_matches(self, token: str) -> bool:
        return hmac.compare_digest(token_hash(token), self.token_sha256)


_ACTION_COLUMNS = "id, controller_id, version, source, status, cancel_rejected, created_at, updated_at"
_OPEN_ACTION_AS_X = ", ".join(f"x.{c} AS x_{c}" for c in _ACTION_COLUMNS.split(", "))


def _action(row) -> Action | None:
    if row is None or row["id"] is None:
        return None
    return Action(row["id"], row["controller_id"], row["version"], row["source"], row["status"],
                  bool(row["cancel_rejected"]), row["created_at"], row["updated_at"])


class DdiStore:
    """Controllers, actions and feedback, over the registry's connections and transactions."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry

    def _db(self):
        return self.registry._db()

    def _write(self):
        return self.registry._write()

    # --- controllers ---------------------------------------------------------------------------

    def enroll(self, controller_id: str, hardware: str, token: str, now: float | None = None) -> None:
        """A new controller, and its device row (so it is in the fleet before its first poll)."""
        now = time.time() if now is None else now
        with self._write() as db:
            if db.execute("SELECT 1 FROM controllers WHERE controller_id = ?", (controller_id,)).fetchone():
                raise ControllerExists(f"controller {controller_id!r} is enrolled already: choose another name "
                                       "(`fota controllers list` shows them)")
            if db.execute("SELECT 1 FROM devices WHERE device_id = ?", (controller_id,)).fetchone():
                raise ControllerExists(f"a device named {controller_id!r} already reports to this server: "
                                       "choose another name")
            db.execute("INSERT INTO controllers (controller_id, hardware, token_sha256, created_at) "
                       "VALUES (?, ?, ?, ?)", (controller_id, hardware, token_hash(token), now))
            db.execute("INSERT INTO devices (device_id, hardware, first_seen, last_seen) VALUES (?, ?, ?, ?)",
                       (controller_id, hardware, now, now))

    def controllers(self) -> list[dict]:
        rows = self._db().execute(
            "SELECT c.controller_id, c.hardware, c.created_at, c.attributes, d.state, d.version, d.online, "
            "d.last_seen, (SELECT count(*) FROM ddi_actions a WHERE a.controller_id = c.controller_id) AS actions "
            "FROM controllers c LEFT JOIN devices d ON d.device_id = c.controller_id ORDER BY c.controller_id")
        return [{"controller_id": r["controller_id"], "hardware": r["hardware"], "created_at": r["created_at"],
                 "state": r["state"], "version": r["version"], "online": bool(r["online"]),
                 "last_seen": r["last_seen"], "actions": r["actions"], "attributes": json.loads(r["attributes"])}
                for r in rows]

    def is_controller(self, device_id: str) -> bool:
        return self._db().execute("SELECT 1 FROM controllers WHERE controller_id = ?", (device_id,)).fetchone() \
            is not None

    def poll_view(self, controller_id: str) -> PollView | None:
        row = self._db().execute(
            "SELECT c.controller_id, c.hardware, c.token_sha256, c.offer_requested, d.version, d.last_seen, d.online, "
            "c.attributes_at, (SELECT max(updated_at) FROM ddi_actions WHERE controller_id = c.controller_id AND "
            f"status = '{ActionStatus.FINISHED}') AS finished_at, s.version AS assigned, {_OPEN_ACTION_AS_X}, "
            "json_extract(d.report, '$.last_rollback.version') AS rolled_back "
            "FROM controllers c LEFT JOIN devices d ON d.device_id = c.controller_id "
            "LEFT JOIN assignments s ON s.device_id = c.controller_id "
            "LEFT JOIN ddi_actions x ON x.id = (SELECT max(id) FROM ddi_actions WHERE controller_id = c.controller_id "
            f"AND status IN ('{ActionStatus.RUNNING}', '{ActionStatus.CANCELING}')) "
            "WHERE c.controller_id = ?", (controller_id,)).fetchone()
        if row is None:
            return None
        action = _action({c: row["x_" + c] for c in _ACTION_COLUMNS.split(", ")})
        return PollView(row["controller_id"], row["hardware"], row["token_sha256"], row["offer_requested"],
                        row["version"], row["last_seen"] or 0.0, bool(row["online"]), row["assigned"], action,
                        row["attributes_at"], row["finished_at"] or 0.0, row["rolled_back"])

    def request_offer(self, controller_id: str, now: float | None = None) -> None:
        """The DDI form of a hint: the next poll may offer the assigned release again."""
        with self._write() as db:
            db.execute("UPDATE controllers SET offer_requested = ? WHERE controller_id = ?",
                       (time.time() if now is None else now, controller_id))

    def seen(self, controller_id: str, now: float) -> None:
        """A poll: the controller is online and was seen now."""
        self.seen_many([(controller_id, now)])

    def seen_many(self, polls: Sequence[tuple[str, float]]) -> None:
        """Polls (controller, when), in one transaction."""
        with self._write() as db:
            db.executemany("UPDATE devices SET last_seen = max(last_seen, ?), online = 1 WHERE device_id = ?",
                           [(now, controller_id) for controller_id, now in polls])

    def silent_offline(self, before: float) -> list[str]:
        """Controllers online but not seen since `before` go offline (a poll brings them back)."""
        with self._write() as db:
            return [row[0] for row in db.execute(
                "UPDATE devices SET online = 0 WHERE online = 1 AND last_seen < ? AND device_id IN "
                "(SELECT controller_id FROM controllers) RETURNING device_id", (before,))]

    def set_attributes(self, controller_id: str, data: dict[str, str], mode: str,
                       now: float | None = None) -> dict[str, str]:
        """configData: merge (hawkBit's default), replace or remove the controller's attributes."""
        with self._write() as db:
            row = db.execute("SELECT attributes FROM controllers WHERE controller_id = ?", (controller_id,)).fetchone()
            current = json.loads(row[0]) if row else {}
            if mode == "replace":
                current = dict(data)
            elif mode == "remove":
                current = {k: v for k, v in current.items() if k not in data}
            else:
                current.update(data)
            db.execute("UPDATE controllers SET attributes = ?, attributes_at = ? WHERE controller_id = ?",
                       (json.dumps(current, sort_keys=True), time.time() if now is None else now, controller_id))
        return current

    # --- actions -------------------------------------------------------------------------------

    def action(self, controller_id: str, action_id: int) -> Action | None:
        return _action(self._db().execute(f"SELECT {_ACTION_COLUMNS} FROM ddi_actions WHERE id = ? AND "
                                          "controller_id = ?", (action_id, controller_id)).fetchone())

    def last_offered(self, controller_id: str, version: str) -> float | None:
        """When `version` was last offered to the controller (None: never)."""
        row = self._db().execute("SELECT max(created_at) FROM ddi_actions WHERE controller_id = ? AND version = ?",
                                 (controller_id, version)).fetchone()
        return row[0]

    def open_action(self, controller_id: str, version: str, source: str, now: float | None = None) -> Action:
        """A new action, unless one is open already (a concurrent poll made it): that one."""
        now = time.time() if now is None else now
        with self._write() as db:
            found = _action(db.execute(f"SELECT {_ACTION_COLUMNS} FROM ddi_actions WHERE controller_id = ? AND "
                                       "status IN (?, ?) ORDER BY id DESC", (controller_id, *OPEN)).fetchone())
            if found is not None:
                return found
            action_id = db.execute("INSERT INTO ddi_actions (controller_id, version, source, status, created_at, "
                                   "updated_at) VALUES (?, ?, ?, ?, ?, ?)",
                                   (controller_id, version, source, ActionStatus.RUNNING, now, now)).lastrowid
        return Action(action_id, controller_id, version, source, ActionStatus.RUNNING, False, now, now)

    def cancel(self, action: Action, now: float | None = None) -> None:
        """Ask the client to cancel (it learns by polling: _links.cancelAction)."""
        with self._write() as db:
            db.execute("UPDATE ddi_actions SET status = ?, updated_at = ? WHERE id = ? AND status = ?",
                       (ActionStatus.CANCELING, time.time() if now is None else now, action.id, ActionStatus.RUNNING))

    def record_feedback(self, action: Action, channel: str, execution: str, finished: str, details: list[str],
                        status: str, *, cancel_rejected: bool = False, now: float | None = None) -> bool:
        """Keep a feedback and move the action to `status`, if the action is still open; False if it
        was closed meanwhile (a concurrent feedback closed it)."""
        now = time.time() if now is None else now
        with self._write() as db:
            changed = db.execute("UPDATE ddi_actions SET status = ?, cancel_rejected = max(cancel_rejected, ?), "
                                 "updated_at = ? WHERE id = ? AND status IN (?, ?)",
                                 (status, int(cancel_rejected), now, action.id, *OPEN)).rowcount
            if changed:
                db.execute("INSERT INTO ddi_feedback (action_id, at, channel, execution, finished, details) "
                           "VALUES (?, ?, ?, ?, ?, ?)", (action.id, now, channel, execution, finished,
                                                         json.dumps(details)))
        return bool(changed)

    def messages(self, action_id: int, count: int) -> list[str]:
        """The newest `count` feedback messages of an action, newest first (hawkBit's order)."""
        rows = self._db().execute("SELECT execution, finished, details FROM ddi_feedback WHERE action_id = ? "
                                  "ORDER BY id DESC LIMIT ?", (action_id, min(count, HISTORY_LIMIT)))
        return [f"{r['execution']}/{r['finished']}: " + "; ".join(json.loads(r["details"])) for r in rows]
