"""Staged rollouts as a pure state machine: no clock, no database, no MQTT in here.

A rollout offers one release to a fixed, ordered list of devices in phases (a canary of k
devices, then cumulative percentages). A device counts as a success only once it *committed*
the release (trial boot confirmed), never when it downloaded it. After each step the gates
decide: a phase whose success ratio (committed over its devices that did not fail) reaches
`success_ratio` lets the next phase start; a
failure ratio (rollbacks and exhausted retries over the devices offered so far) above
`max_failure_ratio` pauses or aborts the rollout. Transient failures (network, power cuts
during a trial) are retried with exponential backoff; a release that rolled back on a device
because the firmware failed is quarantined for that device and never offered to it again.

`step(rollout, facts, now)` returns the next rollout and the devices to hint; the engine
(rollout_engine.py) persists the one and publishes the other.
"""
from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from enum import StrEnum

from ..protocol import ACTIVE_ROLLOUTS, FAILED_STATES, SUCCESS_STATES, Outcome, RollbackCause, RolloutStatus, State
from .errors import RolloutConflict, RolloutError

# protocol's members under the short names this module exported before protocol.py had them
RUNNING, PAUSED, ABORTED, COMPLETED = (RolloutStatus.RUNNING, RolloutStatus.PAUSED, RolloutStatus.ABORTED,
                                       RolloutStatus.COMPLETED)
PENDING, OFFERED, COMMITTED, ROLLED_BACK, FAILED = (Outcome.PENDING, Outcome.OFFERED, Outcome.COMMITTED,
                                                    Outcome.ROLLED_BACK, Outcome.FAILED)
SETTLED = frozenset({Outcome.COMMITTED, Outcome.ROLLED_BACK, Outcome.FAILED})
FAILURES = frozenset({Outcome.ROLLED_BACK, Outcome.FAILED})
ON_FAILURE = (RolloutStatus.PAUSED, RolloutStatus.ABORTED)     # what a tripped failure gate may do


class Action(StrEnum):
    """A decision in a rollout's log (the API's and the dashboard's word for it)."""
    CREATED = "created"
    ADVANCED = "advanced"
    PAUSED = RolloutStatus.PAUSED.value
    RESUMED = "resumed"
    ABORTED = RolloutStatus.ABORTED.value
    COMPLETED = RolloutStatus.COMPLETED.value


class Actor(StrEnum):
    """Who made a decision in a rollout's log."""
    ENGINE = "engine"
    OPERATOR = "operator"


class Verdict(StrEnum):
    """classify()'s answers besides an Outcome: the device's report settles nothing yet."""
    WAITING = "waiting"               # no report since the hint
    RETRY = "retry"                   # a transient failure, or the release was not installed
    BUSY = "busy"                     # updating


@dataclass(frozen=True)
class Policy:
    success_ratio: float = 1.0        # committed / phase size needed to start the next phase
    max_failure_ratio: float = 0.0    # failures / devices offered so far above which the gate trips
    on_failure: str = RolloutStatus.PAUSED        # one of ON_FAILURE
    max_retries: int = 3              # transient failures retried per device
    backoff_s: float = 10.0           # first retry delay, doubled on each retry
    rehint_s: float = 30.0            # re-send a hint the device has not answered after this long

    def checked(self) -> Policy:
        if not 0 < self.success_ratio <= 1:
            raise RolloutError(f"success ratio must be in (0, 1], got {self.success_ratio}")
        if not 0 <= self.max_failure_ratio < 1:
            raise RolloutError(f"max failure ratio must be in [0, 1), got {self.max_failure_ratio}")
        if self.on_failure not in ON_FAILURE:
            raise RolloutError(f"on_failure must be '{ON_FAILURE[0]}' or '{ON_FAILURE[1]}', got {self.on_failure!r}")
        if self.max_retries < 0 or self.backoff_s < 0 or self.rehint_s <= 0:
            raise RolloutError("max_retries and backoff_s must be >= 0, rehint_s > 0")
        return self


@dataclass(frozen=True)
class DeviceFact:
    """What the registry knows of a device: its last state report (device clock `state_ts`)."""
    state: str | None
    version: str | None
    state_ts: float
    report: Mapping = field(default_factory=dict)


@dataclass(frozen=True)
class DeviceRun:
    device_id: str
    phase: int
    status: str = Outcome.PENDING
    attempts: int = 0
    baseline_ts: float = 0.0          # the device's state_ts when last hinted: later reports answer it
    hinted_at: float = 0.0            # server clock
    retry_at: float = 0.0             # server clock; a retry waits until then
    reason: str = ""


@dataclass(frozen=True)
class Rollout:
    id: int
    release: str
    selection: Mapping
    phases: tuple[int, ...]           # cumulative device counts, the last one is every device
    policy: Policy
    devices: tuple[DeviceRun, ...]
    status: str = RolloutStatus.RUNNING
    phase: int = 0                    # the phase being rolled out
    reason: str = ""
    accepted_failures: int = 0        # failures the operator accepted by resuming past a tripped gate
    revision: int = 0                 # optimistic concurrency: each save expects the revision it read

    def in_phase(self, phase: int) -> list[DeviceRun]:
        return [d for d in self.devices if d.phase == phase]

    def quarantined(self) -> list[str]:
        return [d.device_id for d in self.devices if d.status == Outcome.ROLLED_BACK]

    def to_json(self) -> dict:
        phases = []
        for number, size in enumerate(self.phases):
            members = self.in_phase(number)
            counts = {s: sum(d.status == s for d in members) for s in Outcome}
            phases.append({"phase": number, "cumulative_devices": size, "devices": len(members), **counts,
                           "state": ("done" if number < self.phase or self.status == RolloutStatus.COMPLETED
                                     else "active" if number == self.phase else "waiting")})
        return {"id": self.id, "release": self.release, "selection": dict(self.selection), "status": self.status,
                "reason": self.reason, "phase": self.phase, "phases": phases,
                "accepted_failures": self.accepted_failures, "revision": self.revision,
                "policy": self.policy.__dict__, "quarantined": self.quarantined(),
                "devices": [d.__dict__ for d in self.devices]}


@dataclass(frozen=True)
class Decision:
    """A decision on a rollout, for its log."""
    action: Action
    reason: str


def decisions(before: Rollout, after: Rollout) -> list[Decision]:
    """What changed between two states of a rollout, for people: phases that passed their gate
    (one step can pass several), then a change of status with its reason."""
    made = []
    for number in range(before.phase, after.phase):
        members = after.in_phase(number)
        committed = sum(d.status == Outcome.COMMITTED for d in members)
        made.append(Decision(Action.ADVANCED, f"phase {number} passed its gate ({committed} of {len(members)} "
                                              f"devices committed): phase {number + 1} starts"))
    if after.status != before.status:
        action = Action.RESUMED if after.status == RolloutStatus.RUNNING else Action(after.status)
        made.append(Decision(action, after.reason))
    return made


def phase_sizes(specs: list[str], total: int) -> tuple[int, ...]:
    """'2' is a canary of 2 devices, '50%' half the selection; cumulative, ending with everyone."""
    if total == 0:
        raise RolloutError("the selection matches no device: `fota devices` lists the known ones")
    sizes: list[int] = []
    for spec in specs or ["100%"]:
        try:
            size = math.ceil(total * float(spec[:-1]) / 100) if spec.endswith("%") else int(spec)
        except ValueError:
            raise RolloutError(f"phase {spec!r} is neither a device count (e.g. 1) nor a percentage (e.g. 50%)"
                               ) from None
        if size <= 0 or (sizes and size <= sizes[-1]):
            raise RolloutError(f"phase {spec!r} must add devices to the previous phase ({sizes[-1] if sizes else 0})")
        sizes.append(min(size, total))
        if size >= total:
            break
    if sizes[-1] < total:
        sizes.append(total)
    return tuple(sizes)


def plan(rollout_id: int, release: str, selection: Mapping, device_ids: list[str], specs: list[str],
         policy: Policy) -> Rollout:
    """A new rollout; devices in the given order, which is the order of the phases."""
    sizes = phase_sizes(specs, len(device_ids))
    runs, start = [], 0
    for number, end in enumerate(sizes):
        runs += [DeviceRun(device_id, number) for device_id in device_ids[start:end]]
        start = end
    return Rollout(rollout_id, release, selection, sizes, policy.checked(), tuple(runs))


def classify(release: str, fact: DeviceFact | None, run: DeviceRun) -> tuple[Outcome | Verdict, str]:
    """(outcome, reason) of an offered device: committed or rolled back, else a Verdict."""
    if fact is None:
        return Verdict.WAITING, "no report yet"
    report = fact.report or {}
    if fact.version == release and fact.state in SUCCESS_STATES and report.get("confirmed", True):
        return Outcome.COMMITTED, ""
    rollback = report.get("last_rollback") or {}
    if rollback.get("version") == release and rollback.get("cause", RollbackCause.FIRMWARE) != RollbackCause.POWER:
        return Outcome.ROLLED_BACK, f"rolled back: {rollback.get('reason', 'trial failed')}"
    if fact.state == State.FAILED and "quarantined" in str(report.get("reason", "")):
        return Outcome.ROLLED_BACK, str(report["reason"])
    if fact.state_ts <= run.baseline_ts:
        return Verdict.WAITING, "no answer to the hint yet"
    if fact.state in FAILED_STATES:
        return Verdict.RETRY, f"{fact.state}: {report.get('reason') or rollback.get('reason') or 'no reason given'}"
    if fact.state in SUCCESS_STATES:
        return Verdict.RETRY, f"{fact.state} on {fact.version}: the release was not installed"
    return Verdict.BUSY, fact.state or ""


def _offer(run: DeviceRun, fact: DeviceFact | None, now: float) -> DeviceRun:
    return replace(run, status=Outcome.OFFERED, attempts=run.attempts + 1, hinted_at=now, retry_at=0.0,
                   baseline_ts=fact.state_ts if fact else 0.0)


def _advance_device(rollout: Rollout, run: DeviceRun, fact: DeviceFact | None, now: float,
                    hints: list[str]) -> DeviceRun:
    policy = rollout.policy
    if run.status == Outcome.PENDING:
        hints.append(run.device_id)
        return _offer(run, fact, now)
    if run.status != Outcome.OFFERED:
        return run
    if run.retry_at:                                  # waiting out a backoff
        if now < run.retry_at:
            return run
        hints.append(run.device_id)
        return _offer(run, fact, now)
    outcome, reason = classify(rollout.release, fact, run)
    if outcome in (Outcome.COMMITTED, Outcome.ROLLED_BACK):
        return replace(run, status=outcome, reason=reason)
    if outcome == Verdict.RETRY:
        if run.attempts > policy.max_retries:
            return replace(run, status=Outcome.FAILED, reason=f"{reason} (after {run.attempts} attempts)")
        return replace(run, retry_at=now + policy.backoff_s * 2 ** (run.attempts - 1), reason=reason)
    if outcome == Verdict.WAITING and now - run.hinted_at >= policy.rehint_s:
        hints.append(run.device_id)                  # a lost hint (broker restart, device offline)
        return replace(run, hinted_at=now)
    return replace(run, reason=reason) if reason != run.reason else run


def step(rollout: Rollout, facts: Mapping[str, DeviceFact], now: float) -> tuple[Rollout, list[str]]:
    """The next state of a running rollout and the devices to hint now."""
    if rollout.status != RolloutStatus.RUNNING:
        return rollout, []
    hints: list[str] = []
    runs = tuple(_advance_device(rollout, run, facts.get(run.device_id), now, hints)
                 if run.phase <= rollout.phase else run for run in rollout.devices)
    current = replace(rollout, devices=runs)
    offered = [d for d in runs if d.phase <= current.phase]
    failures = [d for d in offered if d.status in FAILURES]
    if len(failures) > current.accepted_failures and \
            (len(failures) - current.accepted_failures) / len(offered) > current.policy.max_failure_ratio:
        names = ", ".join(f"{d.device_id} ({d.reason})" for d in failures)
        return replace(current, status=current.policy.on_failure,
                       reason=f"failure gate: {len(failures)} of {len(offered)} devices failed: {names}"), hints
    members = current.in_phase(current.phase)
    committed = sum(d.status == Outcome.COMMITTED for d in members)
    # failures within the gate (or accepted by the operator) do not hold a phase back
    counted = sum(d.status not in FAILURES for d in members)
    if committed >= math.ceil(current.policy.success_ratio * counted):
        if current.phase + 1 >= len(current.phases):
            if all(d.status in SETTLED for d in runs):
                return replace(current, status=RolloutStatus.COMPLETED, reason="every phase passed its gate"), hints
            return current, hints
        advanced, more = step(replace(current, phase=current.phase + 1), facts, now)
        return advanced, hints + more
    return current, hints


def pause(rollout: Rollout) -> Rollout:
    if rollout.status != RolloutStatus.RUNNING:
        raise RolloutConflict(f"rollout {rollout.id} is {rollout.status}: only a running rollout can be paused")
    return replace(rollout, status=RolloutStatus.PAUSED, reason="paused by the operator")


def resume(rollout: Rollout) -> Rollout:
    """Resuming past a tripped gate accepts the failures so far (or it would trip again at once);
    new failures still count. Failed devices stay failed, rolled-back ones quarantined."""
    if rollout.status != RolloutStatus.PAUSED:
        raise RolloutConflict(f"rollout {rollout.id} is {rollout.status}: only a paused rollout can be resumed")
    failures = sum(d.status in FAILURES for d in rollout.devices)
    return replace(rollout, status=RolloutStatus.RUNNING, reason="resumed by the operator", accepted_failures=failures)


def abort(rollout: Rollout) -> Rollout:
    if rollout.status not in ACTIVE_ROLLOUTS:
        raise RolloutConflict(f"rollout {rollout.id} is already {rollout.status}")
    return replace(rollout, status=RolloutStatus.ABORTED, reason="aborted by the operator")


def assignments_to_clear(rollout: Rollout) -> list[str]:
    """The assignments a save of this rollout removes: once it is aborted, the devices that have
    not committed its release stop being offered it; while it goes on, none."""
    if rollout.status != RolloutStatus.ABORTED:
        return []
    return [d.device_id for d in rollout.devices if d.status in (Outcome.OFFERED, *FAILURES)]


def dumps(rollout: Rollout) -> str:
    """The stored form (registry.py keeps it with the revision in columns of their own). The
    fields by hand, not dataclasses.asdict: its deep copy of 10,000 device runs took longer
    than the rest of a rollout engine tick; the text is the same."""
    body = {name: getattr(rollout, name) for name in Rollout.__dataclass_fields__ if name not in ("id", "revision")}
    body.update(selection=json.loads(json.dumps(rollout.selection)), policy=asdict(rollout.policy),
                devices=[vars(run) for run in rollout.devices])
    return json.dumps(body, sort_keys=True)


def loads(rollout_id: int, revision: int, text: str) -> Rollout:
    body = json.loads(text)
    return Rollout(id=rollout_id, revision=revision, release=body["release"], selection=body["selection"],
                   phases=tuple(body["phases"]), policy=Policy(**body["policy"]),
                   devices=tuple(DeviceRun(**d) for d in body["devices"]), status=body["status"],
                   phase=body["phase"], reason=body["reason"], accepted_failures=body["accepted_failures"])
