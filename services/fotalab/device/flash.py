"""The one storage layer for every persistent mutation of a device's flash.

Discipline: a whole-file update writes a temporary file, fsyncs it, renames it over the old
one and fsyncs the directory; an in-place or appending write is followed by fsync before
anything depends on it. Every such step is one numbered *operation*, so tests can cut power
at any of them (MCUboot's simulator method):

    stop@N   the process dies just before operation N (like SIGKILL: the OS keeps what it got)
    tear@N   operation N, if it is a write, persists only the first half of its data (trailing
             zero padding does not count: a torn record must lose record bytes), then dies
    lose@N   write-back mode, then the process dies before operation N: every write not yet
             fsynced was held in this process and is lost, as after a real power cut

Write-back mode can also run on its own (no fault): `docker kill` keeps the host's page
cache, so only by holding unsynced writes in the process does a kill lose what a power cut
would. Reading a file that has unsynced writes pending is a discipline bug and raises.
"""
from __future__ import annotations

import os
import signal
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .errors import FlashDisciplineError

TMP_SUFFIX = ".tmp"
FAULT_MODES = ("stop", "tear", "lose")


@dataclass(frozen=True)
class FaultPlan:
    mode: str
    at: int

    @classmethod
    def parse(cls, text: str) -> FaultPlan:
        mode, _, at = text.partition("@")
        if mode not in FAULT_MODES or not at.isdigit() or int(at) < 1:
            raise ValueError(f"flash fault {text!r} is not MODE@N with MODE in {FAULT_MODES} and N >= 1")
        return cls(mode, int(at))


def torn(data: bytes) -> bytes:
    """What a write cut halfway leaves: the first half of its data, padding not counted."""
    return data[: len(data.rstrip(b"\0")) // 2]


def power_off_process(supervisor_pid: int | None = None) -> None:
    """Die at once, taking the device's supervisor along when there is one (a power cut)."""
    if supervisor_pid and supervisor_pid != os.getpid():
        try:
            os.kill(supervisor_pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    os.kill(os.getpid(), signal.SIGKILL)


class OpLog:
    """Numbers persistent operations across the reboots of one run (append-only text file)."""

    def __init__(self, path: Path | None) -> None:
        self._path = path
        self.count = 0
        if path is not None and path.exists():
            self.count = sum(1 for _ in path.open())

    def record(self, kind: str, name: str) -> int:
        self.count += 1
        if self._path is not None:
            with self._path.open("a") as log:
                log.write(f"{self.count} {kind} {name}\n")
        return self.count


class FlashFile:
    """A file open for sequential writing from a given offset."""

    def __init__(self, flash: Flash, name: str, fd: int, position: int) -> None:
        self._flash, self.name, self._fd, self.position = flash, name, fd, position
        self._pending: list[tuple[int, bytes]] = []

    @property
    def dirty(self) -> bool:
        return bool(self._pending)

    def write(self, data: bytes) -> None:
        def persist(chunk: bytes) -> None:
            if self._flash.writeback:
                self._pending.append((self.position, chunk))
            else:
                os.pwrite(self._fd, chunk, self.position)
        self._flash.operation("write", self.name, persist, data)
        self.position += len(data)

    def sync(self, truncate_to: int | None = None) -> None:
        def flush(_: bytes) -> None:
            for offset, chunk in self._pending:
                os.pwrite(self._fd, chunk, offset)
            self._pending.clear()
            if truncate_to is not None:
                os.ftruncate(self._fd, truncate_to)
            os.fsync(self._fd)
        self._flash.operation("fsync", self.name, flush)

    def close(self) -> None:
        self._flash.release(self)
        os.close(self._fd)

    def __enter__(self) -> FlashFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Flash:
    """A directory standing for a device's flash; every mutation goes through here."""

    def __init__(self, root: Path, *, writeback: bool = False, fault: FaultPlan | None = None,
                 oplog: Path | None = None, power_off: Callable[[], None] = power_off_process) -> None:
        self.root = root
        self.fault = fault
        self.writeback = writeback or (fault is not None and fault.mode == "lose")
        self.oplog = OpLog(oplog)
        self._power_off = power_off
        self._open: dict[str, FlashFile] = {}
        root.mkdir(parents=True, exist_ok=True)

    # -- the operation seam: counting and fault injection live only here
    def operation(self, kind: str, name: str, apply: Callable[[bytes], None], data: bytes = b"") -> None:
        number = self.oplog.record(kind, name)
        if self.fault is not None and number == self.fault.at:
            if self.fault.mode == "tear" and kind == "write" and data:
                apply(torn(data))
            self._power_off()
        apply(data)

    def release(self, handle: FlashFile) -> None:
        self._open.pop(handle.name, None)

    # -- reads
    def path(self, name: str) -> Path:
        return self.root / name

    def read(self, name: str) -> bytes | None:
        handle = self._open.get(name)
        if handle is not None and handle.dirty:
            raise FlashDisciplineError(f"{name} read while writes to it are not yet fsynced")
        try:
            return self.path(name).read_bytes()
        except FileNotFoundError:
            return None

    def size(self, name: str) -> int:
        try:
            return self.path(name).stat().st_size
        except FileNotFoundError:
            return 0

    # -- mutations
    def open_at(self, name: str, offset: int) -> FlashFile:
        """Open for writing from `offset`, cutting off whatever lies beyond it."""
        created = not self.path(name).exists()
        fd = os.open(self.path(name), os.O_WRONLY | os.O_CREAT, 0o644)
        if created:
            self._sync_dir(name)
        if self.size(name) != offset:
            self.operation("truncate", name, lambda _: os.ftruncate(fd, offset))
        handle = FlashFile(self, name, fd, offset)
        self._open[name] = handle
        return handle

    def replace(self, name: str, data: bytes) -> None:
        """Atomically replace a whole file: after a cut it holds the old or the new content."""
        tmp = name + TMP_SUFFIX
        with self.open_at(tmp, 0) as handle:
            handle.write(data)
            handle.sync()
        self.operation("rename", name, lambda _: os.replace(self.path(tmp), self.path(name)))
        self._sync_dir(name)

    def overwrite(self, name: str, data: bytes) -> None:
        """Update a record in place (no rename), as on raw flash: a cut may tear it.

        Callers keep redundant copies with checksums (see bootctl) rather than rely on rename.
        """
        created = not self.path(name).exists()
        fd = os.open(self.path(name), os.O_WRONLY | os.O_CREAT, 0o644)
        if created:
            self._sync_dir(name)
        handle = FlashFile(self, name, fd, 0)
        self._open[name] = handle
        with handle:
            handle.write(data)
            handle.sync(truncate_to=len(data))

    def remove(self, name: str) -> None:
        if self.path(name).exists():
            self.operation("unlink", name, lambda _: os.unlink(self.path(name)))
            self._sync_dir(name)

    def remove_temporaries(self) -> None:
        """Drop half-written temporary files a power cut left behind (done at every boot)."""
        for tmp in sorted(self.root.glob("*" + TMP_SUFFIX)):
            self.remove(tmp.name)

    def _sync_dir(self, name: str) -> None:
        def fsync_dir(_: bytes) -> None:
            fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        self.operation("dirsync", name, fsync_dir)
