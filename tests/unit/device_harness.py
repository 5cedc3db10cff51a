"""In-memory stand-ins for the update server and the MQTT reporter, and a device harness
that powers a real flash directory on and off (for the engine's unit tests)."""
from __future__ import annotations

import hashlib
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from fotalab.device.bootloader import boot
from fotalab.device.engine import EngineConfig, TransportError, UpdateEngine
from fotalab.device.errors import Reboot
from fotalab.device.flash import Flash
from fotalab.formats.delta import Delta, apply_delta
from fotalab.formats.image import Behaviour
from fotalab.protocol import ResetReason, State

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
             reset_reason: str = "power-on", **flash_options) -> tuple[UpdateEngine, Recorder]:
    """Boot the device; `reset_reason` is why the previous run ended (a crash, or power loss).
    `flash_options` go to Flash (a fault plan, an op log, how a fault powers off)."""
    flash = Flash(flash_dir, **flash_options)
    plan, verifier = boot(flash, factory_image=factory / "fotalab-m4.img", trust_anchor=factory / "trust.pem",
                          limit=3, reset_reason=reset_reason)
    recorder = Recorder()
    engine = UpdateEngine(EngineConfig("dev-1", "fotalab-m4", chunk_size=4096, retries=3, backoff_s=0),
                          flash, plan.boot, verifier, server, recorder, in_process_patcher, sleep=lambda s: None)
    return engine, recorder


def boot_records(flash_dir: Path) -> dict[str, bytes]:
    return {name: (flash_dir / name).read_bytes() for name in ("bootctl.0", "bootctl.1") if (flash_dir / name).exists()}


class PowerCut(BaseException):
    """The flash's armed fault fired. A BaseException, so that no `except Exception` in the code
    under test outlives it, as nothing in a process outlives SIGKILL."""


def cut_power() -> None:
    raise PowerCut


def run_firmware(engine: UpdateEngine, done: Callable[[], bool], hints: int = 3) -> str | None:
    """What the firmware in the booted slot does (firmware.run, in-process): crash at boot if its
    image says so, else resume, pass the trial's health check and commit, and take update hints
    while `done()` is false. Returns the reset reason for the next boot (as the supervisor's
    `watch` words it), or None when the firmware idles."""
    behaviour = engine.running.header.behaviour
    if behaviour is Behaviour.CRASH_AT_BOOT:
        return f"{ResetReason.CRASH} (exit 1)"
    if behaviour is not Behaviour.GOOD:
        raise NotImplementedError(f"run_firmware does not simulate {behaviour.label} firmware")
    try:
        if engine.resume() == State.TRIAL:
            engine.confirm()
        for _ in range(hints):
            if done():
                return None
            engine.check()
    except Reboot as reason:
        return f"{ResetReason.SOFTWARE_REBOOT} ({reason})"
    return None


def supervise(flash_dir: Path, factory: Path, server: FakeServer, done: Callable[[], bool], *, max_boots: int = 12,
              **flash_options) -> list[str]:
    """Power on and reset the device as the lab's supervisor does (device.main.supervise) until its
    firmware idles, the bootloader finds nothing to boot, or `max_boots`; returns the reset reasons
    of its boots. A fault armed in `flash_options` stays armed across resets and ends it with PowerCut."""
    reasons: list[str] = [ResetReason.POWER_ON]
    while len(reasons) <= max_boots:
        engine, _ = power_on(flash_dir, factory, server, reasons[-1], power_off=cut_power, **flash_options)
        if engine.running is None:
            break
        reason = run_firmware(engine, done)
        if reason is None:
            break
        reasons.append(reason)
    return reasons
