"""The fleet: N virtual devices on one event loop, a bounded engine pool, power cuts, a status file.

Devices are powered on at `power_on_rate` per second (a fleet-wide boot storm has a ramp, as
a real one has), each then lives on its own (device.py). Engine work of every device shares
`workers` threads, by priority; MQTT needs none, its handshakes pass a gate of `connects` at a
time. Every second the fleet writes its status file (JSON: devices powered and online, last
reported states, versions, commits, cuts, errors, manifest latency as the devices saw it, what
the devices are doing and the ones longest at it, this process's memory): `fota-fleetsim
status` prints it and the compose healthcheck (`fota-fleetsim alive`) checks that it is fresh.
One such fleet runs in each simulator process (shards.py).
"""
from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import heapq
import json
import logging
import os
import random
import socket
import threading
import time
from pathlib import Path

from ...protocol import Event, State
from ..provision import sim_password
from .config import FleetSimConfig
from .device import VirtualDevice
from .parts import EnginePool, Latencies, SharedHttp, patcher
from .session import Gate

log = logging.getLogger("fotalab.fleetsim")
STATUS_EVERY_S = 1.0
PERCENTILES_EVERY_S = 5.0
SETTLED = ("idle", "off", "in reset")      # phases a device may stay in for long: not listed as the longest


def process_memory_mib() -> tuple[float, float]:
    """(RSS, peak RSS) of this process in MiB, from /proc."""
    fields = {}
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            name, _, value = line.partition(":")
            if name in ("VmRSS", "VmHWM"):
                fields[name] = int(value.split()[0]) / 1024
    except OSError:
        pass
    return fields.get("VmRSS", 0.0), fields.get("VmHWM", 0.0)


class Fleet:
    def __init__(self, config: FleetSimConfig) -> None:
        if config.devices and not config.secret:
            raise ValueError("no MQTT secret for the virtual devices: mount the provisioner's fleetsim.secret "
                             "(FOTA_SIM_CREDENTIALS_DIR) or set FOTA_SIM_SECRET")
        self.config = config
        self.pool = EnginePool(config.workers)
        self.connect_gate = Gate(config.connects)
        self.http = SharedHttp(config.server_url, timeout_s=config.http_timeout_s, chunk_size=config.chunk_size)
        self.patcher = patcher(config.patch, config.chunk_size)
        self.publish_latency = Latencies()      # a report made -> its PUBACK from the broker
        self.queued_latency = Latencies()       # of which: made -> handed to the MQTT client
        self.connect_latency = Latencies()      # session start -> CONNACK and subscriptions
        self.factory_image = config.factory_dir / f"{config.hardware}.img"
        self.trust_anchor = config.factory_dir / "trust.pem"
        secret = config.secret.encode()
        self.devices = [VirtualDevice(self, i, sim_password(secret, config.device_id(i)))
                        for i in range(config.devices)]
        self.rng = random.Random(config.seed)
        self._lock = threading.Lock()
        self.events: collections.Counter[str] = collections.Counter()
        self.cuts_by_state: collections.Counter[str] = collections.Counter()
        self.boots = 0
        self.errors: list[str] = []
        self.mqtt_errors = 0
        self.bricked: dict[str, str] = {}
        self.started = time.time()
        self.powered_on = 0
        self.broker_host = config.mqtt_host
        self._percentiles_at = -PERCENTILES_EVERY_S
        self._percentiles: tuple = (None,) * 8
        self.loop_lag = Latencies()      # how late the loop ran the status tick: everything on it waits as long

    # -- what the devices tell the fleet (from engine threads and the loop)
    def observe(self, device: VirtualDevice, kind: str, word: str | None, body: dict) -> None:
        if kind == "events" and word:
            with self._lock:
                self.events[word] += 1
        if word == Event.COMMITTED:
            device.version = str(body.get("version") or device.version)

    def sent(self, seconds: float, queued: float) -> None:
        self.publish_latency.add(seconds)
        self.queued_latency.add(queued)

    def cut(self, device: VirtualDevice) -> None:
        with self._lock:
            self.cuts_by_state[device.cuts[-1]] += 1

    def booted(self, device: VirtualDevice) -> None:
        with self._lock:
            self.boots += 1

    def note_bricked(self, device: VirtualDevice, message: str) -> None:
        log.error("%s is bricked: %s", device.device_id, message)
        self.bricked[device.device_id] = message

    def error(self, device: VirtualDevice, exc: BaseException) -> None:
        log.error("%s: %s", device.device_id, exc, exc_info=exc)
        with self._lock:
            self.errors.append(f"{device.device_id}: {exc.__class__.__name__}: {exc}")

    def mqtt_error(self, exc: BaseException) -> None:
        with self._lock:
            self.mqtt_errors += 1

    # -- the run
    def broker_address(self) -> str:
        """The broker's address, resolved once: 10,000 connects (and reconnects after every reboot)
        need not ask the resolver (Docker's embedded DNS in the lab) 10,000 times."""
        try:
            return socket.getaddrinfo(self.config.mqtt_host, self.config.mqtt_port, type=socket.SOCK_STREAM)[0][4][0]
        except OSError:
            return self.config.mqtt_host

    async def run(self, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        # aiomqtt runs paho's blocking connect in the loop's default executor: room for a reboot wave
        loop.set_default_executor(concurrent.futures.ThreadPoolExecutor(16, thread_name_prefix="fleetsim-connect"))
        self.broker_host = await loop.run_in_executor(None, self.broker_address)
        helpers = [loop.create_task(self._write_status_forever())]
        if self.config.cut_every_s:
            helpers.append(loop.create_task(self._cut_forever()))
        lives = []
        log.info("powering on %d virtual devices at %.0f/s (engine pool: %d threads)", len(self.devices),
                 self.config.power_on_rate, self.config.workers)
        wave = max(1, int(self.config.power_on_rate / 10))         # ten waves a second
        for start in range(0, len(self.devices), wave):
            if stop.is_set():
                break
            for device in self.devices[start: start + wave]:
                lives.append(loop.create_task(device.live(), name=device.device_id))
                self.powered_on += 1
            await asyncio.sleep(wave / self.config.power_on_rate)
            # no faster than the engine pool boots them: a deep queue of first boots would hold
            # back the reboots of devices already updating (the pool is first come, first served)
            while self.powered_on - self.boots > 2 * wave and not stop.is_set():
                await asyncio.sleep(0.05)
        log.info("all %d virtual devices powered on in %.1f s", len(lives), time.time() - self.started)
        await stop.wait()
        for task in lives + helpers:
            task.cancel()
        for device in self.devices:
            device.power.off()
        self.pool.shutdown()
        self.write_status()

    async def _cut_forever(self) -> None:
        while True:
            await asyncio.sleep(self.config.cut_every_s)
            powered = [d for d in self.devices[: self.powered_on] if d.power.on]
            if powered:
                self.rng.choice(powered).power_cut()

    async def _write_status_forever(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            self.write_status()
            due = loop.time() + STATUS_EVERY_S
            await asyncio.sleep(STATUS_EVERY_S)
            self.loop_lag.add(loop.time() - due)

    def status(self, final: bool = False) -> dict:
        rss, peak = process_memory_mib()
        with self._lock:
            events, cuts, errors = dict(self.events), dict(self.cuts_by_state), list(self.errors)
            boots, mqtt_errors = self.boots, self.mqtt_errors
        now = time.monotonic()
        if final or now - self._percentiles_at >= PERCENTILES_EVERY_S:      # sorting 100,000s of samples
            self._percentiles_at = now
            manifest, connect = self.http.manifest_latency, self.connect_latency
            self._percentiles = (manifest.percentile(0.5), manifest.percentile(0.99),
                                 self.publish_latency.percentile(0.99), self.queued_latency.percentile(0.99),
                                 connect.percentile(0.5), connect.percentile(0.99), self.loop_lag.percentile(0.99),
                                 max(self.loop_lag.values, default=None))
        p50, p99, sent_p99, queued_p99, connect_p50, connect_p99, lag_p99, lag_max = self._percentiles
        mono = time.monotonic()
        busy = [(mono - d.phase_since, d.device_id, d.phase) for d in self.devices[: self.powered_on]
                if d.phase not in SETTLED]
        return {
            "ts": round(time.time(), 3), "started": round(self.started, 3), "devices": len(self.devices),
            "powered_on": self.powered_on, "online": sum(d.online for d in self.devices),
            "states": dict(collections.Counter(d.state or "off" for d in self.devices)),
            "versions": dict(collections.Counter(d.version or "none" for d in self.devices)),
            "committed": sum(d.state == State.COMMITTED for d in self.devices),
            "events": events, "boots": boots, "cuts": sum(cuts.values()), "cuts_by_state": cuts,
            "errors": len(errors), "error_samples": errors[:10], "mqtt_errors": mqtt_errors,
            "bricked": len(self.bricked),
            "manifest_requests": len(self.http.manifest_latency.values),
            "manifest_p50_ms": round(p50 * 1000, 1) if p50 is not None else None,
            "manifest_p99_ms": round(p99 * 1000, 1) if p99 is not None else None,
            "reports_sent": len(self.publish_latency.values),
            "report_to_puback_p99_ms": round(sent_p99 * 1000, 1) if sent_p99 is not None else None,
            "report_queued_p99_ms": round(queued_p99 * 1000, 1) if queued_p99 is not None else None,
            "connects": len(self.connect_latency.values),
            "connect_p50_ms": round(connect_p50 * 1000, 1) if connect_p50 is not None else None,
            "connect_p99_ms": round(connect_p99 * 1000, 1) if connect_p99 is not None else None,
            "phases": dict(collections.Counter(d.phase for d in self.devices)),
            "longest": [[device_id, phase, round(seconds, 1)] for seconds, device_id, phase in heapq.nlargest(5, busy)],
            "engine_queued": self.pool.queued(), "handshakes_waiting": self.connect_gate.waiting,
            "loop_lag_p99_ms": round(lag_p99 * 1000, 1) if lag_p99 is not None else None,
            "loop_lag_max_ms": round(lag_max * 1000, 1) if lag_max is not None else None,
            "rss_mib": round(rss, 1), "peak_rss_mib": round(peak, 1), "threads": threading.active_count(),
        }

    def write_status(self) -> None:
        path = self.config.status_file
        tmp = path.with_name(path.name + ".tmp")
        try:
            tmp.write_text(json.dumps(self.status()))
            os.replace(tmp, path)
        except OSError as exc:
            log.warning("cannot write the status file %s: %s", path, exc)
