"""Artifact downloads: GET/HEAD /artifacts/<sha256> and the seed's /updates/<name>.

Answered by this thin WSGI layer in front of Flask, because downloads are the server's hot
path: measured on loopback (2 cores, 64 clients, 1 MiB), going through Flask cost about
130 us more CPU per request (450 against 320 us of user time; gunicorn alone needs about
160 us). Everything else goes to the Flask app.

Semantics (RFC 9110): a strong ETag equal to the SHA-256 and immutable caching; one byte
range answered with 206 and Content-Range; If-Range honoured by strong comparison (a weak
tag or a date never matches: the client gets the whole artifact rather than bytes spliced
onto another file); If-None-Match (weak comparison) gives 304; If-Match mismatch 412;
multi-range, malformed or unsatisfiable ranges 416 with Content-Range: bytes */length.

The body is the open file positioned at the range start: gunicorn sends it with sendfile(2)
from that offset (Werkzeug's own range response reads and discards up to the start, about
3x slower, DESIGN.md section 5), so no request reads a file into memory. The file is opened
with O_NOFOLLOW and checked against the index again, so a symlink planted after the index
was loaded is never followed.
"""
from __future__ import annotations

import io
import json
import logging
import os
import re
import stat
from typing import Callable, Iterable, Iterator

from . import metrics
from .artifacts import SHA256, Artifact, LiveIndex

log = logging.getLogger("fotalab.server.downloads")

CHUNK = 64 * 1024
IMMUTABLE = "public, max-age=31536000, immutable"
_RANGE = re.compile(r"bytes=(\d{0,18})-(\d{0,18})", re.ASCII | re.IGNORECASE)
_REASONS = {200: "200 OK", 206: "206 Partial Content", 304: "304 Not Modified", 400: "400 Bad Request",
            404: "404 Not Found", 405: "405 Method Not Allowed", 412: "412 Precondition Failed",
            416: "416 Range Not Satisfiable", 503: "503 Service Unavailable"}
StartResponse = Callable[..., object]


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


class Body(io.FileIO):
    """The artifact file handed to gunicorn, limited to [start, stop).

    It tracks how far it was sent: socket.sendfile() leaves the file position at the end of
    what it sent (documented, also on error), and the non-sendfile path reads it, so `sent`
    is what the client was given. Closing it (gunicorn does after the response) reports that.
    """

    def __init__(self, fd: int, start: int, stop: int, on_close: Callable[[int], None]) -> None:
        super().__init__(fd, "rb", closefd=True)
        self._start, self._stop, self._high, self._on_close = start, stop, start, on_close
        self.seek(start)

    @property
    def sent(self) -> int:
        return min(self._high, self._stop) - self._start

    def seek(self, pos: int, whence: int = os.SEEK_SET) -> int:
        position = super().seek(pos, whence)
        self._high = max(self._high, position)
        return position

    def read(self, size: int | None = -1) -> bytes:
        remaining = max(0, self._stop - self.tell())
        data = super().read(remaining if size is None or size < 0 else min(size, remaining))
        self._high = max(self._high, self.tell())
        return data

    def close(self) -> None:
        if not self.closed:
            on_close, self._on_close = self._on_close, None
            super().close()
            if on_close:
                on_close(self.sent)


class _Blocks:
    """Without a server file wrapper (e.g. Werkzeug's test client): the same body, in blocks."""

    def __init__(self, body: Body, block: int) -> None:
        self._body, self._block = body, block

    def __iter__(self) -> Iterator[bytes]:
        while data := self._body.read(self._block):
            yield data

    def close(self) -> None:
        self._body.close()


def _open_checked(artifact: Artifact) -> int | None:
    """A descriptor of the artifact's file if it is still the regular file that was indexed."""
    try:
        fd = os.open(artifact.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode) or info.st_size != artifact.length:
        os.close(fd)
        return None
    return fd


class Downloads:
    """WSGI middleware: artifact downloads here, every other request to `app`."""

    def __init__(self, app: Callable, index: LiveIndex) -> None:
        self._app, self._index = app, index

    def __call__(self, environ: dict, start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path.startswith("/artifacts/"):
            environ["fotalab.route"] = "artifact"
            return self._artifact(environ, start_response, path[len("/artifacts/"):], by_name=False)
        if path.startswith("/updates/"):
            environ["fotalab.route"] = "update_by_name"
            return self._artifact(environ, start_response, path[len("/updates/"):], by_name=True)
        return self._app(environ, start_response)

    def _artifact(self, environ: dict, start_response: StartResponse, key: str, *, by_name: bool) -> Iterable[bytes]:
        method = environ.get("REQUEST_METHOD", "GET")
        if method not in ("GET", "HEAD"):
            return _error(start_response, 405, f"{method} is not allowed here: artifacts are read-only (GET, HEAD)",
                          [("Allow", "GET, HEAD")])
        index = self._index.get()
        if by_name:
            found = index.by_name.get(key)
            if found is None:
                return _error(start_response, 404, f"no artifact named {key[:80]!r}: list them at /api/v1/releases")
        else:
            if not SHA256.fullmatch(key):
                return _error(start_response, 400, f"{key[:80]!r} is not a SHA-256: artifacts are named by "
                                                    "64 lowercase hex digits")
            found = index.by_sha.get(key)
            if found is None:
                return _error(start_response, 404, f"no artifact with SHA-256 {key}: list them at /api/v1/releases")
        return send_artifact(environ, start_response, found)


def _error(start_response: StartResponse, status: int, message: str,
           headers: list[tuple[str, str]] = ()) -> list[bytes]:
    body = json.dumps({"error": message, "status": status}).encode()
    start_response(_REASONS[status], [("Content-Type", "application/json"), ("Content-Length", str(len(body))),
                                      *headers])
    return [body]


def send_artifact(environ: dict, start_response: StartResponse, artifact: Artifact) -> Iterable[bytes]:
    etag = f'"{artifact.sha256}"'
    headers = [("ETag", etag), ("Accept-Ranges", "bytes"), ("Cache-Control", IMMUTABLE)]
    if_match = environ.get("HTTP_IF_MATCH")
    if if_match is not None and not etag_listed(if_match, etag, weak_ok=False):
        return _error(start_response, 412, f"If-Match does not name this artifact's ETag {etag}", headers)
    if_none_match = environ.get("HTTP_IF_NONE_MATCH")
    if if_none_match is not None and etag_listed(if_none_match, etag, weak_ok=True):
        start_response(_REASONS[304], headers)
        return []
    start, stop, status = 0, artifact.length, 200
    range_header, if_range = environ.get("HTTP_RANGE"), environ.get("HTTP_IF_RANGE")
    if range_header is not None and (if_range is None or if_range.strip() == etag):
        try:
            start, stop = parse_range(range_header, artifact.length)
        except RangeNotSatisfiable as exc:
            return _error(start_response, 416, f"range not satisfiable: {exc}",
                          [*headers, ("Content-Range", f"bytes */{artifact.length}")])
        status = 206
        headers.append(("Content-Range", f"bytes {start}-{stop - 1}/{artifact.length}"))
    headers += [("Content-Type", "application/octet-stream"), ("Content-Length", str(stop - start))]
    if environ.get("REQUEST_METHOD") == "HEAD":
        start_response(_REASONS[status], headers)
        return []
    fd = _open_checked(artifact)
    if fd is None:
        log.error("artifact %s changed on disk since it was indexed; not serving it", artifact.sha256)
        return _error(start_response, 503, "the release store changed under the server: rerun the signer; "
                                           "the server reloads its index by itself")
    metrics.download_started(artifact.kind)
    body = Body(fd, start, stop, lambda sent: metrics.download_finished(artifact.kind, sent))
    environ["fotalab.body"] = body
    start_response(_REASONS[status], headers)
    wrapper = environ.get("wsgi.file_wrapper")
    return wrapper(body, CHUNK) if wrapper else _Blocks(body, CHUNK)
