"""Download metrics for the artifacts the front door serves: read from nginx's download log.

Behind the front door (fota-frontdoor) nginx sends the artifacts itself, so this server never
sees those downloads. nginx writes one JSON line per artifact request it served
(frontdoor/nginxconf.py: DOWNLOAD_FORMAT); one worker, elected by a lock as the MQTT ingester
is, follows the file and counts each line into the same metrics the server's own downloads
count (downloads started and bytes sent by artifact kind, requests and their durations under
the route "artifact"), so /metrics and anything built on it stay true whichever way a
download went.

Where it has read to lives beside the metrics (<data dir>/metrics, emptied when the server
starts): a worker that takes over after another died carries on from there, and a fresh server
starts at the log's end, as its counters start at zero (a worker killed between counting a
pass and saving its offset has that pass counted again by its successor). A log that shrank
(rotated or truncated) is read again from its start. Lines that are not the front door's are
skipped with a warning, never counted.
"""
from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

from . import metrics
from .artifacts import SHA256

log = logging.getLogger("fotalab.server.downloadlog")

ROUTE = "artifact"          # the route label the server's own artifact downloads carry (downloads.py)
PREFIX = "/artifacts/"
READ_LIMIT = 4 << 20        # bytes read per pass: a backlog is worked off in bounded steps


def count_line(line: bytes, kind_of: Callable[[str], str]) -> bool:
    """Count one log line into the metrics; False (and nothing counted) if it is not one of ours."""
    try:
        entry = json.loads(line)
        uri, method, status = entry["uri"], entry["method"], int(entry["status"])
        sent, seconds = int(entry["bytes"]), float(entry["seconds"])
    except (ValueError, KeyError, TypeError):
        return False
    if not isinstance(uri, str) or not uri.startswith(PREFIX) or not SHA256.fullmatch(uri[len(PREFIX):]):
        return False
    metrics.request_done(ROUTE, str(method), status, seconds)
    if method == "GET" and status in (200, 206):
        kind = kind_of(uri[len(PREFIX):])
        metrics.download_started(kind)
        metrics.download_finished(kind, sent)
    return True


def kinds(index_json: Path) -> Callable[[str], str]:
    """The artifact kind of a SHA-256, from the signer's index.json (re-read when it changes);
    "unknown" for one it does not list. No hashing: nginx serves what the store holds."""
    cache: dict[str, object] = {"stamp": None, "kinds": {}}

    def kind_of(sha256: str) -> str:
        try:
            info = index_json.stat()
            stamp = (info.st_ino, info.st_size, info.st_mtime_ns)
            if stamp != cache["stamp"]:
                artifacts = json.loads(index_json.read_bytes())["artifacts"]
                cache.update(stamp=stamp, kinds={sha: entry["kind"] for sha, entry in artifacts.items()})
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("cannot read artifact kinds from %s (%s)", index_json, exc)
        return cache["kinds"].get(sha256, "unknown")
    return kind_of


class DownloadLog:
    """Follows nginx's download log from a saved offset, counting whole lines only."""

    def __init__(self, path: Path, offset_file: Path, kind_of: Callable[[str], str]) -> None:
        self._path, self._offset_file, self._kind_of = path, offset_file, kind_of

    def _saved_offset(self) -> int:
        try:
            return int(self._offset_file.read_text())
        except (OSError, ValueError):       # a fresh server: count from now on, as its counters do
            try:
                return self._path.stat().st_size
            except OSError:
                return 0

    def _save(self, offset: int) -> None:
        partial = self._offset_file.with_suffix(".partial")
        partial.write_text(str(offset))
        os.replace(partial, self._offset_file)

    def read_new(self, offset: int) -> int:
        """Count the complete lines after `offset`; the offset after the last of them."""
        try:
            with self._path.open("rb") as file:
                size = os.fstat(file.fileno()).st_size
                if size < offset:
                    log.info("the front door's download log shrank (rotated?): reading it from its start")
                    offset = 0
                file.seek(offset)
                chunk = file.read(READ_LIMIT)
        except FileNotFoundError:
            return 0
        end = chunk.rfind(b"\n") + 1
        skipped = 0
        for line in chunk[:end].splitlines():
            if line.strip() and not count_line(line, self._kind_of):
                skipped += 1
        if skipped:
            log.warning("skipped %d lines of %s that are not front door download lines", skipped, self._path)
        return offset + end

    def follow(self, every_s: float = 1.0) -> None:
        """Never returns: reads what nginx added, once a second (nginx flushes its buffer as often)."""
        offset = self._saved_offset()
        while True:
            try:
                moved = self.read_new(offset)
                if moved != offset:
                    offset = moved
                    self._save(offset)
            except OSError as exc:
                log.warning("cannot read the front door's download log %s (%s); retrying", self._path, exc)
            time.sleep(every_s)
