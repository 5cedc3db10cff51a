"""Boot-control record and the bootloader's decisions (pure logic)."""
from dataclasses import replace

import pytest

from fotalab.device.bootctl import BootControl, BootState, committed, factory_state, staged
from fotalab.device.bootloader import SlotCheck, plan_boot
from fotalab.device.flash import Flash
from fotalab.formats.image import ImageHeader


def test_record_round_trips_and_rejects_a_torn_copy():
    state = staged(factory_state(1), "b")
    raw = state.encode()
    assert BootState.decode(raw) == state
    assert BootState.decode(raw[:40]) is None
    assert BootState.decode(raw[:10] + b"X" + raw[11:]) is None


def test_store_overwrites_the_older_copy_and_load_takes_the_newest(tmp_path):
    control = BootControl(Flash(tmp_path))
    first = control.store(factory_state(1))
    second = control.store(staged(first, "b"))
    third = control.store(committed(second, 2))
    copies = control.copies()
    assert sorted(c.seq for c in copies) == [second.seq, third.seq]
    assert control.load() == third


def test_torn_newest_copy_falls_back_to_the_previous_record(tmp_path):
    flash = Flash(tmp_path)
    control = BootControl(flash)
    first = control.store(factory_state(1))
    second = control.store(staged(first, "b"))
    newest = "bootctl.0" if control.copies()[0].seq == second.seq else "bootctl.1"
    (tmp_path / newest).write_bytes(second.encode()[:100])      # torn
    assert control.load() == first


def check(versions: dict[str, tuple[str, int] | None]):
    """A slot checker over fake slots: slot -> (version, security counter) or None for corrupt."""
    def run(slot: str) -> SlotCheck:
        info = versions.get(slot)
        if info is None:
            return SlotCheck(slot, None, "00", "signature does not match")
        return SlotCheck(slot, ImageHeader(info[0], info[1], "fotalab-m4", 1), info[0])
    return run


def test_trial_boot_counts_attempts_then_reverts_with_a_reason():
    state = staged(factory_state(1), "b")
    slots = check({"a": ("1.0.0", 1), "b": ("2.0.0", 2)})
    for attempt in (1, 2, 3):
        plan = plan_boot(state, slots, limit=3, reset_reason="crash (exit 1)")
        assert (plan.boot.slot, plan.state.attempts) == ("b", attempt)
        state = plan.state
    plan = plan_boot(state, slots, limit=3, reset_reason="crash (exit 1)")
    assert plan.boot.slot == "a" and plan.state.confirmed
    assert plan.state.rollback.version == "2.0.0"
    assert "not confirmed after 3 attempts (last reset: crash (exit 1))" in plan.state.rollback.reason


def test_unverifiable_trial_image_falls_back_to_the_confirmed_slot():
    plan = plan_boot(staged(factory_state(1), "b"), check({"a": ("1.0.0", 1), "b": None}), limit=3,
                     reset_reason="power-on")
    assert plan.boot.slot == "a"
    assert "failed verification" in plan.state.rollback.reason


def test_image_below_the_security_counter_does_not_boot():
    state = replace(factory_state(2), active="b")
    plan = plan_boot(state, check({"a": ("1.0.0", 1), "b": None}), limit=3, reset_reason="power-on")
    assert plan.boot is None
    assert "anti-rollback" in plan.message


def test_committed_raises_the_security_counter_only_upwards():
    assert committed(staged(factory_state(2), "b"), 1).security_counter == 2
    assert committed(staged(factory_state(2), "b"), 3).security_counter == 3


@pytest.mark.parametrize("slots", [{"a": None, "b": None}, {}])
def test_no_verifiable_slot_means_no_boot(slots):
    plan = plan_boot(factory_state(1), check(slots), limit=3, reset_reason="power-on")
    assert plan.boot is None and "no bootable image" in plan.message


def test_power_cuts_during_a_trial_are_not_charged_to_the_firmware():
    state = staged(factory_state(1), "b")
    slots = check({"a": ("1.0.0", 1), "b": ("2.0.0", 2)})
    for _ in range(9):          # each trial boot ends in a power cut
        state = plan_boot(state, slots, limit=3, reset_reason="power-on", power_cut_limit=10).state
    assert (state.active, state.confirmed, state.attempts, state.power_cuts) == ("b", False, 1, 8)
    plan = plan_boot(state, slots, limit=3, reset_reason="power-on", power_cut_limit=10)
    assert plan.boot.slot == "b" and plan.state.power_cuts == 9
    plan = plan_boot(plan.state, slots, limit=3, reset_reason="power-on", power_cut_limit=10)
    assert plan.boot.slot == "a"
    assert plan.state.rollback.cause == "power" and "10 power cuts" in plan.state.rollback.reason


def test_a_crash_after_power_cuts_still_counts_against_the_firmware():
    state = staged(factory_state(1), "b")
    slots = check({"a": ("1.0.0", 1), "b": ("2.0.0", 2)})
    for reason in ("power-on", "power-on", "crash (exit 1)", "crash (exit 1)", "crash (exit 1)"):
        state = plan_boot(state, slots, limit=3, reset_reason=reason).state
    assert state.active == "a" and state.rollback.cause == "firmware"
