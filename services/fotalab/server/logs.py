"""Structured logs: one JSON object a line, one line per request.

The request line is written by RequestLog, the outermost layer of the server's ASGI app
(gateway.py), once the app has handed its last byte to gunicorn, so it has the real status,
duration and body bytes; the same layer feeds the request metrics. Server and application
messages use the same JSON format (gunicorn's own access log is off).

Request lines do not go through `logging`, whose handler takes a lock and writes once per
line (docs/server.md, "Request logs", has what that cost): a request only formats its line
and queues it, and one writer thread per worker writes whatever is queued in a single write.
"""
from __future__ import annotations

import atexit
import json
import logging
import os
import sys
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from contextlib import suppress
from typing import TextIO

from gunicorn.glogging import Logger

from . import metrics

_pid = os.getpid()      # kept, not asked per request line: os.getpid() is a system call


def _remember_pid() -> None:
    global _pid
    _pid = os.getpid()


os.register_at_fork(after_in_child=_remember_pid)


def _timestamp(created: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created)) + f".{int(created % 1 * 1000):03d}Z"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {"ts": _timestamp(record.created), "level": record.levelname.lower(), "logger": record.name,
                 "msg": record.getMessage()}
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class LineWriter:
    """Writes queued lines from one thread, in batches every `interval_s`; started in the
    process that first writes (a thread does not survive gunicorn's fork). Queuing a line is
    a deque append: no lock and no wake-up per request."""

    def __init__(self, stream: TextIO | None = None, *, interval_s: float = 0.05) -> None:
        self._stream, self._interval_s = stream, interval_s         # None: sys.stdout when writing
        self._pending: deque[str] = deque()
        self._started = False
        self._start_lock = threading.Lock()
        os.register_at_fork(after_in_child=self._forked)

    def write(self, line: str) -> None:
        if not self._started:
            self._start()
        self._pending.append(line)

    def _forked(self) -> None:
        """In a new worker: no writer thread yet, and the parent's queued lines are its own."""
        self._pending, self._started, self._start_lock = deque(), False, threading.Lock()

    def _start(self) -> None:
        with self._start_lock:
            if self._started:
                return
            threading.Thread(target=self._run, name="log-writer", daemon=True).start()
            atexit.register(self.flush)
            self._started = True

    def _run(self) -> None:
        while True:
            time.sleep(self._interval_s)
            self.flush()

    def flush(self) -> None:
        """Write what is queued now (also at exit)."""
        lines = []
        with suppress(IndexError):
            while True:
                lines.append(self._pending.popleft())
        if lines:
            stream = self._stream or sys.stdout
            stream.write("\n".join(lines) + "\n")
            stream.flush()


def request_line(scope: Mapping, status: int, sent: int, seconds: float, now: float) -> str:
    headers = dict(scope.get("headers") or ())
    client = scope.get("client")
    return json.dumps({
        "ts": _timestamp(now), "level": "info", "logger": "access", "msg": "request",
        "method": scope.get("method"), "path": scope.get("path"),
        "query": scope.get("query_string", b"").decode("latin-1") or None, "status": status,
        "bytes": sent, "duration_ms": round(seconds * 1000, 2),
        "route": scope.get("fotalab.route", "unmatched"), "remote": client[0] if client else None,
        "user_agent": headers[b"user-agent"].decode("latin-1") if b"user-agent" in headers else None,
        "pid": _pid})


class RequestLog:
    """ASGI middleware: after each HTTP request, its JSON line and its metrics. The route
    label is what an inner layer put in scope["fotalab.route"] (downloads.py, or Flask's
    endpoint through a2wsgi's environ["asgi.scope"])."""

    writer = LineWriter()

    def __init__(self, app: Callable[..., Awaitable[None]]) -> None:
        self._app = app

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return await self._app(scope, receive, send)
        started = time.monotonic()
        status, sent = 500, 0       # 500: what gunicorn answers if the app fails before starting a response

        async def observed(message: dict) -> None:
            nonlocal status, sent
            if message["type"] == "http.response.body":
                sent += len(message.get("body", b""))
            elif message["type"] == "http.response.start":
                status = message["status"]
            await send(message)
        try:
            await self._app(scope, receive, observed)
        finally:
            seconds = time.monotonic() - started
            metrics.request_done(scope.get("fotalab.route", "unmatched"), scope["method"], status, seconds)
            self.writer.write(request_line(scope, status, sent, seconds, time.time()))


class JsonLogger(Logger):
    """gunicorn's logger with JSON output, shared with the app's `fotalab` loggers."""

    def setup(self, cfg) -> None:
        super().setup(cfg)
        formatter = JsonFormatter()
        for handler in self.error_log.handlers:
            handler.setFormatter(formatter)
        app_log = logging.getLogger("fotalab")
        app_log.handlers = list(self.error_log.handlers)
        app_log.setLevel(logging.INFO)
        app_log.propagate = False
