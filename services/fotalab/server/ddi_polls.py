"""DDI polls (GET /{tenant}/controller/v1/{controllerId}) answered in front of Flask.

A poll is the DDI API's hot path: every controller asks once per polling interval whether
there is anything to do, and the answer is almost always "no". Through a2wsgi and Flask a poll
cost about twice the CPU of the poll itself (profiled in Flask's test client: the handler was
under half of Flask's time; the rest the WSGI environ, the request, routing, the response), so
this ASGI layer calls ddi.poll, the very function Flask's route calls, and answers with its
JSON, or with hawkBit's error body.

Most polls only read (one indexed SQLite query, about as long as a download block's pread):
those run on the event loop, with no thread hand-off, which on a busy machine is what a poll's
latency waits for. The loop's reads use connections that wait at most READ_WAIT_S for SQLite
(a WAL reader rarely has to); a poll that would wait longer runs in the pool instead. A poll
that must write (a new or cancelled action) would wait for SQLite's write lock, never on the
loop that carries every download: it runs again, writing, in a small pool of this layer's
threads. That a controller polled (its last_seen, due every ddi_seen_s) is not worth a wait: it
is collected and written by the pool in one transaction every FLUSH_S, so a thousand
controllers cost this worker a few writes a second, not a hundred. Every other DDI resource
goes to Flask (ddi.py).
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import sqlite3
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

from .ddi import WriteNeeded, exception_info, poll
from .ddi_store import DdiStore
from .downloads import ASGIApp, Receive, Scope, Send
from .errors import ServerError
from .registry import Registry
from .services import Services

log = logging.getLogger("fotalab.server.ddi")
POLL = re.compile(r"/([^/]+)/controller/v1/([^/]+)")
ROUTE = "ddi.controller_base"          # the route label of the request log and metrics (as Flask's would be)
JSON = [(b"content-type", b"application/json")]
FLUSH_S = 0.5                          # how long a poll's last_seen waits to be written with others
READ_WAIT_S = 0.02                     # the most a read on the event loop may wait for SQLite


class DdiPolls:
    """ASGI middleware: DDI polls here, every other request to `app`."""

    def __init__(self, app: ASGIApp, found: Services, *, threads: int = 4) -> None:
        self._app, self._services, self._threads = app, found, threads
        # the same services, but a registry whose connections give up quickly: for reads on the loop
        self._on_loop = replace(found, registry=Registry(found.registry.path, busy_timeout_s=READ_WAIT_S))
        self._pool: ThreadPoolExecutor | None = None
        self._pid = 0
        self._seen: dict[str, float] = {}      # polls whose last_seen is to be written (on the loop only)

    def _note_seen(self, controller_id: str, now: float) -> None:
        if not self._seen:
            asyncio.get_running_loop().call_later(FLUSH_S, self._flush)
        self._seen[controller_id] = now

    def _flush(self) -> None:
        polls, self._seen = list(self._seen.items()), {}
        self._executor().submit(self._write_seen, polls)

    def _write_seen(self, polls: list[tuple[str, float]]) -> None:
        try:
            DdiStore(self._services.registry).seen_many(polls)
        except Exception:                      # the next poll of each notes it again
            log.exception("could not record %d DDI polls", len(polls))

    def _executor(self) -> ThreadPoolExecutor:
        """This process's pool (the app is built in gunicorn's master, before the workers fork)."""
        if self._pool is None or self._pid != os.getpid():
            self._pool, self._pid = ThreadPoolExecutor(self._threads, thread_name_prefix="ddi-poll"), os.getpid()
        return self._pool

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        match = POLL.fullmatch(scope.get("path", "")) if scope["type"] == "http" else None
        if match is None or scope["method"] != "GET":
            return await self._app(scope, receive, send)
        scope["fotalab.route"] = ROUTE
        headers = dict(scope["headers"])
        authorization = headers.get(b"authorization", b"").decode("latin-1")
        server = scope.get("server") or ("localhost", 80)
        host = headers.get(b"host", b"").decode("latin-1") or f"{server[0]}:{server[1]}"
        host_url = f"{scope.get('scheme', 'http')}://{host}"
        status, extra = 200, []
        arguments = (match.group(1), match.group(2), authorization, host_url)
        try:
            try:
                body = poll(self._on_loop, *arguments, writes=False, seen=self._note_seen)
            except (WriteNeeded, sqlite3.OperationalError):
                body = await asyncio.get_running_loop().run_in_executor(self._executor(), poll, self._services,
                                                                        *arguments)
        except ServerError as exc:
            status, body = exc.status, exception_info(exc)
            extra = [(name.lower().encode(), value.encode()) for name, value in exc.headers().items()]
        except Exception:
            log.exception("unhandled error in a DDI poll of %s", match.group(2)[:128])
            status, body = 500, {"exceptionClass": "fotalab.server.InternalError", "errorCode": "fotalab.internal",
                                 "message": "internal error: the server log has the details"}
        payload = json.dumps(body).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [*JSON, (b"content-length", b"%d" % len(payload)), *extra]})
        await send({"type": "http.response.body", "body": payload})
