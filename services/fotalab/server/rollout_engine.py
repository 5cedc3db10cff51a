"""The rollout engine: the I/O around rollouts.step (and operator triggers), in the process that holds the ingest lock.

It runs next to the MQTT ingester (ingest.py), so exactly once whatever the worker count, and
it publishes hints with the ingester's client, the server's MQTT identity. Every tick it reads
each running rollout and its devices' facts from the registry (what the ingester stored),
steps it, and saves the result with the assignments it implies and the decisions it made (the
rollout log: phases advanced, gates tripped, completion) in one transaction, guarded by
the revision it read: an operator's pause or abort saved in between wins, and the tick is
simply redone. Hints are sent only after the save; one lost then (crash, broker down) is sent
again by the rehint rule of rollouts.py. A restarted server just carries on from the database.

A DDI controller (ddi.py) has no MQTT topic: its hint is a flag its next poll reads
(ddi_store.request_offer), and its answer is the feedback it posts, which the registry keeps
as a state report, so the rollout's rules need no special case. The engine also takes
controllers that stopped polling offline (three polling intervals), as a broker's last will
does for an MQTT device.
"""
from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from collections.abc import Callable

from ..protocol import Command, Outcome
from . import rollouts
from .ddi_store import DdiStore
from .registry import Registry

log = logging.getLogger("fotalab.server.rollouts")
HINT = json.dumps({"cmd": Command.UPDATE})


class Facts:
    """Every device's last state report as rollouts.step needs it: one registry query per tick
    (not one per device: 10,000 devices made that the tick's whole second), and a report parsed
    only when its state_ts changed since the last tick."""

    def __init__(self) -> None:
        self._known: dict[str, rollouts.DeviceFact] = {}

    def read(self, registry: Registry) -> dict[str, rollouts.DeviceFact]:
        known, found = self._known, {}
        for device_id, state, version, state_ts, report in registry.state_rows():
            fact = known.get(device_id)
            if fact is None or fact.state_ts != state_ts or fact.state != state:
                fact = rollouts.DeviceFact(state, version, state_ts, json.loads(report) if report else {})
            found[device_id] = fact
        self._known = found
        return found


def facts(registry: Registry, rollout: rollouts.Rollout) -> dict[str, rollouts.DeviceFact]:
    """The facts of one rollout's devices (uncached: for tests and one-off callers)."""
    every = Facts().read(registry)
    return {run.device_id: every[run.device_id] for run in rollout.devices if run.device_id in every}


def routed(registry: Registry, hint: Callable[[str], None]) -> Callable[[str], None]:
    """The hint for any device: over MQTT, or for a DDI controller a flag its next poll reads."""
    controllers = DdiStore(registry)

    def send(device_id: str) -> None:
        if controllers.is_controller(device_id):
            controllers.request_offer(device_id)
        else:
            hint(device_id)
    return send


def tick(registry: Registry, hint: Callable[[str], None], now: float | None = None,
         ddi_offline_s: float = 0.0, known: Facts | None = None) -> None:
    """One pass: silent DDI controllers offline (with ddi_offline_s), the operator's
    single-device triggers, then every running rollout (`known`: the facts kept between ticks)."""
    hint = routed(registry, hint)
    if ddi_offline_s:
        DdiStore(registry).silent_offline((time.time() if now is None else now) - ddi_offline_s)
    for device_id in registry.take_hints():
        hint(device_id)
    running = registry.rollouts(active_only=True)
    every = (known or Facts()).read(registry) if running else {}
    for rollout in running:
        current = time.time() if now is None else now
        stepped, hints = rollouts.step(rollout, every, current)
        if stepped == rollout:
            continue
        offered = [d.device_id for d in stepped.devices if d.status == Outcome.OFFERED]
        decided = rollouts.decisions(rollout, stepped)
        if registry.save_rollout(stepped, assign=offered, decisions=decided) is None:
            continue                                  # the operator changed it meanwhile: next tick
        for decision in decided:
            log.info("rollout %d of %s: %s, now %s in phase %d (%s)", stepped.id, stepped.release, decision.action,
                     stepped.status, stepped.phase, decision.reason)
        for device_id in hints:
            hint(device_id)


class RolloutEngine(threading.Thread):
    def __init__(self, registry: Registry, hint: Callable[[str], None], *, interval_s: float = 1.0,
                 ddi_offline_s: float = 0.0) -> None:
        super().__init__(name="rollout-engine", daemon=True)
        self._registry, self._hint, self._interval = registry, hint, interval_s
        self._ddi_offline_s = ddi_offline_s
        self._facts = Facts()

    def run(self) -> None:
        log.info("rollout engine running")
        while True:
            try:
                tick(self._registry, self._hint, ddi_offline_s=self._ddi_offline_s, known=self._facts)
            except sqlite3.Error as exc:
                log.error("rollout tick failed (%s); retrying", exc)
            except Exception:
                log.exception("rollout tick failed; retrying")
            time.sleep(self._interval)
