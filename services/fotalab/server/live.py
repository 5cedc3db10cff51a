"""Live changes for dashboards: one registry poller per worker process, fanned out to its
Server-Sent Events streams.

A stream holds one of the worker's Flask threads for as long as it is open, and the cost
must not grow with every open dashboard, so:
- one poller thread per worker process (running while the process has streams) reads what
  changed once per interval: the ids of devices seen since its cursor (last_seen moves on
  every state, status and event), events and rollout log entries after their ids, rollouts
  saved since its cursor, and the fleet's counts (one aggregate query); then, once per
  distinct view (a page's filter, order and window: fleetview.View) and not per stream, that
  view's page when a device changed, encoded once for every stream showing it. A stream
  carries its page's changed rows and the counts, never the fleet: at 10,000 devices a
  rollout changes thousands of devices a minute, and a page shows 50;
- a stream starts with a full snapshot (fleetview.snapshot), taken after it subscribed, so
  it misses nothing (a change may arrive twice; the page merges by key);
- streams are capped per worker (config.stream_limit, at most half its threads), so
  dashboards never take every thread from the API; beyond it the API answers 503;
- a stream ends after `stream_s` (the browser's EventSource reconnects after `retry`, and
  may land on another worker), when its client lags too far behind, and at once when the
  worker stops (close_all, called from gunicorn_app's signal handlers): a shutdown or worker
  restart never waits for open streams; and at once when its client disconnects (Hangup).
"""
from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
import weakref
from collections import deque
from collections.abc import Iterator
from typing import NamedTuple

from .fleetview import View, counts, device_view, page_message, rollout_view
from .registry import Registry

log = logging.getLogger("fotalab.server.live")
RETRY_MS = 3000              # EventSource reconnects this long after a stream ends
KEEPALIVE_S = 15.0           # a comment line this often: proxies keep the connection, dead clients show up
MAX_PENDING = 64             # batches a stream may fall behind before it is ended (it reconnects to a snapshot)
START_SLACK_S = 10.0         # a new feed rereads this far back: a write waiting for the lock then is not missed
EVENTS_PER_POLL = 500
HANGUP = "fotalab.hangup"       # ASGI scope key of a stream request's Hangup (gateway.StreamWatch)
_HUBS: weakref.WeakSet[LiveHub] = weakref.WeakSet()


def sse(kind: str, data: object, *, retry_ms: int | None = None) -> bytes:
    """One Server-Sent Events message (JSON is one line, so one data: field)."""
    retry = f"retry: {retry_ms}\n" if retry_ms is not None else ""
    return f"{retry}event: {kind}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


class Batch(NamedTuple):
    """What changed in the registry since the previous read, read once per worker for every stream."""
    at: float
    seen: frozenset[str]            # devices seen since (a state, status or event of theirs arrived)
    counts: dict | None             # fleetview.counts, when a device changed
    events: list[dict]
    rollouts: list[dict]
    decisions: list[dict]


class ChangeFeed:
    """The registry's changes since the last read (one Batch), then each view's message from it:
    the counts, the rows of its page that changed (or came onto it), its window's ids in order
    and the events of those rows and of its open device (the rest only as event_kinds, which
    tell the page's charts to reload), so a page of 50 gets 50 rows at most, whatever the fleet."""

    def __init__(self, registry: Registry) -> None:
        self._registry = registry
        self._events, self._log = registry.high_water()
        self._seen = self._saved = time.time() - START_SLACK_S
        self._at_seen: set[str] = set()          # devices already sent with last_seen == self._seen
        self._revisions: dict[int, int] = {}     # rollout id -> last revision sent
        self._pages: dict[View, dict[str, dict]] = {}    # view -> its rows as last sent, by device id

    def read(self) -> Batch | None:
        registry = self._registry
        seen = registry.seen_since(self._seen)
        fresh = frozenset(d for d, at in seen if at > self._seen or d not in self._at_seen)
        if seen:
            self._seen = max(at for _, at in seen)
            self._at_seen = {d for d, at in seen if at == self._seen}
        events = registry.events(after=self._events, limit=EVENTS_PER_POLL)
        self._events = events[-1]["id"] if events else self._events
        decisions = registry.rollout_log(after=self._log, limit=EVENTS_PER_POLL)
        self._log = decisions[-1]["id"] if decisions else self._log
        records = registry.rollout_records(updated_since=self._saved)
        changed = [r for r in records if self._revisions.get(r.rollout.id) != r.rollout.revision]
        self._saved = max((r.updated_at for r in records), default=self._saved)
        self._revisions.update((r.rollout.id, r.rollout.revision) for r in changed)
        if not (fresh or events or decisions or changed):
            return None
        return Batch(time.time(), fresh, counts(registry) if fresh else None, events,
                     [rollout_view(r) for r in changed], decisions)

    def message(self, batch: Batch, view: View) -> dict:
        """`batch` as the streams showing `view` need it. The page is read again only when a
        device changed (or the view is new here); rows are sent when they differ from the rows
        last sent for this view, so a stream that subscribed since gets them at worst twice."""
        sent = self._pages.get(view)
        message = {"at": batch.at, "event_kinds": sorted({e["event"] for e in batch.events}),
                   "rollouts": batch.rollouts, "decisions": batch.decisions, "devices": []}
        if batch.counts is not None:
            message["counts"] = batch.counts
        if sent is None or batch.seen:
            rows, total = view.page(self._registry)
            message["page"] = page_message(view, rows, total)
            message["devices"] = [d for d in rows if (sent or {}).get(d["device_id"]) != d]
            self._pages[view] = {d["device_id"]: d for d in rows}
            if view.device in batch.seen and view.device not in self._pages[view]:
                watched = self._registry.device(view.device)
                message["devices"] += [device_view(watched)] if watched else []
        shown = self._pages[view].keys() | {view.device}
        message["events"] = [e for e in batch.events if e["device_id"] in shown]     # its rows' and open device's
        return message

    def keep(self, views: set[View]) -> None:
        """Forget the pages of views no stream shows any more."""
        for view in set(self._pages) - views:
            del self._pages[view]


class Subscription:
    """One stream's queue of encoded batches for its view; `ended` says why it must stop ("" while it may go on)."""

    def __init__(self, view: View | None = None) -> None:
        self.view = view or View()
        self._ready = threading.Condition()
        self._pending: deque[bytes] = deque()
        self.ended = ""

    def offer(self, batch: bytes) -> None:
        with self._ready:
            if len(self._pending) >= MAX_PENDING:
                self.ended = f"the client fell {MAX_PENDING} batches behind"
            else:
                self._pending.append(batch)
            self._ready.notify()

    def end(self, why: str) -> None:
        with self._ready:
            self.ended = why
            self._ready.notify()

    def next(self, timeout: float) -> bytes | None:
        """The next batch, or None after `timeout` or once ended."""
        with self._ready:
            self._ready.wait_for(lambda: self._pending or self.ended, timeout)
            return self._pending.popleft() if self._pending and not self.ended else None


class Hangup:
    """A stream's client went away: set from the event loop (gateway.StreamWatch), it ends the
    subscription tied to it at once, so the stream's thread and place are free again without
    waiting for its next write (which a2wsgi would drop without an error anyway)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._subscription: Subscription | None = None
        self._set = False

    def set(self) -> None:
        with self._lock:
            self._set = True
            if self._subscription is not None:
                self._subscription.end("the client went away")

    def tie(self, subscription: Subscription) -> None:
        with self._lock:
            self._subscription = subscription
            if self._set:
                subscription.end("the client went away")


class LiveHub:
    """This process's streams and the one poller that feeds them."""

    def __init__(self, registry: Registry, *, limit: int, poll_s: float) -> None:
        self._registry, self.limit, self._poll_s = registry, limit, poll_s
        self._lock = threading.Lock()
        self._subscribers: set[Subscription] = set()
        self._poller: threading.Thread | None = None
        self._closed = threading.Event()
        _HUBS.add(self)

    def subscribe(self, view: View | None = None) -> Subscription | None:
        """A new subscription to `view`'s changes, or None when this process has `limit` streams
        (or is stopping)."""
        with self._lock:
            if self._closed.is_set() or len(self._subscribers) >= self.limit:
                return None
            subscription = Subscription(view or View())
            self._subscribers.add(subscription)
            if self._poller is None:
                self._poller = threading.Thread(target=self._poll, args=(ChangeFeed(self._registry),),
                                                name="live-poller", daemon=True)
                self._poller.start()
            return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        with self._lock:
            self._subscribers.discard(subscription)

    @property
    def closing(self) -> bool:
        return self._closed.is_set()

    def streams(self) -> int:
        with self._lock:
            return len(self._subscribers)

    def close(self) -> None:
        """End every stream now and take no more (the worker is stopping)."""
        self._closed.set()
        with self._lock:
            for subscription in self._subscribers:
                subscription.end("the server is stopping")

    def _poll(self, feed: ChangeFeed) -> None:
        while not self._closed.wait(self._poll_s):
            with self._lock:
                if not self._subscribers:
                    self._poller = None          # the next subscriber starts a fresh poller
                    return
            try:
                batch = feed.read()
            except sqlite3.Error as exc:
                log.warning("reading registry changes for the dashboards failed (%s); retrying", exc)
                continue
            if not batch:
                continue
            with self._lock:
                views = {subscription.view for subscription in self._subscribers}
            try:
                messages = {view: sse("changes", feed.message(batch, view)) for view in views}
            except sqlite3.Error as exc:
                log.warning("reading the dashboards' pages failed (%s); their streams start again", exc)
                messages = {}
            feed.keep(set(messages))
            with self._lock:
                for subscription in self._subscribers:
                    if subscription.view in messages:
                        subscription.offer(messages[subscription.view])
                    elif subscription.view in views:        # a batch it missed: a fresh snapshot instead
                        subscription.end("its page could not be read")


def close_all() -> None:
    """Close every hub of this process (the gunicorn worker is stopping)."""
    for hub in list(_HUBS):
        hub.close()


class Stream:
    """The WSGI body of one stream: the snapshot, then batches and keep-alives until it ends.
    close() gives its place back even if the body was never iterated (client gone at once)."""

    def __init__(self, hub: LiveHub, subscription: Subscription, snapshot: dict, *, stream_s: float,
                 keepalive_s: float = KEEPALIVE_S) -> None:
        self._hub, self._subscription, self._snapshot = hub, subscription, snapshot
        self._stream_s, self._keepalive_s = stream_s, keepalive_s

    def __iter__(self) -> Iterator[bytes]:
        yield sse("snapshot", self._snapshot, retry_ms=RETRY_MS)
        deadline = time.monotonic() + self._stream_s
        while (left := deadline - time.monotonic()) > 0:
            batch = self._subscription.next(min(self._keepalive_s, left))
            if self._subscription.ended:
                return
            if batch:
                yield batch
            elif time.monotonic() < deadline:
                yield b": keep-alive\n\n"

    def close(self) -> None:
        self._hub.unsubscribe(self._subscription)
