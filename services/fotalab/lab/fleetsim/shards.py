"""The fleet over several simulator processes: contiguous slices of the devices, one event loop each.

Why: one process runs its event loop and its engine threads on one core's worth of Python
(they share the GIL, and the engine threads take it from the loop). At 10,000 devices that one
core reconnected a reboot wave so slowly that trials failed their health window. Here the
parent starts `processes` children (multiprocessing, spawn: nothing of the parent's state is
shared), each a `Fleet` over its slice with its own pool, gate and status file, and writes the
fleet-wide status file from theirs every second, while every child's status is fresh (so the
compose healthcheck sees a hung child). A child that exits stops the whole simulator: a fleet
with a slice missing is not the fleet asked for, and compose restarts it.

Per-device randomness (which devices are cut, when) is seeded by device id, so a fleet behaves
the same however it is split.
"""
from __future__ import annotations

import asyncio
import collections
import dataclasses
import json
import logging
import multiprocessing
import os
import signal
import sys
import threading
import time

import uvloop

from .config import FleetSimConfig
from .fleet import Fleet

log = logging.getLogger("fotalab.fleetsim")
ALIVE_WITHIN_S = 10.0
DEVICES_PER_PROCESS = 1000     # fewer devices than this per process gain nothing from another one
PROCESSES_PER_CORE = 2         # a process's loop and engine thread take turns on its GIL: one alone leaves a core idle
STOP_WITHIN_S = 15.0
SUMMED = ("devices", "powered_on", "online", "committed", "boots", "cuts", "errors", "mqtt_errors", "bricked",
          "manifest_requests", "reports_sent", "connects", "engine_queued", "handshakes_waiting", "rss_mib",
          "peak_rss_mib", "threads")
COUNTED = ("states", "versions", "events", "cuts_by_state", "phases")
WORST = ("manifest_p50_ms", "manifest_p99_ms", "report_to_puback_p99_ms", "report_queued_p99_ms",
         "connect_p50_ms", "connect_p99_ms", "loop_lag_p99_ms", "loop_lag_max_ms")


def process_count(config: FleetSimConfig) -> int:
    if config.processes:
        return max(1, min(config.processes, config.devices))
    return max(1, min(PROCESSES_PER_CORE * (os.cpu_count() or 1), config.devices // DEVICES_PER_PROCESS))


def slices(config: FleetSimConfig) -> list[FleetSimConfig]:
    """One configuration per process: its devices, its share of the power-on rate and of the
    periodic cuts, its own status file."""
    n = process_count(config)
    if n == 1:
        return [dataclasses.replace(config, processes=1)]
    stem, suffix = config.status_file.stem, config.status_file.suffix
    made, start = [], 0
    for i in range(n):
        count = config.devices // n + (i < config.devices % n)
        made.append(dataclasses.replace(
            config, processes=1, first=config.first + start, devices=count, power_on_rate=config.power_on_rate / n,
            cut_every_s=config.cut_every_s * n,
            status_file=config.status_file.with_name(f"{stem}-{i + 1}{suffix}")))
        start += count
    return made


def merge(statuses: list[dict]) -> dict:
    """The fleet-wide status from the processes' own: counts summed, latency percentiles the
    worst process's (an upper bound of the fleet's), the longest-busy devices of all."""
    merged: dict = {"processes": len(statuses), "ts": min(s["ts"] for s in statuses),
                    "started": min(s["started"] for s in statuses)}
    for name in SUMMED:
        merged[name] = round(sum(s.get(name) or 0 for s in statuses), 1)
    for name in COUNTED:
        total: collections.Counter[str] = collections.Counter()
        for status in statuses:
            total.update(status.get(name) or {})
        merged[name] = dict(total)
    for name in WORST:
        values = [s[name] for s in statuses if s.get(name) is not None]
        merged[name] = max(values) if values else None
    merged["error_samples"] = [e for s in statuses for e in s.get("error_samples", [])][:10]
    merged["longest"] = sorted((d for s in statuses for d in s.get("longest", [])), key=lambda d: -d[2])[:5]
    return merged


def configure_logging() -> None:
    logging.basicConfig(level=logging.INFO, stream=sys.stdout,
                        format="%(asctime)s %(processName)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("aiomqtt").setLevel(logging.WARNING)


async def _serve(config: FleetSimConfig) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await Fleet(config).run(stop)


def run_one(config: FleetSimConfig) -> int:
    """One process's fleet until SIGTERM or SIGINT, on uvloop (the server's loop too: less CPU per message).

    The GIL's switch interval is shortened: the loop gives the GIL up at every socket operation
    and must then wait for it, up to a whole interval (5 ms by default) behind each busy engine
    thread, hundreds of times a second."""
    sys.setswitchinterval(config.gil_switch_ms / 1000)
    uvloop.run(_serve(config))
    return 0


def _child(config: FleetSimConfig) -> None:
    configure_logging()
    sys.exit(run_one(config))


def _read(config: FleetSimConfig) -> dict | None:
    try:
        status = json.loads(config.status_file.read_text())
    except (OSError, ValueError):
        return None
    return status if time.time() - status.get("ts", 0) < ALIVE_WITHIN_S else None


def _write(path, status: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_text(json.dumps(status))
        os.replace(tmp, path)
    except OSError as exc:
        log.warning("cannot write the status file %s: %s", path, exc)


def run(config: FleetSimConfig) -> int:
    """The whole fleet: in this process, or split over child processes."""
    parts = slices(config)
    if len(parts) == 1:
        return run_one(parts[0])
    log.info("%d virtual devices over %d processes", config.devices, len(parts))
    context = multiprocessing.get_context("spawn")
    children = [context.Process(target=_child, args=(part,), name=f"fleetsim-{i + 1}") for i, part in enumerate(parts)]
    for child in children:
        child.start()
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    failed = None
    while not stop.is_set():
        failed = next((c for c in children if not c.is_alive()), None)
        if failed is not None:
            log.error("%s exited (status %s): stopping the simulator (compose restarts it)", failed.name,
                      failed.exitcode)
            break
        statuses = [_read(part) for part in parts]
        if all(statuses):
            _write(config.status_file, merge(statuses))
        stop.wait(1.0)
    for child in children:
        if child.is_alive():
            child.terminate()                   # SIGTERM: each child stops its devices and writes its status
    deadline = time.monotonic() + STOP_WITHIN_S
    for child in children:
        child.join(max(0.0, deadline - time.monotonic()))
        if child.is_alive():
            child.kill()
    statuses = [s for s in (_read(part) for part in parts) if s]
    if statuses:
        _write(config.status_file, merge(statuses))
    return 1 if failed is not None else 0
