"""In-memory stand-ins for the update server and the MQTT reporter, and a device harness
that powers a real flash directory on and off (for the engine's unit tests)."""
from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta
from pathlib import Path

from fotalab.device.bootloader import boot
from fotalab.device.engine import EngineConfig, TransportError, UpdateEngine
from fotalab.device.flash import Flash
from fotalab.formats.delta import Delta, apply_delta

EXPIRES = (datetime.now(UTC) + timedelta(days=30)).isoformat()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class FakeServer:
    """Serves one manifest and its artifacts; can cut transfers and corrupt files."""

    def __init__(self) -> None:
        self.manifest: bytes | None = None
        self.files: dict[str, bytes] = {}
        self.cut_after: int | None = None     # bytes per transfer before the link drops
        self.fetched = 0
        self.documents: dict[str, bytes] = {"key-rotations.json": b"[]"}

    def fetch_manifest(self, **query) -> bytes | None:
        return self.manifest

    def fetch_document(self, name: str) -> bytes:
        return self.documents[name]

    def open_range(self, url_path: str, start: int, end: int):
        data = self.files[url_path.rsplit("/", 1)[1]][start:]
        sent = 0
        for offset in range(0, len(data), 4096):
            if self.cut_after is not None and sent >= self.cut_after:
                raise TransportError("connection reset")
            chunk = data[offset: offset + 4096]
            sent += len(chunk)
            self.fetched += len(chunk)
            yield chunk


class Recorder:
    def __init__(self) -> None:
        self.states: list[tuple[str, dict]] = []
        self.events: list[tuple[str, dict]] = []

    def state(self, state, **fields):
        self.states.append((state, fields))

    def event(self, kind, **fields):
        self.events.append((kind, fields))

    @property
    def last(self) -> tuple[str, dict]:
        return self.states[-1]


def in_process_patcher(base: str, artifact: str, encoding: str, max_output: int):
    data = Path(artifact).read_bytes()
    yield apply_delta(Path(base).read_bytes(), Delta(encoding, data), max_output) if encoding else data


def power_on(flash_dir: Path, factory: Path, server: FakeServer,
             reset_reason: str = "power-on") -> tuple[UpdateEngine, Recorder]:
    """Boot the device; `reset_reason` is why the previous run ended (a crash, or power loss)."""
    flash = Flash(flash_dir)
    plan, verifier = boot(flash, factory_image=factory / "fotalab-m4.img", trust_anchor=factory / "trust.pem",
                          limit=3, reset_reason=reset_reason)
    recorder = Recorder()
    engine = UpdateEngine(EngineConfig("dev-1", "fotalab-m4", chunk_size=4096, retries=3, backoff_s=0),
                          flash, plan.boot, verifier, server, recorder, in_process_patcher, sleep=lambda s: None)
    return engine, recorder


def boot_records(flash_dir: Path) -> dict[str, bytes]:
    return {name: (flash_dir / name).read_bytes() for name in ("bootctl.0", "bootctl.1") if (flash_dir / name).exists()}
