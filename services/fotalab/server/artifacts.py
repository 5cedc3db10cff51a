"""Artifact serving: only files the signer indexed, by name or by content hash.

No path is ever built from request input: a request names an index entry, and the index
maps it to a file under the release store. Responses carry a strong ETag equal to the
SHA-256, answer a single byte range with 206, honour If-Range and If-None-Match, and reject
multi-range or unsatisfiable ranges with 416. The body is the open file positioned at the
range start, so gunicorn sends it with sendfile(2) instead of Python reading it.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from flask import Request, Response
from werkzeug.wsgi import wrap_file

CHUNK = 64 * 1024


@dataclass(frozen=True)
class Artifact:
    sha256: str
    length: int
    kind: str
    path: Path
    names: tuple[str, ...]


class ReleaseIndex:
    """The signer's index.json, loaded once: artifacts by hash and by name, releases."""

    def __init__(self, root: Path) -> None:
        self.root = root
        raw = json.loads((root / "index.json").read_text())
        self.key_id: str = raw["key_id"]
        self.releases: list[dict] = raw["releases"]
        self.by_sha: dict[str, Artifact] = {}
        self.by_name: dict[str, Artifact] = {}
        for sha, entry in raw["artifacts"].items():
            artifact = Artifact(sha, entry["length"], entry["kind"], root / "artifacts" / sha, tuple(entry["names"]))
            self.by_sha[sha] = artifact
            for name in artifact.names:
                self.by_name[name] = artifact

    def by_hash_name(self, name: str) -> Artifact | None:
        """The seed's /hash/<stem>.sha256: the artifact whose name has that stem (not a signature)."""
        stem = name.removesuffix(".sha256")
        if stem == name:
            return None
        return next((a for n, a in self.by_name.items()
                     if a.kind != "signature" and n.rsplit(".", 1)[0] == stem), None)

    def release(self, hardware: str, version: str) -> dict | None:
        return next((r for r in self.releases if r["hardware"] == hardware and r["version"] == version), None)

    def manifest_document(self, release: dict) -> bytes:
        return (self.root / release["manifest"]).read_bytes()


def _limited(path: Path, start: int, length: int) -> Iterator[bytes]:
    with path.open("rb") as source:
        source.seek(start)
        while length > 0:
            chunk = source.read(min(CHUNK, length))
            if not chunk:
                return
            length -= len(chunk)
            yield chunk


def send_artifact(request: Request, artifact: Artifact) -> Response:
    etag = artifact.sha256
    headers = {"ETag": f'"{etag}"', "Accept-Ranges": "bytes",
               "Cache-Control": "public, max-age=31536000, immutable"}
    if request.if_none_match.contains(etag):
        return Response(status=304, headers=headers)
    start, stop, status = 0, artifact.length, 200
    wants_range = "Range" in request.headers
    if_range = request.if_range
    range_applies = wants_range and (not request.headers.get("If-Range") or
                                     (if_range.etag == etag))
    if range_applies:
        spec = request.range
        bounds = spec.range_for_length(artifact.length) if spec and len(spec.ranges) == 1 else None
        if bounds is None:
            return Response(json.dumps({"error": "range not satisfiable: send one range 'bytes=START-END' "
                                                 f"within 0-{artifact.length - 1}"}),
                            status=416, mimetype="application/json",
                            headers={**headers, "Content-Range": f"bytes */{artifact.length}"})
        start, stop = bounds
        status = 206
        headers["Content-Range"] = f"bytes {start}-{stop - 1}/{artifact.length}"
    headers["Content-Length"] = str(stop - start)
    if "wsgi.file_wrapper" in request.environ and request.method != "HEAD":
        source = artifact.path.open("rb")
        source.seek(start)
        body = wrap_file(request.environ, source, CHUNK)
    else:
        body = _limited(artifact.path, start, stop - start) if request.method != "HEAD" else []
    return Response(body, status=status, headers=headers, mimetype="application/octet-stream",
                    direct_passthrough=True)
