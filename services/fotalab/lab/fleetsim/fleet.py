"""The fleet: N virtual devices on one event loop, a bounded engine pool, power cuts, a status file.

Devices are powered on at `power_on_rate` per second (a fleet-wide boot storm has a ramp, as
a real one has), each then lives on its own (device.py). Engine work of every device shares
`workers` threads; MQTT needs none. Every second the fleet writes its status file (JSON:
devices powered and online, last reported states, versions, commits, cuts, errors, manifest
latency as the devices saw it, this process's memory): `fota-fleetsim status` prints it and
the compose healthcheck (`fota-fleetsim alive`) checks that it is fresh.
"""
from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import json
import logging
import os
import random
import threading
import time
from pathlib import Path

from ...protocol import Event, State
from ..provision import sim_password
from .config import FleetSimConfig
from .device import VirtualDevice
from .parts import Latencies, SharedHttp, patcher

log = logging.getLogger("fotalab.fleetsim")
STATUS_EVERY_S = 1.0


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
        self.pool = concurrent.futures.ThreadPoolExecutor(config.workers, thread_name_prefix="fleetsim-engine")
        self.http = SharedHttp(config.server_url, timeout_s=config.http_timeout_s, chunk_size=config.chunk_size)
        self.patcher = patcher(config.patch, config.chunk_size)
        self.publish_latency = Latencies()      # a report made -> its PUBACK from the broker
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

    # -- what the devices tell the fleet (from engine threads and the loop)
    def observe(self, device: VirtualDevice, kind: str, word: str | None, body: dict) -> None:
        if kind == "events" and word:
            with self._lock:
                self.events[word] += 1
        if word == Event.COMMITTED:
            device.version = str(body.get("version") or device.version)

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
    async def run(self, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        helpers = [loop.create_task(self._write_status_forever())]
        if self.config.cut_every_s:
            helpers.append(loop.create_task(self._cut_forever()))
        lives = []
        log.info("powering on %d virtual devices at %.0f/s (engine pool: %d threads)", len(self.devices),
                 self.config.power_on_rate, self.config.workers)
        for device in self.devices:
            if stop.is_set():
                break
            lives.append(loop.create_task(device.live(), name=device.device_id))
            self.powered_on += 1
            await asyncio.sleep(1 / self.config.power_on_rate)
        log.info("all %d virtual devices powered on in %.1f s", len(lives), time.time() - self.started)
        await stop.wait()
        for task in lives + helpers:
            task.cancel()
        for device in self.devices:
            device.power.off()
        self.pool.shutdown(wait=False, cancel_futures=True)
        self.write_status()

    async def _cut_forever(self) -> None:
        while True:
            await asyncio.sleep(self.config.cut_every_s)
            powered = [d for d in self.devices[: self.powered_on] if d.power.on]
            if powered:
                self.rng.choice(powered).power_cut()

    async def _write_status_forever(self) -> None:
        while True:
            self.write_status()
            await asyncio.sleep(STATUS_EVERY_S)

    def status(self) -> dict:
        rss, peak = process_memory_mib()
        with self._lock:
            events, cuts, errors = dict(self.events), dict(self.cuts_by_state), list(self.errors)
            boots, mqtt_errors = self.boots, self.mqtt_errors
        p50, p99 = (self.http.manifest_latency.percentile(q) for q in (0.5, 0.99))
        sent_p99 = self.publish_latency.percentile(0.99)
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
