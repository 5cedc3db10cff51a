"""Artifact downloads: GET/HEAD /artifacts/<sha256> and the seed's /updates/<name>.

Answered by this ASGI layer on the worker's event loop, in front of Flask (gateway.py says
why): a download is the server's hot path, and here it costs no thread, no hand-off between
threads and no trip through Flask. Everything else goes to the next app.

Semantics (RFC 9110): a strong ETag equal to the SHA-256 and immutable caching; one byte
range answered with 206 and Content-Range; If-Range honoured by strong comparison (a weak
tag or a date never matches: the client gets the whole artifact rather than bytes spliced
onto another file); If-None-Match (weak comparison) gives 304; If-Match mismatch 412;
multi-range, malformed or unsatisfiable ranges 416 with Content-Range: bytes */length.

The body is read with pread(2) from the range start in CHUNK blocks, each handed to the
server once the previous one has left (gunicorn's flow control: a slow link holds at most
about two blocks of memory, never the file). A download stops as soon as its client is gone.
Each artifact's file is opened once per index and worker, with O_NOFOLLOW, and checked
against the index again, so a symlink planted after the index was loaded is never followed;
a file that shrinks under a download ends it short (gunicorn closes the connection, so the
client resumes instead of trusting it) and is checked again on the next request.
"""
from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import re
import stat
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass

from . import metrics
from .artifacts import SHA256, Artifact, LiveIndex, ReleaseIndex

log = logging.getLogger("fotalab.server.downloads")

CHUNK = 1024 * 1024
IMMUTABLE = b"public, max-age=31536000, immutable"
_RANGE = re.compile(r"bytes=(\d{0,18})-(\d{0,18})", re.ASCII | re.IGNORECASE)
Scope = MutableMapping[str, object]
Receive = Callable[[], Awaitable[dict]]
Send = Callable[[dict], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
Headers = list[tuple[bytes, bytes]]
# request headers the answer depends on, as ASGI names them (lowercase bytes)
_CONDITIONS = {b"range": "range", b"if-range": "if_range", b"if-match": "if_match", b"if-none-match": "if_none_match"}


class RangeNotSatisfiable(ValueError):
    """The Range header cannot be answered; the message says what to send instead."""


def parse_range(header: str, length: int) -> tuple[int, int]:
    """[start, stop) of a single `bytes=` range (RFC 9110 section 14.1.2)."""
    if "," in header:
        raise RangeNotSatisfiable("multiple ranges are not supported: ask for one range at a time")
    match = _RANGE.fullmatch(header.strip())
    if not match or match.group(1) == match.group(2) == "":
        raise RangeNotSatisfiable(f"malformed Range {header[:80]!r}: send 'bytes=START-END' or 'bytes=START-'")
    first, last = match.groups()
    if first == "":
        suffix = int(last)
        if suffix == 0 or length == 0:
            raise RangeNotSatisfiable("a suffix range of 0 bytes selects nothing")
        return max(0, length - suffix), length
    start = int(first)
    if last != "" and int(last) < start:
        raise RangeNotSatisfiable(f"range end {last} is before its start {first}")
    if start >= length:
        raise RangeNotSatisfiable(f"range start {start} is past the end: the artifact has {length} bytes")
    return start, length if last == "" else min(int(last) + 1, length)


def etag_listed(header: str, etag: str, *, weak_ok: bool) -> bool:
    """Whether an If-None-Match/If-Match list names our ETag (weak or strong comparison)."""
    for candidate in header.split(","):
        candidate = candidate.strip()
        if candidate == "*":
            return True
        if candidate.startswith("W/"):
            if not weak_ok:
                continue
            candidate = candidate[2:]
        if candidate == etag:
            return True
    return False


def _open_checked(artifact: Artifact) -> io.FileIO | None:
    """The artifact's file if it is still the regular file that was indexed."""
    try:
        fd = os.open(artifact.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode) or info.st_size != artifact.length:
        os.close(fd)
        return None
    return io.FileIO(fd, "rb")


class OpenFiles:
    """The checked, open files of one index's artifacts, shared by all their downloads (pread
    needs no file position): one open and check per artifact, not per request. A file is
    closed when the index it belongs to is replaced and its last download has let go of it."""

    def __init__(self) -> None:
        self._index: ReleaseIndex | None = None
        self._files: dict[str, io.FileIO] = {}

    def get(self, index: ReleaseIndex, artifact: Artifact) -> io.FileIO | None:
        if index is not self._index:
            self._index, self._files = index, {}
        file = self._files.get(artifact.sha256)
        if file is None and (file := _open_checked(artifact)) is not None:
            self._files[artifact.sha256] = file
        return file

    def forget(self, artifact: Artifact) -> None:
        """The file changed under a download: check it again on the next request."""
        self._files.pop(artifact.sha256, None)


@dataclass(frozen=True)
class Answer:
    """What to answer for one artifact request: the status and headers, then either `body`
    (errors, 304, HEAD) or the artifact's bytes [start, stop)."""
    status: int
    headers: Headers
    body: bytes = b""
    start: int = 0
    stop: int = 0


def error(status: int, message: str, headers: Headers = ()) -> Answer:
    body = json.dumps({"error": message, "status": status}).encode()
    return Answer(status, [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body)),
                           *headers], body)


def answer(method: str, conditions: dict[str, str], artifact: Artifact) -> Answer:
    """The response to GET/HEAD of `artifact` under the request's conditional and Range
    headers (RFC 9110 sections 13 and 14)."""
    etag = f'"{artifact.sha256}"'
    headers = [(b"etag", etag.encode()), (b"accept-ranges", b"bytes"), (b"cache-control", IMMUTABLE)]
    if_match = conditions.get("if_match")
    if if_match is not None and not etag_listed(if_match, etag, weak_ok=False):
        return error(412, f"If-Match does not name this artifact's ETag {etag}", headers)
    if_none_match = conditions.get("if_none_match")
    if if_none_match is not None and etag_listed(if_none_match, etag, weak_ok=True):
        return Answer(304, headers)
    start, stop, status = 0, artifact.length, 200
    range_header, if_range = conditions.get("range"), conditions.get("if_range")
    if range_header is not None and (if_range is None or if_range.strip() == etag):
        try:
            start, stop = parse_range(range_header, artifact.length)
        except RangeNotSatisfiable as exc:
            return error(416, f"range not satisfiable: {exc}",
                         [*headers, (b"content-range", b"bytes */%d" % artifact.length)])
        status = 206
        headers.append((b"content-range", b"bytes %d-%d/%d" % (start, stop - 1, artifact.length)))
    headers += [(b"content-type", b"application/octet-stream"), (b"content-length", b"%d" % (stop - start))]
    if method == "HEAD":
        return Answer(status, headers)
    return Answer(status, headers, start=start, stop=stop)


async def until_disconnected(receive: Receive) -> None:
    """Returns once the client has hung up (the request body, if any, is read and dropped)."""
    while (await receive())["type"] != "http.disconnect":
        pass


async def send_artifact(artifact: Artifact, file: io.FileIO, reply: Answer, receive: Receive,
                        send: Send) -> bool:
    """Send [reply.start, reply.stop) of the artifact, block by block, until done or the client
    is gone; False if the file came up short (it changed since it was checked)."""
    metrics.download_started(artifact.kind)
    gone: asyncio.Future | None = None          # the client hung up; watched from the second block on
    position, fd = reply.start, file.fileno()
    try:
        await send({"type": "http.response.start", "status": reply.status, "headers": reply.headers})
        while position < reply.stop:
            block = os.pread(fd, min(CHUNK, reply.stop - position), position)
            if not block:
                log.error("artifact %s shrank on disk during a download; ending it short", artifact.sha256)
                return False
            position += len(block)
            await send({"type": "http.response.body", "body": block, "more_body": position < reply.stop})
            if position < reply.stop:
                # a send to a closed connection returns at once without yielding: give the
                # watcher its turn, or a hang-up would go unseen until the file's end
                gone = gone or asyncio.ensure_future(until_disconnected(receive))
                await asyncio.sleep(0)
                if gone.done():
                    break
        return True
    finally:
        if gone is not None:
            gone.cancel()
        metrics.download_finished(artifact.kind, position - reply.start)


async def respond(send: Send, reply: Answer) -> None:
    await send({"type": "http.response.start", "status": reply.status, "headers": reply.headers})
    await send({"type": "http.response.body", "body": reply.body})


class Downloads:
    """ASGI middleware: artifact downloads here, every other request to `app`."""

    def __init__(self, app: ASGIApp, index: LiveIndex) -> None:
        self._app, self._index = app, index
        self._files = OpenFiles()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "") if scope["type"] == "http" else ""
        if path.startswith("/artifacts/"):
            scope["fotalab.route"] = "artifact"
            await self._artifact(scope, receive, send, path[len("/artifacts/"):], by_name=False)
        elif path.startswith("/updates/"):
            scope["fotalab.route"] = "update_by_name"
            await self._artifact(scope, receive, send, path[len("/updates/"):], by_name=True)
        else:
            await self._app(scope, receive, send)

    async def _artifact(self, scope: Scope, receive: Receive, send: Send, key: str, *, by_name: bool) -> None:
        method = scope["method"]
        if method not in ("GET", "HEAD"):
            return await respond(send, error(405, f"{method} is not allowed here: artifacts are read-only "
                                                  "(GET, HEAD)", [(b"allow", b"GET, HEAD")]))
        # a due reload hashes the whole store: never on the loop that carries every download
        index = await asyncio.to_thread(self._index.get) if self._index.due() else self._index.current
        if by_name:
            found = index.by_name.get(key)
            if found is None:
                return await respond(send, error(404, f"no artifact named {key[:80]!r}: list them at "
                                                      "/api/v1/releases"))
        else:
            if not SHA256.fullmatch(key):
                return await respond(send, error(400, f"{key[:80]!r} is not a SHA-256: artifacts are named by "
                                                      "64 lowercase hex digits"))
            found = index.by_sha.get(key)
            if found is None:
                return await respond(send, error(404, f"no artifact with SHA-256 {key}: list them at "
                                                      "/api/v1/releases"))
        conditions = {_CONDITIONS[name]: value.decode("latin-1") for name, value in scope["headers"]
                      if name in _CONDITIONS}
        reply = answer(method, conditions, found)
        if reply.stop == reply.start:
            return await respond(send, reply)
        file = self._files.get(index, found)
        if file is None:
            log.error("artifact %s changed on disk since it was indexed; not serving it", found.sha256)
            return await respond(send, error(503, "the release store changed under the server: rerun the "
                                                  "signer; the server reloads its index by itself"))
        if not await send_artifact(found, file, reply, receive, send):
            self._files.forget(found)
