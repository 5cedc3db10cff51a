"""The rollout state machine (server/rollouts.py): phases, gates, retries, quarantine, operator."""
from __future__ import annotations

import pytest

from fotalab.server import rollouts as ro
from fotalab.server.rollouts import DeviceFact, Policy

DEVICES = [f"d{n}" for n in range(1, 11)]


def make(specs=("1", "50%"), policy: Policy | None = None, devices=DEVICES) -> ro.Rollout:
    return ro.plan(7, "2.0.0", {"all": True}, list(devices), list(specs), policy or Policy())


def committed(ts: float = 100.0, version: str = "2.0.0") -> DeviceFact:
    return DeviceFact("committed", version, ts, {"confirmed": True})


def idle(ts: float = 1.0) -> DeviceFact:
    return DeviceFact("running", "1.0.0", ts, {"confirmed": True})


def test_phases_are_cumulative_and_end_with_everyone():
    assert ro.phase_sizes(["1", "50%"], 10) == (1, 5, 10)
    assert ro.phase_sizes(["2", "100%"], 3) == (2, 3)
    assert ro.phase_sizes([], 4) == (4,)
    assert ro.phase_sizes(["5"], 3) == (3,)
    for bad in (["0"], ["3", "2"], ["half"]):
        with pytest.raises(ro.RolloutError):
            ro.phase_sizes(bad, 10)
    with pytest.raises(ro.RolloutError, match="matches no device"):
        ro.phase_sizes(["1"], 0)


def test_only_the_canary_is_hinted_and_assigned_first():
    rollout, hints = ro.step(make(), {d: idle() for d in DEVICES}, now=10)
    assert hints == ["d1"]
    assert [d.status for d in rollout.devices[:2]] == [ro.OFFERED, ro.PENDING]
    assert rollout.devices[0].baseline_ts == 1.0


def test_download_is_not_success_commit_is_and_phases_follow_in_order():
    rollout, _ = ro.step(make(), {d: idle() for d in DEVICES}, now=10)
    facts = {d: idle() for d in DEVICES} | {"d1": DeviceFact("downloading", "1.0.0", 50.0, {})}
    rollout, hints = ro.step(rollout, facts, now=11)
    assert (rollout.phase, hints) == (0, [])
    facts["d1"] = DeviceFact("trial", "2.0.0", 60.0, {"confirmed": False})
    assert ro.step(rollout, facts, now=12)[0].phase == 0             # booted the release, not confirmed yet
    facts["d1"] = committed()
    rollout, hints = ro.step(rollout, facts, now=13)
    assert (rollout.phase, hints) == (1, ["d2", "d3", "d4", "d5"])
    facts |= {d: committed() for d in ("d2", "d3", "d4", "d5")}
    rollout, hints = ro.step(rollout, facts, now=14)
    assert (rollout.phase, hints) == (2, ["d6", "d7", "d8", "d9", "d10"])
    facts |= {d: committed() for d in DEVICES}
    rollout, hints = ro.step(rollout, facts, now=15)
    assert (rollout.status, hints) == (ro.COMPLETED, [])


def test_a_canary_that_rolls_back_trips_the_gate_and_no_one_else_is_offered():
    rollout, _ = ro.step(make(), {d: idle() for d in DEVICES}, now=10)
    rolled = DeviceFact("rolled_back", "1.0.0", 80.0, {"last_rollback": {"version": "2.0.0", "reason": "crashed",
                                                                         "cause": "firmware"}})
    rollout, hints = ro.step(rollout, {d: idle() for d in DEVICES} | {"d1": rolled}, now=11)
    assert rollout.status == ro.PAUSED and "d1" in rollout.reason and hints == []
    assert rollout.quarantined() == ["d1"]
    assert all(d.status == ro.PENDING for d in rollout.devices[1:])
    assert ro.step(rollout, {}, now=12) == (rollout, [])              # paused: nothing happens
    aborted = ro.abort(rollout)
    assert ro.assignments_to_clear(aborted) == ["d1"]


def test_abort_policy_and_quarantine_reported_by_the_device():
    rollout, _ = ro.step(make(policy=Policy(on_failure=ro.ABORTED)), {d: idle() for d in DEVICES}, now=10)
    refused = DeviceFact("failed", "1.0.0", 80.0, {"reason": "release 2.0.0 ... is quarantined here"})
    rollout, _ = ro.step(rollout, {"d1": refused}, now=11)
    assert rollout.status == ro.ABORTED and rollout.devices[0].status == ro.ROLLED_BACK


def test_transient_failures_retry_with_backoff_then_fail():
    policy = Policy(max_retries=2, backoff_s=5)
    rollout, _ = ro.step(make(["100%"], policy, ["d1"]), {"d1": idle()}, now=0)
    ts = 10.0
    for attempt, delay in ((1, 5), (2, 10)):
        rollout, _ = ro.step(rollout, {"d1": DeviceFact("failed", "1.0.0", ts, {"reason": "network down"})}, now=ts)
        run = rollout.devices[0]
        assert (run.status, run.retry_at, run.attempts) == (ro.OFFERED, ts + delay, attempt)
        assert ro.step(rollout, {}, now=ts + delay - 1)[1] == []          # still backing off
        rollout, hints = ro.step(rollout, {"d1": DeviceFact("failed", "1.0.0", ts, {})}, now=ts + delay)
        assert hints == ["d1"] and rollout.devices[0].baseline_ts == ts   # the old failure is not counted again
        ts += 100
    rollout, _ = ro.step(rollout, {"d1": DeviceFact("failed", "1.0.0", ts, {"reason": "network down"})}, now=ts)
    assert rollout.devices[0].status == ro.FAILED and rollout.status == ro.PAUSED


def test_a_power_cut_rollback_is_retried_not_quarantined():
    rollout, _ = ro.step(make(["100%"], devices=["d1"]), {"d1": idle()}, now=0)
    power = DeviceFact("rolled_back", "1.0.0", 5.0, {"last_rollback": {"version": "2.0.0", "cause": "power"}})
    rollout, _ = ro.step(rollout, {"d1": power}, now=1)
    assert rollout.devices[0].status == ro.OFFERED and rollout.devices[0].retry_at > 1
    assert rollout.status == ro.RUNNING


def test_an_unanswered_hint_is_sent_again():
    policy = Policy(rehint_s=30)
    rollout, _ = ro.step(make(["100%"], policy, ["d1"]), {"d1": idle(ts=3)}, now=0)
    assert ro.step(rollout, {"d1": idle(ts=3)}, now=29)[1] == []
    rollout, hints = ro.step(rollout, {"d1": idle(ts=3)}, now=30)
    assert hints == ["d1"] and rollout.devices[0].attempts == 1


def test_success_ratio_lets_a_phase_pass_without_every_device():
    rollout, _ = ro.step(make(["2"], Policy(success_ratio=0.5), ["d1", "d2", "d3"]), {}, now=0)
    rollout, hints = ro.step(rollout, {"d1": committed()}, now=1)
    assert rollout.phase == 1 and hints == ["d3"]


def test_operator_pause_resume_and_invalid_transitions():
    rollout = make()
    paused = ro.pause(rollout)
    with pytest.raises(ro.RolloutError, match="only a running"):
        ro.pause(paused)
    assert ro.resume(paused).status == ro.RUNNING
    done = ro.abort(paused)
    with pytest.raises(ro.RolloutError, match="only a paused"):
        ro.resume(done)
    with pytest.raises(ro.RolloutError, match="already aborted"):
        ro.abort(done)


def test_resuming_past_a_tripped_gate_accepts_those_failures_only():
    rollout, _ = ro.step(make(["1", "100%"], devices=["d1", "d2", "d3"]), {}, now=0)
    rolled = DeviceFact("rolled_back", "1.0.0", 80.0, {"last_rollback": {"version": "2.0.0", "cause": "firmware"}})
    rollout, _ = ro.step(rollout, {"d1": rolled}, now=1)
    assert rollout.status == ro.PAUSED
    rollout, hints = ro.step(ro.resume(rollout), {"d1": rolled}, now=2)
    assert rollout.status == ro.RUNNING and rollout.phase == 1 and hints == ["d2", "d3"]
    assert rollout.devices[0].status == ro.ROLLED_BACK                 # quarantined, never offered again
    failed = DeviceFact("failed", "1.0.0", 90.0, {"reason": "quarantined here"})
    rollout = ro.step(rollout, {"d1": rolled, "d2": failed}, now=3)[0]
    assert rollout.status == ro.PAUSED                                 # a new failure trips the gate again


def test_stored_form_round_trips():
    rollout, _ = ro.step(make(), {}, now=5)
    assert ro.loads(rollout.id, rollout.revision, ro.dumps(rollout)) == rollout
