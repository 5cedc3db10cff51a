"""The update engine against an in-memory server, on a real flash directory.

Bad-input cases assert the device keeps its running image, writes no boot state, and
reports a clear reason; none of them lets the patcher see unverified bytes.
"""
from __future__ import annotations

from pathlib import Path

import pytest
from device_harness import FakeServer, Recorder, boot_records, in_process_patcher, power_on, sha

from fotalab.device import journal as jr
from fotalab.device.bootctl import BootControl
from fotalab.device.errors import Reboot, TransportError
from fotalab.device.flash import Flash
from fotalab.formats.manifest import DeltaRef
from samples import edit, flip, make_image, make_payload


def test_delta_update_stages_reboots_into_trial_and_commits(tmp_path, factory_dir, server, release):
    engine, _ = power_on(tmp_path / "flash", factory_dir, server)
    with pytest.raises(Reboot):
        engine.check()
    assert server.fetched == len(release["delta"].data)
    engine, recorder = power_on(tmp_path / "flash", factory_dir, server)
    assert engine.running.version == "2.0.0" and engine.running.slot == "b"
    assert engine.resume() == "trial"
    engine.confirm()
    state = BootControl(Flash(tmp_path / "flash")).load()
    assert state.confirmed and state.security_counter == 2
    assert recorder.last[0] == "committed"
    assert jr.load(Flash(tmp_path / "flash")) is None


def test_flaky_link_drops_are_retried_and_nothing_is_fetched_twice(tmp_path, factory_dir, server, release):
    server.manifest = release["manifest_for"](deltas=())       # full image: several chunks
    server.cut_after = 8192                                   # the link drops every 8 KiB
    engine, recorder = power_on(tmp_path / "flash", factory_dir, server)
    with pytest.raises(Reboot):
        engine.check()
    assert server.fetched == len(release["v2"])
    assert sum(kind == "retry" for kind, _ in recorder.events) >= len(release["v2"]) // 8192


def test_link_that_makes_no_progress_fails_and_the_journal_resumes_later(tmp_path, factory_dir, server, release):
    server.manifest = release["manifest_for"](deltas=())
    server.cut_after = 8192
    engine, recorder = power_on(tmp_path / "flash", factory_dir, server)
    original = server.open_range
    calls = []

    def stuck_after_two(url, start, end):
        calls.append(start)
        if len(calls) > 2:
            raise TransportError("connection reset")
        return original(url, start, end)
    server.open_range = stuck_after_two
    assert engine.check() == "failed"
    assert "times in a row" in recorder.last[1]["reason"]
    offset = jr.load(Flash(tmp_path / "flash")).offset
    assert offset == 2 * 8192
    server.open_range, server.cut_after = original, None
    engine, recorder = power_on(tmp_path / "flash", factory_dir, server)
    with pytest.raises(Reboot):
        engine.check()
    assert server.fetched == len(release["v2"])               # not one byte fetched twice
    assert any(kind == "download_resumed" for kind, _ in recorder.events)


def test_delta_for_another_base_falls_back_to_the_full_image(tmp_path, factory_dir, server, release):
    other = DeltaRef("x.delta", 10, "ee" * 32, "0.9.0", "ff" * 32, "bsdiff4")
    server.manifest = release["manifest_for"](deltas=(other,))
    engine, _ = power_on(tmp_path / "flash", factory_dir, server)
    with pytest.raises(Reboot):
        engine.check()
    assert server.fetched == len(release["v2"])


def assert_untouched(tmp_path: Path, factory_dir: Path, server: FakeServer, before: dict, recorder: Recorder,
                     reason: str) -> None:
    assert recorder.last[0] == "failed"
    assert reason in recorder.last[1]["reason"]
    assert boot_records(tmp_path / "flash") == before
    engine, _ = power_on(tmp_path / "flash", factory_dir, server)
    assert (engine.running.version, engine.running.slot) == ("1.0.0", "a")


@pytest.mark.parametrize("where", ["first", "middle", "last"])
@pytest.mark.parametrize("artifact", ["delta", "image"])
def test_corrupted_artifact_is_rejected_before_patching(tmp_path, factory_dir, server, release, where, artifact):
    if artifact == "image":
        server.manifest = release["manifest_for"](deltas=())
    key = sha(release["delta"].data if artifact == "delta" else release["v2"])
    server.files[key] = flip(server.files[key], where)
    engine, recorder = power_on(tmp_path / "flash", factory_dir, server)
    before = boot_records(tmp_path / "flash")
    engine.patcher = lambda *a: pytest.fail("patcher saw unverified bytes")
    assert engine.check() == "failed"
    assert_untouched(tmp_path, factory_dir, server, before, recorder, "but the signed manifest says")


def test_truncated_artifact_is_rejected(tmp_path, factory_dir, server, release):
    key = sha(release["delta"].data)
    server.files[key] = server.files[key][:-7]
    engine, recorder = power_on(tmp_path / "flash", factory_dir, server)
    before = boot_records(tmp_path / "flash")
    assert engine.check() == "failed"
    assert_untouched(tmp_path, factory_dir, server, before, recorder, "ended at byte")


def test_overlong_artifact_is_cut_at_the_signed_length(tmp_path, factory_dir, server, release):
    key = sha(release["delta"].data)
    server.files[key] = server.files[key] + b"EXTRA" * 20000
    engine, recorder = power_on(tmp_path / "flash", factory_dir, server)
    with pytest.raises(Reboot):
        engine.check()
    assert (tmp_path / "flash" / jr.DOWNLOAD).stat().st_size == len(release["delta"].data)


@pytest.mark.parametrize("case, match", [
    ("foreign_key", "no signed rotation leads from trusted key"),
    ("downgrade", "not newer"),
    ("foreign_hardware", "is for hardware"),
    ("flipped_manifest", "manifest rejected"),
])
def test_manifest_not_for_this_device_installs_nothing(tmp_path, factory_dir, server, release, foreign_key,
                                                      case, match):
    make = release["manifest_for"]
    server.manifest = {
        "foreign_key": lambda: make(signer=foreign_key),
        "downgrade": lambda: make(version="0.9.0"),
        "foreign_hardware": lambda: make(hardware="other-board"),
        "flipped_manifest": lambda: flip(make(), "middle"),
    }[case]()
    engine, recorder = power_on(tmp_path / "flash", factory_dir, server)
    before = boot_records(tmp_path / "flash")
    assert engine.check() == "failed"
    assert server.fetched == 0
    assert_untouched(tmp_path, factory_dir, server, before, recorder, match)


def test_image_signed_by_another_key_is_not_staged(tmp_path, factory_dir, server, release, foreign_key):
    forged = make_image(foreign_key, "2.0.0", make_payload(9), counter=2)
    server.manifest = release["manifest_for"](image=forged, deltas=())
    server.files[sha(forged)] = forged
    engine, recorder = power_on(tmp_path / "flash", factory_dir, server)
    before = boot_records(tmp_path / "flash")
    assert engine.check() == "failed"
    assert_untouched(tmp_path, factory_dir, server, before, recorder, "failed verification")


def test_rolled_back_release_is_reported_and_quarantined(tmp_path, factory_dir, server, release, release_key):
    from fotalab.formats.image import Behaviour
    bad = make_image(release_key, "2.0.0", edit(make_payload(1), 2), counter=2, behaviour=Behaviour.CRASH_AT_BOOT)
    server.manifest = release["manifest_for"](image=bad, deltas=())
    server.files[sha(bad)] = bad
    engine, _ = power_on(tmp_path / "flash", factory_dir, server)
    with pytest.raises(Reboot):
        engine.check()
    for _ in range(4):     # three trial boots crash, the fourth boot reverts
        engine, recorder = power_on(tmp_path / "flash", factory_dir, server, reset_reason="crash (exit 1)")
    assert engine.running.version == "1.0.0"
    assert engine.resume() == "rolled_back"
    assert recorder.last[0] == "rolled_back" and "not confirmed after 3 attempts" in recorder.last[1]["reason"]
    assert engine.check() == "failed"
    assert "quarantined" in recorder.last[1]["reason"]


def test_delta_that_fails_to_apply_falls_back_to_the_full_image(tmp_path, factory_dir, server, release):
    from fotalab.device.errors import UpdateFailed

    def rejecting_patcher(base, artifact, encoding, max_output):
        if encoding:
            raise UpdateFailed("patching failed (exit 2): delta rejected")
        yield from in_process_patcher(base, artifact, encoding, max_output)
    engine, recorder = power_on(tmp_path / "flash", factory_dir, server)
    engine.patcher = rejecting_patcher
    with pytest.raises(Reboot):
        engine.check()
    assert server.fetched == len(release["delta"].data) + len(release["v2"])
    assert any(kind == "delta_rejected" for kind, _ in recorder.events)
    assert BootControl(Flash(tmp_path / "flash")).load().active == "b"


def test_cut_after_the_last_byte_resumes_without_fetching_again(tmp_path, factory_dir, server, release):
    class PowerCut(Exception):
        pass

    def cut(*args):
        raise PowerCut
    engine, _ = power_on(tmp_path / "flash", factory_dir, server)
    engine.patcher = cut                      # power dies right after the download
    with pytest.raises(PowerCut):
        engine.check()
    flash = Flash(tmp_path / "flash")
    job = jr.load(flash)
    jr.store(flash, job.advance(phase="download", offset=job.artifact.length))   # the phase change was cut
    fetched = server.fetched
    engine, _ = power_on(tmp_path / "flash", factory_dir, server)
    with pytest.raises(Reboot):
        engine.resume()
    assert server.fetched == fetched


def test_rollback_caused_by_power_cuts_does_not_quarantine_the_release(tmp_path, factory_dir, server):
    engine, _ = power_on(tmp_path / "flash", factory_dir, server)
    with pytest.raises(Reboot):
        engine.check()
    for _ in range(11):      # every trial boot loses its power before it can confirm
        engine, recorder = power_on(tmp_path / "flash", factory_dir, server)
    assert engine.running.version == "1.0.0"
    assert engine.resume() == "rolled_back"
    assert "power cuts" in recorder.last[1]["reason"]
    with pytest.raises(Reboot):     # the release is offered again and installs
        engine.check()
