"""The dashboard's view of the fleet: counts, one page of devices and rollouts shaped for the page.

At 10,000 devices the page never holds the fleet: the registry counts devices by state in SQL
(Registry.summary) and hands out one page of the table (Registry.device_page) for a View, the
page's filter, order and window, read from the query string. The first message of an event
stream, each batch of changes after it (live.py) and the polling fallback (GET /api/v1/dashboard)
all carry these shapes, so the page merges them the same way.
Rollouts are sent without their per-device runs: the page shows phase counts, and a fleet of
thousands would otherwise resend every device's run on each change of the rollout.
"""
from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from enum import StrEnum

from ..protocol import FAILED_STATES, Outcome, State
from .errors import InvalidRequest
from .registry import PAGE_ORDERS, Registry, RolloutRecord

SNAPSHOT_ROLLOUTS = 10          # the newest rollouts on the page
PAGE_SIZE = 50                  # rows of the fleet table unless the page asks for another size
MAX_PAGE_SIZE = 500
MAX_ID = 200                    # a device id or group longer than this is no filter of ours


class Sort(StrEnum):
    """The fleet table's orders: Registry.PAGE_ORDERS under the names the page uses."""
    DEVICE = "device"
    STATE = "state"
    VERSION = "version"
    LAST_SEEN = "last_seen"


SORT_COLUMNS = dict(zip(Sort, PAGE_ORDERS, strict=True))


@dataclass(frozen=True)
class View:
    """What one open page shows: the table's filter, order and window, and the device whose page
    is open (its row and events come whether or not it is in the window). Hashable: streams
    with the same view share one query and one encoded message per batch (live.py)."""
    offset: int = 0
    limit: int = PAGE_SIZE
    state: str | None = None
    group: str | None = None
    online: bool | None = None
    sort: Sort = Sort.DEVICE
    desc: bool = False
    device: str | None = None

    @classmethod
    def from_args(cls, args: Mapping[str, str]) -> View:
        """The view a query string asks for (offset, limit, state, group, online, sort, desc, device);
        InvalidRequest says which parameter is wrong and what it may be."""
        try:
            offset, limit = int(args.get("offset", 0)), int(args.get("limit", PAGE_SIZE))
        except ValueError:
            raise InvalidRequest("offset and limit are whole numbers of devices (e.g. offset=50&limit=50)") from None
        if offset < 0 or not 1 <= limit <= MAX_PAGE_SIZE:
            raise InvalidRequest(f"offset must be 0 or more and limit 1 to {MAX_PAGE_SIZE}, got {offset} and {limit}")
        state = args.get("state") or None             # any word a device reported (ingest checks none), or unknown
        sort = args.get("sort") or Sort.DEVICE
        if sort not in Sort.__members__.values():
            raise InvalidRequest(f"sort must be one of {', '.join(Sort)}, got {sort!r}")
        flags = {"online": args.get("online") or None, "desc": args.get("desc") or None}
        for name, value in flags.items():
            if value not in (None, "0", "1", "true", "false"):
                raise InvalidRequest(f"{name} is 1 or 0 (true or false), got {value!r}")
        online, desc = (None if v is None else v in ("1", "true") for v in flags.values())
        group, device = args.get("group") or None, args.get("device") or None
        if max(len(state or ""), len(group or ""), len(device or "")) > MAX_ID:
            raise InvalidRequest(f"state, group and device are at most {MAX_ID} characters")
        return cls(offset, limit, state, group, online, Sort(sort), bool(desc), device)

    def page(self, registry: Registry) -> tuple[list[dict], int]:
        """This view's rows (device_view shapes) and how many devices match its filter."""
        devices, total = registry.device_page(state=self.state, group=self.group, online=self.online,
                                              order=SORT_COLUMNS[self.sort], descending=self.desc,
                                              offset=self.offset, limit=self.limit)
        return [device_view(d) for d in devices], total

    def as_json(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None}


def last_result(device: dict) -> dict | None:
    """The outcome of the device's last update, from its last report: a failure with its reason,
    a rollback the bootloader remembers (until the next commit), or a commit."""
    report = device["report"] or {}
    if device["state"] in FAILED_STATES:          # the failed state itself is the outcome
        return {"outcome": device["state"], "version": report.get("target") or device["version"],
                "reason": device["reason"] or ""}
    rollback = report.get("last_rollback")
    if rollback:
        return {"outcome": Outcome.ROLLED_BACK, "version": rollback.get("version"),
                "reason": rollback.get("reason", "")}
    if device["state"] == State.COMMITTED:
        return {"outcome": Outcome.COMMITTED, "version": device["version"], "reason": ""}
    return None


def device_view(device: dict) -> dict:
    return {**device, "last_result": last_result(device)}


def rollout_view(record: RolloutRecord) -> dict:
    body = record.rollout.to_json()
    del body["devices"]
    return {**body, "device_count": len(record.rollout.devices), "created_at": record.created_at,
            "updated_at": record.updated_at}


# (registry path, rollout id, revision, created_at) -> rollout_view: a saved revision never changes
_VIEWS: dict[tuple[object, int, int, float], dict] = {}
_VIEWS_KEPT = 64
_VIEWS_LOCK = threading.Lock()                # request threads and the live poller share it


def rollout_views(registry: Registry, latest: int) -> list[dict]:
    """The newest rollouts' views, oldest first: a body is read and parsed only for a revision this
    process has not shaped yet (at 10,000 devices that parse was most of a snapshot's time)."""
    views = []
    for rollout_id, revision, created_at, updated_at in registry.rollout_heads(latest=latest):
        key = (registry.path, rollout_id, revision, created_at)
        with _VIEWS_LOCK:
            view = _VIEWS.get(key)
        if view is None:
            records = registry.rollout_records(rollout_id=rollout_id)
            if not records:                           # deleted since: nothing to show
                continue
            view = rollout_view(records[0])
            with _VIEWS_LOCK:
                if len(_VIEWS) >= _VIEWS_KEPT:
                    _VIEWS.pop(next(iter(_VIEWS)))
                if view["revision"] == revision:      # else saved since the heads were read: not kept
                    _VIEWS[key] = view
        views.append({**view, "updated_at": max(view["updated_at"], updated_at)})
    return views


def counts(registry: Registry) -> dict:
    """The fleet's counts for the summary line and the state filter, from one aggregate query."""
    by_state, online = registry.summary()
    return {"total": sum(by_state.values()), "online": sum(online.values()),
            "downloading": by_state.get(State.DOWNLOADING, 0), "by_state": by_state}


def page_message(view: View, rows: list[dict], total: int) -> dict:
    """The window the table shows: its rows' ids in order, and how many devices match the filter."""
    return {**view.as_json(), "total": total, "ids": [d["device_id"] for d in rows]}


def snapshot(registry: Registry, view: View | None = None) -> dict:
    """The counts, one page of devices (and the open device's row), the newest rollouts and
    their decisions, and the server's clock."""
    view = view or View()
    rows, total = view.page(registry)
    if view.device and all(d["device_id"] != view.device for d in rows):
        watched = registry.device(view.device)
        extra = [device_view(watched)] if watched else []
    else:
        extra = []
    rollouts = rollout_views(registry, SNAPSHOT_ROLLOUTS)
    return {"at": time.time(), "counts": counts(registry), "page": page_message(view, rows, total),
            "devices": rows + extra, "rollouts": rollouts,
            "decisions": [entry for r in rollouts for entry in registry.rollout_log(rollout_id=r["id"])]}
