"""The SWUpdate device's bootloader decisions (device/swboot) and lazyfs's held-writes model
(device/lazyfs.Overlay), without FUSE: boot counting, fallback with ustate=3, confirmation with
ustate=2, a torn environment restored from the bootloader's copy; writes held until a flush."""
from __future__ import annotations

from pathlib import Path

import pytest

from fotalab.device import swboot
from fotalab.device.lazyfs import PAGE, Overlay
from fotalab.formats.swu import EnvKey, UState

GOOD = swboot.SlotImage(header=type("H", (), {"version": "2.0.0"})())
BAD = swboot.SlotImage(None, "bad signature")


def trial(count: int) -> dict[str, str]:
    return {EnvKey.SLOT: "b", EnvKey.UPGRADE_AVAILABLE: "1", EnvKey.BOOTCOUNT: str(count), EnvKey.USTATE: "1"}


def test_a_trial_slot_boots_until_the_limit_then_the_bootloader_falls_back_and_says_failed():
    for count in range(3):
        decision = swboot.decide(trial(count), lambda slot: GOOD, limit=3)
        assert (decision.slot, decision.trial, decision.env[EnvKey.BOOTCOUNT]) == ("b", True, str(count + 1))
    decision = swboot.decide(trial(3), lambda slot: GOOD, limit=3)
    assert decision.slot == "a" and not decision.trial
    assert decision.env[EnvKey.USTATE] == UState.FAILED and decision.env[EnvKey.UPGRADE_AVAILABLE] == "0"


def test_a_trial_slot_that_does_not_verify_falls_back_at_once_and_nothing_bootable_halts():
    decision = swboot.decide(trial(0), lambda slot: BAD if slot == "b" else GOOD, limit=3)
    assert decision.slot == "a" and decision.env[EnvKey.USTATE] == UState.FAILED
    assert swboot.decide({EnvKey.SLOT: "a"}, lambda slot: BAD, limit=3).slot is None
    confirmed = swboot.decide({EnvKey.SLOT: "a"}, lambda slot: BAD if slot == "a" else GOOD, limit=3)
    assert confirmed.slot == "b" and confirmed.env[EnvKey.SLOT] == "b"


def test_confirm_ends_the_trial_with_ustate_testing_and_a_torn_env_is_restored(tmp_path: Path):
    env = swboot.GrubEnv(tmp_path)
    env.write(trial(1))
    assert "ustate=2" in swboot.confirm(tmp_path)
    assert env.read()[EnvKey.USTATE] == UState.TESTING and env.read()[EnvKey.UPGRADE_AVAILABLE] == "0"
    assert swboot.confirm(tmp_path) == ""                     # nothing on trial: nothing to confirm
    env.path.write_bytes(b"")                                 # SWUpdate's unsynced rewrite, cut
    restored, note = env.read_or_restore()
    assert restored[EnvKey.USTATE] == UState.TESTING and "restored" in note


def test_overlay_holds_writes_until_a_flush_and_reads_them_back(tmp_path: Path):
    (tmp_path / "f").write_bytes(b"A" * (PAGE + 10))
    overlay = Overlay(str(tmp_path))
    overlay.write("f", PAGE - 2, b"xyzw")
    overlay.write("f", 2 * PAGE, b"tail")
    assert overlay.read("f", PAGE - 4, 8) == b"AAxyzwAA"
    assert overlay.size("f", 0) == 2 * PAGE + 4
    assert overlay.read("f", PAGE + 10, PAGE) == b"\0" * (PAGE - 10) + b"tail"
    assert (tmp_path / "f").read_bytes() == b"A" * (PAGE + 10)     # nothing reached the backing file
    overlay.flush("f")
    data = (tmp_path / "f").read_bytes()
    assert data[PAGE - 2:PAGE + 2] == b"xyzw" and data.endswith(b"tail") and len(data) == 2 * PAGE + 4


@pytest.mark.parametrize("size", [0, 5, PAGE + 3])
def test_overlay_truncation_is_held_and_zero_fills_when_the_file_grows_again(tmp_path: Path, size: int):
    (tmp_path / "f").write_bytes(b"B" * (2 * PAGE))
    overlay = Overlay(str(tmp_path))
    overlay.truncate("f", size)
    overlay.write("f", size + 100, b"!")
    assert overlay.read("f", 0, size + 101) == b"B" * size + b"\0" * 100 + b"!"
    assert overlay.dirty["f"].flush_on_close == (size == 0)
    assert (tmp_path / "f").stat().st_size == 2 * PAGE             # held
    overlay.flush("f")
    assert (tmp_path / "f").read_bytes() == b"B" * size + b"\0" * 100 + b"!"


def test_overlay_forgets_on_unlink_and_moves_with_a_rename(tmp_path: Path):
    (tmp_path / "a").write_bytes(b"")
    overlay = Overlay(str(tmp_path))
    overlay.write("a", 0, b"new")
    overlay.moved("a", "b")
    assert "b" in overlay.dirty and "a" not in overlay.dirty
    overlay.forget("b")
    assert overlay.dirty == {}
