"""Live changes for dashboards: one registry poller per worker process, fanned out to its
Server-Sent Events streams.

A stream holds one of the worker's Flask threads for as long as it is open, and the cost
must not grow with every open dashboard, so:
- one poller thread per worker process (running while the process has streams) reads what
  changed once per interval: devices seen since its cursor (last_seen moves on every state,
  status and event), events and rollout log entries after their ids, rollouts saved since
  its cursor; every stream of the process gets that same batch, encoded once, and none
  queries or encodes on its own;
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

from .fleetview import device_view, rollout_view
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


class ChangeFeed:
    """The registry's changes since the last read, as a batch in fleetview's shapes."""

    def __init__(self, registry: Registry) -> None:
        self._registry = registry
        self._events, self._log = registry.high_water()
        self._seen = self._saved = time.time() - START_SLACK_S
        self._at_seen: set[str] = set()          # devices already sent with last_seen == self._seen
        self._revisions: dict[int, int] = {}     # rollout id -> last revision sent

    def read(self) -> dict | None:
        registry = self._registry
        devices = registry.devices(seen_since=self._seen)
        fresh = [d for d in devices if d["last_seen"] > self._seen or d["device_id"] not in self._at_seen]
        if devices:
            self._seen = max(d["last_seen"] for d in devices)
            self._at_seen = {d["device_id"] for d in devices if d["last_seen"] == self._seen}
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
        return {"at": time.time(), "devices": [device_view(d) for d in fresh], "events": events,
                "rollouts": [rollout_view(r) for r in changed], "decisions": decisions}


class Subscription:
    """One stream's queue of encoded batches; `ended` says why it must stop ("" while it may go on)."""

    def __init__(self) -> None:
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

    def subscribe(self) -> Subscription | None:
        """A new subscription, or None when this process has `limit` streams (or is stopping)."""
        with self._lock:
            if self._closed.is_set() or len(self._subscribers) >= self.limit:
                return None
            subscription = Subscription()
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
            if batch:
                message = sse("changes", batch)
                with self._lock:
                    for subscription in self._subscribers:
                        subscription.offer(message)


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
