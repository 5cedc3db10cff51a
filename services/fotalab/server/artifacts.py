"""The release index: what the server may serve, loaded from the signer's index.json.

Only files listed there are served, and only after a check at load time: a regular file
(not a symlink) under the store's artifacts/ directory, of the indexed length and SHA-256,
so the strong ETag (the SHA-256) is true. Requests name index entries; the index maps them
to paths, so no path is ever built from request input.
"""
from __future__ import annotations

import hashlib
import json
import logging
import re
import stat
import threading
import time
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("fotalab.server.artifacts")

SHA256 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class Artifact:
    sha256: str
    length: int
    kind: str
    path: Path
    names: tuple[str, ...]
    sha1: str = ""          # for DDI clients (hawkBit's hashes): computed once, with the SHA-256 check
    md5: str = ""

    @property
    def url(self) -> str:
        return f"/artifacts/{self.sha256}"


class ReleaseIndex:
    """One load of the signer's index.json: artifacts by hash and by name, releases, manifests."""

    def __init__(self, root: Path) -> None:
        self.root = root
        raw = json.loads((root / "index.json").read_text())
        self.key_id: str = raw["key_id"]
        self.skipped: list[str] = []
        self.by_sha: dict[str, Artifact] = {}
        self.by_name: dict[str, Artifact] = {}
        for sha, entry in raw["artifacts"].items():
            problem, sha1, md5 = _check_file(root, sha, entry)
            if problem:
                log.warning("not serving indexed artifact %s: %s", sha[:64], problem)
                self.skipped.append(f"{sha[:64]}: {problem}")
                continue
            artifact = Artifact(sha, entry["length"], entry["kind"], root / "artifacts" / sha, tuple(entry["names"]),
                                sha1, md5)
            self.by_sha[sha] = artifact
            for name in artifact.names:
                self.by_name[name] = artifact
        self.releases: list[dict] = raw["releases"]
        self.hardware: frozenset[str] = frozenset(r["hardware"] for r in self.releases)
        self.manifests: dict[tuple[str, str], str] = {
            (r["hardware"], r["version"]): (root / r["manifest"]).read_text() for r in self.releases}

    def by_hash_name(self, name: str) -> Artifact | None:
        """The seed's /hash/<stem>.sha256: the artifact whose name has that stem (not a signature)."""
        stem = name.removesuffix(".sha256")
        if stem == name:
            return None
        return next((a for n, a in self.by_name.items()
                     if a.kind != "signature" and n.rsplit(".", 1)[0] == stem), None)

    def release(self, hardware: str, version: str) -> dict | None:
        return next((r for r in self.releases if r["hardware"] == hardware and r["version"] == version), None)

    def versions(self, hardware: str | None = None) -> list[str]:
        return sorted({r["version"] for r in self.releases if hardware in (None, r["hardware"])})


def _check_file(root: Path, sha: str, entry: dict) -> tuple[str | None, str, str]:
    """(problem or None, SHA-1, MD5): the file read once for all three digests."""
    if not SHA256.fullmatch(sha):
        return "its key is not a lowercase hex SHA-256", "", ""
    path = root / "artifacts" / sha
    try:
        info = path.lstat()
    except OSError as exc:
        return f"cannot stat {path}: {exc.strerror}", "", ""
    if not stat.S_ISREG(info.st_mode):
        return f"{path} is not a regular file (symlinks are never served)", "", ""
    if info.st_size != entry["length"]:
        return f"{path} has {info.st_size} bytes, the index says {entry['length']}", "", ""
    digests = [hashlib.sha256(), hashlib.sha1(usedforsecurity=False), hashlib.md5(usedforsecurity=False)]
    with path.open("rb") as source:
        while block := source.read(1 << 20):
            for digest in digests:
                digest.update(block)
    if digests[0].hexdigest() != sha:
        return f"{path} does not hash to its name", "", ""
    return None, digests[1].hexdigest(), digests[2].hexdigest()


class LiveIndex:
    """The current ReleaseIndex, reloaded when the signer rewrites index.json.

    `docker compose up` reruns the signer without recreating a running server, so the server
    notices a new index by itself (checked at most once a second) instead of serving a stale one.
    """

    def __init__(self, root: Path, *, check_every_s: float = 1.0) -> None:
        self.root = root
        self._check_every = check_every_s
        self._lock = threading.Lock()
        self._stamp = self._index_stamp()
        self._index = ReleaseIndex(root)
        self._checked = time.monotonic()

    def _index_stamp(self) -> tuple[int, int, int]:
        info = (self.root / "index.json").stat()
        return info.st_ino, info.st_size, info.st_mtime_ns

    @property
    def current(self) -> ReleaseIndex:
        """The index as last loaded, without checking for a new one."""
        return self._index

    def due(self) -> bool:
        """Whether get() would look for a new index.json (and may hash a whole store)."""
        return time.monotonic() - self._checked >= self._check_every

    def get(self) -> ReleaseIndex:
        if not self.due():
            return self._index
        with self._lock:
            self._checked = time.monotonic()
            try:
                stamp = self._index_stamp()
                if stamp != self._stamp:
                    self._index, self._stamp = ReleaseIndex(self.root), stamp
                    log.info("release index reloaded: %d releases", len(self._index.releases))
            except (OSError, ValueError, KeyError) as exc:
                log.warning("keeping the previous release index: the new one cannot be loaded (%s)", exc)
        return self._index
