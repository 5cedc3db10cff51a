"""The fleet simulator's pieces around the device's real engine: its power rail and flash, the
patcher it shares, its reporter, its credentials (lab/fleetsim, lab/provision); the engine pool's
and the handshake gate's order; the fleet split over processes."""
from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import threading

import pytest
from device_harness import Recorder, sha

from fotalab.device import journal as jr
from fotalab.device.bootloader import boot
from fotalab.device.engine import EngineConfig, UpdateEngine
from fotalab.device.errors import Reboot, UpdateFailed
from fotalab.envconfig import ConfigError, Env
from fotalab.formats.delta import apply_delta
from fotalab.lab.fleetsim import parts
from fotalab.lab.fleetsim.config import FleetSimConfig
from fotalab.lab.fleetsim.parts import Power, PowerCut, Priority, SimFlash, SimReporter, SimTransport, patcher
from fotalab.lab.fleetsim.session import Gate
from fotalab.lab.fleetsim.shards import merge, slices
from fotalab.lab.provision import Credentials, fleet_identities, sim_device_id, sim_password
from fotalab.protocol import Event, ResetReason, State


def countdown(operations: int):
    """A power rail's cut armed at the given flash operation."""
    left = [operations]

    def tick() -> bool:
        left[0] -= 1
        return left[0] == 0
    return tick


def power_on(flash_dir, factory, server, power, reason=ResetReason.POWER_ON):
    flash = SimFlash(flash_dir, power, writeback=True)
    plan, verifier = boot(flash, factory_image=factory / "fotalab-m4.img", trust_anchor=factory / "trust.pem",
                          limit=3, reset_reason=reason)
    recorder = Recorder()
    engine = UpdateEngine(EngineConfig("sim-00001", "fotalab-m4", chunk_size=4096, retries=3, backoff_s=0),
                          flash, plan.boot, verifier, server, recorder, patcher("cached", 4096), sleep=power.sleep)
    return engine, recorder, flash


@pytest.fixture
def full_image_server(server, release):
    """The stand-in server offering v2 as a full image (many 4 KiB chunks), no delta."""
    server.manifest = release["manifest_for"](deltas=())
    return server


def test_a_cut_mid_download_loses_unsynced_bytes_and_the_next_power_on_resumes_from_flash(
        tmp_path, factory_dir, full_image_server, release):
    flash_dir = tmp_path / "sim-00001"
    engine, _, _ = power_on(flash_dir, factory_dir, full_image_server, Power())
    # flash operations after the manifest check: the journal (5: dirsync, write, fsync, rename, dirsync),
    # download.part created (1), then per 4 KiB chunk its write, its fsync and the journal (7). Cut at the
    # sixth chunk's fsync: its write is held in the process (write-back) and must be lost.
    engine.flash.power = Power(countdown(5 + 1 + 7 * 5 + 2))
    with pytest.raises(PowerCut):
        engine.check()
    job = jr.load(jr_flash := SimFlash(flash_dir, Power(), writeback=True))
    assert job is not None and job.phase == "download" and 0 < job.offset < len(release["v2"])
    assert jr_flash.size(jr.DOWNLOAD) == job.offset            # the write held back in the process is gone

    fetched_before = full_image_server.fetched
    engine, recorder, _ = power_on(flash_dir, factory_dir, full_image_server, Power())
    with pytest.raises(Reboot):
        engine.resume()
    resumed = [fields for kind, fields in recorder.events if kind == Event.DOWNLOAD_RESUMED]
    assert resumed and resumed[0]["offset"] == job.offset
    assert full_image_server.fetched - fetched_before == len(release["v2"]) - job.offset

    engine, recorder, _ = power_on(flash_dir, factory_dir, full_image_server, Power(), "software reboot (staged)")
    assert engine.resume() == State.TRIAL
    engine.confirm()
    assert engine.running.version == "2.0.0" and recorder.last[0] == State.COMMITTED


def test_a_power_rail_turned_off_from_outside_stops_the_engine_thread_at_its_next_chunk(
        tmp_path, factory_dir, full_image_server):
    power = Power()
    engine, _, _ = power_on(tmp_path / "dev", factory_dir, full_image_server, power)
    engine.transport = SimTransport(None, power)

    class Http:        # the shared client: the transport's HTTP, here the stand-in server
        manifest_latency = type("L", (), {"add": lambda self, s: None})()

        def transport(self):
            return full_image_server
    engine.transport._http = Http()
    chunks = engine.transport.open_range(f"/artifacts/{sha(b'x')}", 0, 1)
    full_image_server.files[sha(b"x")] = b"x" * 100_000
    next(chunks)
    power.off()
    with pytest.raises(PowerCut):
        next(chunks)
    with pytest.raises(PowerCut):
        power.sleep(5)                   # a backoff sleep ends at once too


def test_the_shared_patcher_applies_once_per_base_and_delta_and_never_serves_another_base(
        tmp_path, release, monkeypatch):
    applied = []

    def counting(old, delta, limit):
        applied.append(sha(old))
        return apply_delta(old, delta, limit)
    monkeypatch.setattr(parts, "apply_delta", counting)
    base, delta = tmp_path / "base", tmp_path / "delta"
    base.write_bytes(release["v1"])
    delta.write_bytes(release["delta"].data)
    patch = patcher("cached", 4096)
    expected = apply_delta(release["v1"], release["delta"], len(release["v2"]))
    for _ in range(3):
        assert b"".join(patch(str(base), str(delta), release["delta"].encoding, len(release["v2"]))) == expected
    assert applied == [sha(release["v1"])]
    other = bytearray(release["v1"])
    other[len(other) // 2] ^= 1
    base.write_bytes(bytes(other))                    # another base: applied for real, never the cached result
    try:
        b"".join(patch(str(base), str(delta), release["delta"].encoding, len(release["v2"])))
    except UpdateFailed:
        pass
    assert applied == [sha(release["v1"]), sha(bytes(other))]


def test_the_reporter_sends_the_devices_payloads_and_nothing_once_the_power_is_off(
        tmp_path, factory_dir, server):
    power = Power()
    engine, _, flash = power_on(tmp_path / "dev", factory_dir, server, power)
    sent, seen = [], []
    reporter = SimReporter("sim-00007", "fotalab-m4", "sim", flash, engine.running, power,
                           lambda *message: sent.append(message), lambda *report: seen.append(report))
    reporter.state(State.RUNNING)
    reporter.event(Event.BOOTED, reset_reason=ResetReason.POWER_ON)
    (state_topic, state_body, retained), (event_topic, _, event_retained) = sent
    assert state_topic == "fota/v1/devices/sim-00007/state" and retained
    assert event_topic == "fota/v1/devices/sim-00007/events" and not event_retained
    assert '"group": "sim"' in state_body and '"version": "1.0.0"' in state_body
    assert [(kind, word) for kind, word, _ in seen] == [("state", State.RUNNING), ("events", Event.BOOTED)]
    power.off()
    with pytest.raises(PowerCut):
        reporter.state(State.RUNNING)
    assert len(sent) == 2


def test_virtual_identities_are_password_entries_derived_from_one_kept_secret(tmp_path):
    credentials = Credentials(tmp_path / "credentials")
    credentials.provision(fleet_identities(1), sim_devices=3, sim_directory=tmp_path / "sim")
    secret = (tmp_path / "sim" / "fleetsim.secret").read_text().strip().encode()
    entries = dict(line.split(":", 1) for line in (tmp_path / "credentials" / "passwd").read_text().splitlines())
    assert sorted(entries) == ["device-1", "fota-health", "fota-server", "sim-00001", "sim-00002", "sim-00003"]
    _, _, iterations, salt, digest = entries["sim-00002"].split("$")
    expected = hashlib.pbkdf2_hmac("sha512", sim_password(secret, "sim-00002").encode(), base64.b64decode(salt),
                                   int(iterations), 64)
    assert base64.b64decode(digest) == expected
    assert not list((tmp_path / "credentials").glob("sim-*"))       # no file per virtual device
    credentials.provision(fleet_identities(1), sim_devices=3, sim_directory=tmp_path / "sim")
    assert (tmp_path / "sim" / "fleetsim.secret").read_text().strip().encode() == secret
    assert sim_device_id(42) == "sim-00042"


def test_settings_are_validated_and_the_secret_comes_from_the_provisioners_file(tmp_path):
    (tmp_path / "fleetsim.secret").write_text("s3cret\n")
    config = FleetSimConfig.from_env(Env({"FOTA_SIM_DEVICES": "20", "FOTA_SIM_CREDENTIALS_DIR": str(tmp_path),
                                          "FOTA_SIM_CUT_SHARE": "0.25"}))
    assert (config.devices, config.secret, config.cut_share, config.device_id(0)) == (20, "s3cret", 0.25, "sim-00001")
    assert "s3cret" not in repr(config)
    for bad in ({"FOTA_SIM_CUT_SHARE": "2"}, {"FOTA_SIM_PATCH": "child"}, {"FOTA_SIM_DEVICES": "many"}):
        with pytest.raises(ConfigError):
            FleetSimConfig.from_env(Env(bad))



def test_the_engine_pool_takes_a_trial_before_queued_commands_and_first_boots():
    pool = parts.EnginePool(1)
    gate, order = threading.Event(), []
    blocker = pool.submit(Priority.COMMAND, gate.wait)           # the one thread is busy
    done = [pool.submit(priority, lambda name=name: order.append(name))
            for priority, name in ((Priority.FIRST_BOOT, "first boot"), (Priority.COMMAND, "check 1"),
                                   (Priority.COMMAND, "check 2"), (Priority.TRIAL, "trial"))]
    cut = pool.submit(Priority.TRIAL, lambda: (_ for _ in ()).throw(PowerCut()))
    gate.set()
    blocker.result(5)
    for future in done:
        future.result(5)
    with pytest.raises(PowerCut):                   # a BaseException reaches the device, not the thread
        cut.result(5)
    assert order == ["trial", "check 1", "check 2", "first boot"]
    pool.shutdown()


def test_the_handshake_gate_lets_a_few_through_at_once_trials_first_and_survives_cancellation():
    async def scenario() -> list[str]:
        gate, inside, order = Gate(2), [], []

        async def handshake(name: str, priority: int, hold: asyncio.Event) -> None:
            async with gate.slot(priority):
                inside.append(name)
                order.append(name)
                assert len(inside) <= 2
                await hold.wait()
                inside.remove(name)
        hold = asyncio.Event()
        tasks = [asyncio.create_task(handshake(name, priority, hold)) for name, priority in
                 (("a", Priority.COMMAND), ("b", Priority.COMMAND), ("c", Priority.FIRST_BOOT),
                  ("d", Priority.COMMAND), ("cut", Priority.TRIAL), ("e", Priority.TRIAL))]
        await asyncio.sleep(0.01)
        assert gate.waiting == 4
        tasks[4].cancel()                             # a device cut while it waited: its turn goes on
        await asyncio.sleep(0.01)
        hold.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        assert gate.waiting == 0
        async with gate.slot(Priority.COMMAND), gate.slot(Priority.COMMAND):
            pass                                       # both slots free again
        return order
    assert asyncio.run(scenario()) == ["a", "b", "e", "d", "c"]


def test_the_fleet_splits_over_processes_by_device_and_merges_their_status(tmp_path):
    config = FleetSimConfig(devices=10_001, processes=0, power_on_rate=200, status_file=tmp_path / "status.json")
    parts_ = slices(config)
    assert len(parts_) == min(2 * (os.cpu_count() or 1), 10)
    assert sum(p.devices for p in parts_) == 10_001 and parts_[0].first == 1
    assert all(b.first == a.first + a.devices for a, b in zip(parts_, parts_[1:]))
    assert {p.seed for p in parts_} == {config.seed}       # a device's cut plan is the same however split
    files = {p.status_file for p in parts_}
    assert len(files) == len(parts_) and config.status_file not in files
    assert slices(FleetSimConfig(devices=20, processes=0))[0].devices == 20
    assert [p.devices for p in slices(FleetSimConfig(devices=5, processes=3))] == [2, 2, 1]
    one = {"ts": 10.0, "started": 1.0, "devices": 3, "online": 2, "states": {"committed": 2, "trial": 1},
           "connect_p99_ms": 30.0, "manifest_p99_ms": None, "longest": [["sim-00003", "booting", 2.0]],
           "error_samples": ["sim-00001: x"]}
    two = {"ts": 11.0, "started": 2.0, "devices": 2, "online": 2, "states": {"committed": 2},
           "connect_p99_ms": 90.0, "manifest_p99_ms": 12.5, "longest": [["sim-00005", "rebooting", 9.0]]}
    merged = merge([one, two])
    assert (merged["processes"], merged["ts"], merged["devices"], merged["online"]) == (2, 10.0, 5, 4)
    assert merged["states"] == {"committed": 4, "trial": 1}
    assert (merged["connect_p99_ms"], merged["manifest_p99_ms"]) == (90.0, 12.5)
    assert merged["longest"][0] == ["sim-00005", "rebooting", 9.0] and merged["error_samples"] == ["sim-00001: x"]
