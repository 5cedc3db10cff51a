"""Cut-point sweep in-process, MCUboot simulator's method: the crash sweep of scripts/crash-sweep
(lab/crashsweep.py) run against the pure engine and bootloader, in seconds instead of minutes.

For each of the lab's scenarios (2.0.0 commits; the bad 2.1.0 crashes at boot and the bootloader
reverts to 1.0.0) an uninterrupted run counts the N flash operations. Then for every operation
i in 1..N and every fault mode (stop: power dies before operation i; tear: operation i, a write,
persists half; lose: writes not yet fsynced are lost), a copy of one factory-fresh flash is
updated with the fault armed, powered on again without it (new Flash, new engine: nothing
volatile survives) and run to the end. After the cut and at the end the flash must satisfy the
lab's invariants, read the way `fota-device inspect` reads it.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from device_harness import FakeServer, PowerCut, power_on, sha, supervise

from fotalab.device.config import DeviceConfig
from fotalab.device.errors import Reboot
from fotalab.device.flash import FAULT_MODES, FaultPlan
from fotalab.device.main import inspect
from fotalab.formats.delta import best_delta
from fotalab.formats.image import Behaviour
from fotalab.formats.manifest import DeltaRef
from fotalab.lab.crashsweep import SCENARIOS, Scenario, broken_invariants, finished
from samples import edit, make_image, make_payload

SCENARIO = {scenario.name: scenario for scenario in SCENARIOS}
MIN_OPERATIONS = 10     # fewer would mean the run never got to download, stage or commit


@pytest.fixture(scope="module")
def factory_files(tmp_path_factory, release, release_key) -> Path:
    """What the factory programs: the 1.0.0 image and the trust anchor."""
    factory = tmp_path_factory.mktemp("factory")
    (factory / "fotalab-m4.img").write_bytes(release["v1"])
    (factory / "trust.pem").write_bytes(release_key.public_pem)
    return factory


@pytest.fixture(scope="module")
def factory_flash(tmp_path_factory, factory_files) -> Path:
    """A flash after its first power-on (provisioned, 1.0.0 committed): every run starts on a copy."""
    flash = tmp_path_factory.mktemp("factory-flash") / "flash"
    power_on(flash, factory_files, FakeServer())
    return flash


@pytest.fixture(scope="module")
def servers(release, release_key) -> dict[str, FakeServer]:
    """An in-memory server per release the lab assigns: 2.0.0, and 2.1.0 that crashes at boot
    (as in the lab's releases.toml: same security counter 2), each with a delta from 1.0.0."""
    v1 = release["v1"]
    bad = make_image(release_key, "2.1.0", edit(make_payload(1), 3), counter=2, behaviour=Behaviour.CRASH_AT_BOOT)
    images = {"2.0.0": release["v2"], "2.1.0": bad}
    offered = {}
    for version, image in images.items():
        delta = best_delta(v1, image)
        server = FakeServer()
        server.manifest = release["manifest_for"](image=image, version=version, counter=2, deltas=(
            DeltaRef(f"v1_to_{version}.delta", len(delta.data), sha(delta.data), "1.0.0", sha(v1), delta.encoding),))
        server.files = {sha(image): image, sha(delta.data): delta.data}
        offered[version] = server
    return offered


def flash_view(flash_dir: Path) -> dict:
    """The flash as the device's bootloader would see it at the next power-on (read-only)."""
    return inspect(DeviceConfig(device_id="dev-1", flash_dir=flash_dir))


class Sweep:
    """Runs one scenario on fresh copies of the factory flash, each in its own directory."""

    def __init__(self, scenario: Scenario, factory_files: Path, factory_flash: Path, server: FakeServer,
                 workdir: Path) -> None:
        self.scenario, self.factory_files, self.factory_flash = scenario, factory_files, factory_flash
        self.server, self.workdir = server, workdir

    def _fresh_device(self, tag: str) -> tuple[Path, Path]:
        flash = self.workdir / tag / "flash"
        shutil.copytree(self.factory_flash, flash)
        return flash, self.workdir / tag / "ops.log"

    def _supervise(self, flash: Path, oplog: Path, fault: FaultPlan | None = None) -> None:
        supervise(flash, self.factory_files, self.server, lambda: finished(flash_view(flash), self.scenario),
                  fault=fault, oplog=oplog)

    def count_operations(self) -> list[str]:
        """The operations of an uninterrupted run ("kind name", in order); it must end as expected."""
        flash, oplog = self._fresh_device("uninterrupted")
        self._supervise(flash, oplog)
        broken = self._broken_at_end(flash)
        assert not broken, f"{self.scenario.name} without a fault: {'; '.join(broken)}"
        return [line.split(" ", 1)[1] for line in oplog.read_text().splitlines()]

    def _broken_at_end(self, flash: Path) -> list[str]:
        """The lab's invariants at the end; and a reverted release must stay refused (quarantined)
        when the server offers it again, not install once more."""
        broken = broken_invariants(flash_view(flash), self.scenario, at_end=True)
        if self.scenario.rolled_back and not broken:
            engine, recorder = power_on(flash, self.factory_files, self.server)
            engine.resume()
            try:
                outcome = engine.check()
            except Reboot as reboot:
                outcome = f"installed again ({reboot})"
            if "quarantined" not in str(recorder.last[1].get("reason")):
                broken.append(f"{self.scenario.release} offered again: {outcome}, not refused as quarantined")
        return broken

    def cut(self, fault: FaultPlan) -> tuple[str, list[str]]:
        """Arm `fault`, run until it fires, power on without it and run to the end.
        Returns the operation cut (as the op log names it) and what went wrong."""
        flash, oplog = self._fresh_device(f"{fault.mode}-{fault.at}")
        problems = []
        try:
            self._supervise(flash, oplog, fault)
            problems.append("the armed cut was never reached: the run ended before it")
        except PowerCut:
            problems += [f"after the cut: {problem}"
                         for problem in broken_invariants(flash_view(flash), self.scenario, at_end=False)]
        except Exception as exc:      # a bug, not the cut: report it with the operation it follows
            problems.append(f"before the cut: {type(exc).__name__}: {exc}")
        ops = oplog.read_text().splitlines()
        operation = ops[fault.at - 1].split(" ", 1)[1] if len(ops) >= fault.at else "not reached"
        try:
            self._supervise(flash, oplog)
            problems += [f"at the end: {problem}" for problem in self._broken_at_end(flash)]
        except Exception as exc:
            problems.append(f"after power-on: {type(exc).__name__}: {exc}")
        shutil.rmtree(flash.parent)
        return operation, problems

    def run(self, mode: str) -> None:
        operations = self.count_operations()
        assert len(operations) > MIN_OPERATIONS, \
            f"an uninterrupted {self.scenario.name} takes only {len(operations)} flash operations: {operations}"
        failures = []
        for at, expected in enumerate(operations, start=1):
            operation, problems = self.cut(FaultPlan(mode, at))
            if operation not in (expected, "not reached"):
                problems.append(f"cut {operation!r}, but the uninterrupted run's operation {at} is {expected!r}")
            failures += [f"{self.scenario.name} {mode}@{at} ({operation}): {problem}" for problem in problems]
        assert not failures, f"{len(failures)} problems in {len(operations)} cuts:\n" + "\n".join(failures)


@pytest.fixture
def ram_dir(tmp_path) -> Iterator[Path]:
    """A directory in RAM (/dev/shm) where the machine has one, else tmp_path. The cuts are the
    storage layer's own simulation, so what the kernel does on fsync changes nothing a test sees;
    on tmpfs it costs nothing (the sweep takes a third to a fifth of the time it takes on disk)."""
    shm = Path("/dev/shm")
    if not (shm.is_dir() and os.access(shm, os.W_OK)):
        yield tmp_path
        return
    path = Path(tempfile.mkdtemp(prefix="cut-points-", dir=shm))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def sweep(ram_dir, factory_files, factory_flash, servers):
    """sweep(scenario name) -> a Sweep of that scenario, its runs in `ram_dir`."""
    def make(name: str) -> Sweep:
        scenario = SCENARIO[name]
        return Sweep(scenario, factory_files, factory_flash, servers[scenario.release], ram_dir)
    return make


@pytest.mark.parametrize("mode", FAULT_MODES)
def test_update_commits_after_a_cut_at_any_flash_operation(sweep, mode):
    sweep("update").run(mode)


@pytest.mark.parametrize("mode", FAULT_MODES)
def test_bad_release_reverts_after_a_cut_at_any_flash_operation(sweep, mode):
    sweep("revert").run(mode)
