"""The storage layer's fault injection: stop, tear and lose at a chosen operation."""
import pytest

from fotalab.device.errors import FlashDisciplineError
from fotalab.device.flash import FaultPlan, Flash


class PowerCut(Exception):
    pass


def cut() -> None:
    raise PowerCut


def flash_with(tmp_path, fault: str | None = None, **kwargs) -> Flash:
    return Flash(tmp_path, fault=FaultPlan.parse(fault) if fault else None, power_off=cut,
                 oplog=tmp_path.parent / "ops.log", **kwargs)


def test_replace_is_write_fsync_rename_dirsync(tmp_path):
    flash = flash_with(tmp_path / "f")
    flash.replace("record", b"new")
    kinds = [line.split()[1] for line in (tmp_path / "ops.log").read_text().splitlines()]
    assert kinds == ["dirsync", "write", "fsync", "rename", "dirsync"]
    assert flash.read("record") == b"new"


@pytest.mark.parametrize("at", [1, 2, 3, 4])
def test_cut_before_rename_keeps_the_old_content(tmp_path, at):
    Flash(tmp_path / "f").replace("record", b"old")
    flash = flash_with(tmp_path / "f", f"stop@{at}")
    with pytest.raises(PowerCut):
        flash.replace("record", b"new")
    assert Flash(tmp_path / "f").read("record") == b"old"


def test_torn_write_persists_only_a_prefix(tmp_path):
    flash = flash_with(tmp_path / "f", "tear@2")
    handle = flash.open_at("part", 0)     # op 1: dirsync of the new file
    with pytest.raises(PowerCut):
        handle.write(b"abcdefgh")         # op 2: torn
    assert (tmp_path / "f" / "part").read_bytes() == b"abcd"


def test_lost_writes_never_reach_the_file(tmp_path):
    flash = flash_with(tmp_path / "f", "lose@4")
    handle = flash.open_at("part", 0)     # op 1
    handle.write(b"synced")               # op 2
    handle.sync()                         # op 3
    with pytest.raises(PowerCut):
        handle.write(b"-pending")         # op 4: cut before it
    assert (tmp_path / "f" / "part").read_bytes() == b"synced"


def test_writeback_holds_writes_until_fsync(tmp_path):
    flash = flash_with(tmp_path / "f", writeback=True)
    handle = flash.open_at("part", 0)
    handle.write(b"data")
    assert (tmp_path / "f" / "part").read_bytes() == b""
    with pytest.raises(FlashDisciplineError):
        flash.read("part")
    handle.sync()
    assert flash.read("part") == b"data"


def test_open_at_cuts_off_bytes_beyond_the_offset(tmp_path):
    flash = Flash(tmp_path)
    with flash.open_at("part", 0) as handle:
        handle.write(b"0123456789")
        handle.sync()
    with flash.open_at("part", 4) as handle:
        handle.write(b"xy")
        handle.sync()
    assert flash.read("part") == b"0123xy"


def test_op_numbers_continue_across_reboots(tmp_path):
    flash_with(tmp_path / "f").replace("a", b"1")
    again = flash_with(tmp_path / "f")
    assert again.oplog.count == 5
    again.replace("b", b"2")
    assert again.oplog.count == 10


def test_bad_fault_spec_says_what_is_expected():
    with pytest.raises(ValueError, match="MODE@N"):
        FaultPlan.parse("explode@3")
