"""The SWUpdate device's bootloader and power cuts (device/swboot): a trial boot cut short by power
loss is not charged to the firmware (the supervisor knows the reset cause), counts against a
larger limit instead, and confirmation clears the count; the environment the next boot starts
from is read without writing (what `fota-swdevice inspect` and the chaos verdict use)."""
from __future__ import annotations

from fotalab.device import swboot
from fotalab.formats.swu import EnvKey, UState, render_grubenv

GOOD = swboot.SlotImage(header=type("H", (), {"version": "2.0.0"})())


def on_trial(count: int, cuts: int = 0) -> dict[str, str]:
    env = {EnvKey.SLOT: "b", EnvKey.UPGRADE_AVAILABLE: "1", EnvKey.BOOTCOUNT: str(count), EnvKey.USTATE: "1"}
    return {**env, swboot.POWER_CUTS: str(cuts)} if cuts else env


def test_power_cuts_during_trial_boots_are_not_charged_to_the_firmware():
    env = on_trial(0)
    for _ in range(6):       # boot, cut, boot, cut...: never past the firmware's limit of 3
        decision = swboot.decide(env, lambda slot: GOOD, limit=3, power_on=env[EnvKey.BOOTCOUNT] != "0")
        assert decision.slot == "b" and decision.trial, decision.message
        env = decision.env
    assert env[EnvKey.BOOTCOUNT] == "1" and env[swboot.POWER_CUTS] == "5"
    # a crash (not a power-on) is charged as before
    crashed = swboot.decide(on_trial(3, cuts=5), lambda slot: GOOD, limit=3, power_on=False)
    assert crashed.slot == "a" and crashed.env[EnvKey.USTATE] == UState.FAILED
    assert swboot.POWER_CUTS not in crashed.env


def test_past_the_power_cut_limit_it_falls_back_all_the_same():
    decision = swboot.decide(on_trial(1, cuts=9), lambda slot: GOOD, limit=3, power_on=True, power_cut_limit=10)
    assert decision.slot == "a" and not decision.trial
    assert decision.env[EnvKey.USTATE] == UState.FAILED and "10 trial boots cut by power loss" in decision.message
    kept = swboot.decide(on_trial(1, cuts=8), lambda slot: GOOD, limit=3, power_on=True, power_cut_limit=10)
    assert kept.slot == "b" and kept.env[swboot.POWER_CUTS] == "9"


def test_confirmation_clears_the_power_cut_count(tmp_path):
    swboot.GrubEnv(tmp_path).write(on_trial(1, cuts=4))
    assert "confirmed" in swboot.confirm(tmp_path)
    env = swboot.GrubEnv(tmp_path).read()
    assert env[EnvKey.UPGRADE_AVAILABLE] == "0" and swboot.POWER_CUTS not in env


def test_peek_reads_the_copy_of_a_torn_environment_without_writing(tmp_path):
    grub = swboot.GrubEnv(tmp_path)
    grub.write({EnvKey.SLOT: "b", EnvKey.USTATE: UState.OK})
    grub.path.write_bytes(b"")                             # swupdate's unsynced rewrite, lost to a cut
    env, note = grub.peek()
    assert env[EnvKey.SLOT] == "b" and "restored" in note
    assert grub.path.read_bytes() == b""                   # peeking wrote nothing
    (grub.dir / swboot.ENV_COPY).unlink()
    env, note = grub.peek()
    assert env[EnvKey.SLOT] == "a" and "default entry" in note
    grub.path.write_bytes(render_grubenv({EnvKey.SLOT: "b"}))
    assert grub.peek() == ({EnvKey.SLOT: "b"}, "")
