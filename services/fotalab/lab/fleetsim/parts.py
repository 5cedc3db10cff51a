"""What a virtual device plugs into the device's real update engine: its power rail, its flash,
its HTTP transport, its reporter and its patcher.

The engine (device/engine.py), the bootloader, the boot record and the storage layer are the
device's own; only the seams are the simulator's:

- `Power`: one power-on. Everything a virtual device runs checks it: once it is off (a cut,
  or the firmware crashed), the engine thread dies with `PowerCut` at its next flash
  operation, transfer chunk or report, as a real device dies at its next instruction.
- `SimFlash`: the device's `Flash` (write-back mode: writes not yet fsynced live only in
  this object, so dropping it loses exactly what a power cut loses) with the power check in
  its operation seam, and an optional countdown that cuts the power at the N-th operation.
- `SimTransport`: the device's `HttpTransport`, one per engine thread and shared by the
  devices whose work that thread runs (10,000 devices, a handful of keep-alive connections).
- `SimReporter`: builds the same state and event payloads as the device's MQTT link and
  hands them to the device's asyncio MQTT session.
- `EnginePool`: the threads that run every device's engine work, most urgent first.
- `patcher`: delta apply in the engine thread (no child process per device), memoized by the
  SHA-256 of base and delta in "cached" mode: 10,000 devices applying the same delta to the
  same base pay for one apply (about 0.16 s of pure Python for the lab's 256 KiB image);
  whatever differs (a damaged base or delta) has another hash and is applied for real.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import itertools
import json
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict
from pathlib import Path

import requests

from ...device.bootctl import BootControl
from ...device.bootloader import SlotCheck
from ...device.engine import Patcher
from ...device.errors import UpdateFailed
from ...device.flash import Flash
from ...device.patcher import read_chunks
from ...device.transport import HttpTransport
from ...formats.delta import Delta, DeltaError, apply_delta
from ...protocol import ReportClock, device_topic


class PowerCut(BaseException):
    """The virtual device lost power (or its firmware process died) while this ran. A
    BaseException, so no `except Exception` in the engine outlives it, as nothing outlives a cut."""


class Power:
    """One power-on of a virtual device."""

    def __init__(self, on_operation: Callable[[], bool] = lambda: False) -> None:
        self._off = threading.Event()
        self._on_operation = on_operation      # True: cut the power before this flash operation

    @property
    def on(self) -> bool:
        return not self._off.is_set()

    def off(self) -> None:
        self._off.set()

    def check(self) -> None:
        if self._off.is_set():
            raise PowerCut

    def operation(self) -> None:
        """Before each flash operation: dead if off, and the armed cut fires here."""
        self.check()
        if self._on_operation():
            self.off()
            raise PowerCut

    def sleep(self, seconds: float) -> None:
        """The engine's backoff: a cut ends it."""
        if self._off.wait(seconds):
            raise PowerCut


class SimFlash(Flash):
    """The device's storage layer with the virtual power rail in its operation seam."""

    def __init__(self, root: Path, power: Power, *, writeback: bool) -> None:
        super().__init__(root, writeback=writeback)
        self.power = power

    def operation(self, kind: str, name: str, apply: Callable[[bytes], None], data: bytes = b"") -> None:
        self.power.operation()
        super().operation(kind, name, apply, data)


class Priority:
    """The order engine work is taken in (lower first)."""
    TRIAL = 0        # a device booting after a reset mid-update, and its trial: its health window runs
    COMMAND = 1      # a check, download and install the server asked for
    FIRST_BOOT = 2   # the fleet's first power-on


class EnginePool:
    """`workers` threads for the engine work of every device, by priority, then first come.

    Why not a ThreadPoolExecutor: first come, first served put a rebooted device's trial, which
    must reach the broker and commit within its health window, behind thousands of queued checks
    and downloads of a rollout phase that had just started."""

    def __init__(self, workers: int, name: str = "fleetsim-engine") -> None:
        self._queue: queue.PriorityQueue = queue.PriorityQueue()
        self._order = itertools.count()
        self._threads = [threading.Thread(target=self._work, name=f"{name}-{n}", daemon=True) for n in range(workers)]
        for thread in self._threads:
            thread.start()

    def submit(self, priority: int, fn: Callable[[], object]) -> concurrent.futures.Future:
        future: concurrent.futures.Future = concurrent.futures.Future()
        self._queue.put((priority, next(self._order), fn, future))
        return future

    def queued(self) -> int:
        return self._queue.qsize()

    def _work(self) -> None:
        while True:
            _, _, fn, future = self._queue.get()
            if fn is None:
                return
            if not future.set_running_or_notify_cancel():
                continue
            try:
                result = fn()
            except BaseException as exc:        # PowerCut too: the device's coroutine takes it
                future.set_exception(exc)
            else:
                future.set_result(result)

    def shutdown(self) -> None:
        """Queued work is cancelled; work in a thread ends at the device's next power check."""
        while True:
            try:
                _, _, _, future = self._queue.get_nowait()
            except queue.Empty:
                break
            if future is not None:
                future.cancel()
        for _ in self._threads:
            self._queue.put((float("inf"), next(self._order), None, None))


class Latencies:
    """Thread-safe list of durations in seconds (the manifest requests the devices made)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.values: list[float] = []

    def add(self, seconds: float) -> None:
        with self._lock:
            self.values.append(seconds)

    def percentile(self, q: float) -> float | None:
        with self._lock:
            values = sorted(self.values)
        if not values:
            return None
        return values[min(len(values) - 1, int(q * len(values)))]


class SharedHttp:
    """One HttpTransport (one requests Session) per engine thread, for every device."""

    def __init__(self, server_url: str, *, timeout_s: float, chunk_size: int) -> None:
        self.server_url = server_url.rstrip("/")
        self._timeout, self._chunk = timeout_s, chunk_size
        self._local = threading.local()
        self.manifest_latency = Latencies()

    def transport(self) -> HttpTransport:
        transport = getattr(self._local, "transport", None)
        if transport is None:
            transport = self._local.transport = HttpTransport(self.server_url, timeout_s=self._timeout,
                                                              chunk_size=self._chunk)
        return transport

    def healthy(self) -> bool:
        """The trial's check that the update server answers (firmware.health_check does the same)."""
        session = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = requests.Session()
        try:
            return session.get(f"{self.server_url}/healthz", timeout=self._timeout).ok
        except requests.RequestException:
            return False


class SimTransport:
    """The engine's Transport for one virtual device: the shared HTTP client behind its power rail."""

    def __init__(self, http: SharedHttp, power: Power) -> None:
        self._http, self._power = http, power

    def fetch_manifest(self, *, device_id: str, hardware: str, version: str, image_sha256: str) -> bytes | None:
        self._power.check()
        started = time.monotonic()
        document = self._http.transport().fetch_manifest(device_id=device_id, hardware=hardware, version=version,
                                                         image_sha256=image_sha256)
        self._http.manifest_latency.add(time.monotonic() - started)
        self._power.check()
        return document

    def fetch_document(self, name: str) -> bytes:
        self._power.check()
        return self._http.transport().fetch_document(name)

    def open_range(self, url_path: str, start: int, end: int) -> Iterator[bytes]:
        self._power.check()
        for chunk in self._http.transport().open_range(url_path, start, end):
            self._power.check()
            yield chunk


class SimReporter:
    """The engine's Reporter: the payloads of device/mqttlink.py, queued on the device's session.

    Called from engine threads and from the event loop alike; the payload is built in the
    caller (it reads the boot record), the loop only publishes it."""

    def __init__(self, device_id: str, hardware: str, group: str, flash: Flash, running: SlotCheck,
                 power: Power, send: Callable[[str, str, bool], None],
                 observe: Callable[[str, str, dict], None]) -> None:
        self.device_id, self._hardware, self._group = device_id, hardware, group
        self._flash, self._running, self._power = flash, running, power
        self._send, self._observe = send, observe
        self._clock = ReportClock()

    def describe(self) -> dict:
        state = BootControl(self._flash).load()
        fields = {"version": self._running.version, "slot": self._running.slot,
                  "image_sha256": self._running.sha256, "hardware": self._hardware, "group": self._group,
                  "verified": True, "confirmed": bool(state and state.confirmed),
                  "security_counter": state.security_counter if state else None}
        if state and state.rollback:
            fields["last_rollback"] = asdict(state.rollback)
        return fields

    def _publish(self, kind: str, payload: dict, retain: bool) -> None:
        self._power.check()
        body = {"device": self.device_id, "ts": self._clock(), **self.describe(), **payload}
        self._observe(kind, payload.get("state") or payload.get("event"), body)
        self._send(device_topic(self.device_id, kind), json.dumps(body), retain)

    def state(self, state: str, **fields: object) -> None:
        self._publish("state", {"state": state, **fields}, retain=True)

    def event(self, kind: str, **fields: object) -> None:
        self._publish("events", {"event": kind, **fields}, retain=False)


def thread_safe_sender(loop: asyncio.AbstractEventLoop, outbox: asyncio.Queue) -> Callable[[str, str, bool], None]:
    """Queue (topic, payload, retain, now) on an asyncio queue from any thread, in call order."""
    def send(topic: str, payload: str, retain: bool) -> None:
        loop.call_soon_threadsafe(outbox.put_nowait, (topic, payload, retain, time.time()))
    return send


def patcher(mode: str, chunk_size: int) -> Patcher:
    """Delta apply in the calling thread; "cached" memoizes by (base, delta, encoding) hashes."""
    cache: dict[tuple[str, str, str, int], bytes] = {}

    def patch(base: str, artifact: str, encoding: str, max_output: int) -> Iterator[bytes]:
        if not encoding:                           # a full image: copied as it is
            yield from read_chunks(artifact, chunk_size)
            return
        old, delta = Path(base).read_bytes(), Path(artifact).read_bytes()
        key = (hashlib.sha256(old).hexdigest(), hashlib.sha256(delta).hexdigest(), encoding, max_output)
        new = cache.get(key)
        if new is None:
            try:
                new = apply_delta(old, Delta(encoding, delta), max_output)
            except DeltaError as exc:
                raise UpdateFailed(f"patching failed: delta rejected: {exc}") from None
            except MemoryError:
                raise UpdateFailed("patching failed: the delta needs more memory than this device allows") from None
            if mode == "cached":
                cache[key] = new
        for offset in range(0, len(new), chunk_size):
            yield new[offset: offset + chunk_size]

    return patch
