"""Crash-point sweep, MCUboot's method: cut power before every persistent operation of an
update, in three ways, and check the device always recovers.

For each scenario (a good update that commits; a bad release that must revert) a first,
uninterrupted run counts the N flash operations. Then, for every i in 1..N and every mode
(stop: the process dies before operation i; tear: operation i, a write, persists half;
lose: writes not yet fsynced are lost), a fresh device on a factory flash is updated with
the fault armed, powered on again without it, and driven to the end. Checks after the cut
and at the end: the bootloader would boot a verified image, the boot record parses, the
device ends on the expected version with no update pending, and the security counter never
exceeds that of the committed image.

Every link runs mutual TLS, as the compose lab does: each device presents a certificate of its
own from the sweep's lab CA to the broker and to the update server.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from ..device.config import DeviceConfig
from ..device.flash import FAULT_MODES, FaultPlan
from ..device.main import inspect
from ..protocol import Command
from .locallab import Broker, Device, Server, build_releases
from .provision import SERVER


@dataclass(frozen=True)
class Scenario:
    name: str
    release: str            # what the server assigns
    final_version: str      # where the device must end
    rolled_back: bool


SCENARIOS = (Scenario("update", "2.0.0", "2.0.0", False),
             Scenario("revert", "2.1.0", "1.0.0", True))


@dataclass
class Outcome:
    scenario: str
    fault: FaultPlan | None
    problems: list[str] = field(default_factory=list)
    bricked: bool = False
    operation: str = ""
    cut: bool = False          # False if the run never reached the armed operation


def finished(view: dict, scenario: Scenario) -> bool:
    """The device's flash (as `fota-device inspect` shows it) is where the scenario must end."""
    boot = view["boot"] or {}
    done = (view["running"] or {}).get("version") == scenario.final_version and boot.get("confirmed") \
        and view["journal"] is None
    return bool(done and (not scenario.rolled_back or (boot.get("rollback") or {}).get("version") == scenario.release))


def broken_invariants(view: dict, scenario: Scenario, *, at_end: bool) -> list[str]:
    """What must hold after a cut and at the end of a run; empty if all hold."""
    if view["boot"] is None:
        return ["no boot record parses"]
    if not view["bootable"]:
        return [f"bricked: {view['next_boot']}"]
    boot = view["boot"]
    committed_counter = view["slots"][boot["active"] if boot["confirmed"] else boot["previous"]]["security_counter"]
    broken = []
    if committed_counter is None or boot["security_counter"] > committed_counter:
        broken.append(f"security counter {boot['security_counter']} exceeds the committed image's {committed_counter}")
    if at_end and not finished(view, scenario):
        broken.append(f"runs {view['running']['version']} (confirmed: {boot['confirmed']}, last rollback: "
                      f"{boot['rollback']}) with journal {view['journal']}, expected {scenario.final_version}"
                      + (f" after rolling back {scenario.release}" if scenario.rolled_back else "")
                      + " and no update pending")
    if at_end and boot["security_counter"] != committed_counter:
        broken.append(f"security counter {boot['security_counter']} is not the committed image's {committed_counter}")
    return broken


class Sweep:
    def __init__(self, workdir: Path, *, timeout_s: float) -> None:
        self.workdir, self.timeout_s = workdir, timeout_s
        self.store = build_releases(workdir / "store")
        self.broker = Broker(workdir / "broker", tls=True, plaintext=False).start()
        self.servers = {s.release: Server(self.store, workdir / f"server-{s.release}.log", default_release=s.release,
                                          tls_files=self.broker.tls_files(SERVER)).start() for s in SCENARIOS}
        self.commands = self.broker.watcher()
        self.factory_flash = workdir / "factory-flash"
        self._provision()
        self._serial = 0
        self._lock = threading.Lock()

    def close(self) -> None:
        self.commands.close()
        for server in self.servers.values():
            server.stop()
        self.broker.stop()

    def _device(self, tag: str, scenario: Scenario) -> Device:
        run = self.workdir / "runs" / tag
        shutil.copytree(self.factory_flash, run / "flash")
        return Device(tag, run / "flash", self.store, self.broker, self.servers[scenario.release],
                      {"FOTA_FLASH_OPLOG": str(run / "ops.log")})

    def _provision(self) -> None:
        """First power-on once; every run starts from a copy of this factory-fresh flash."""
        device = Device("factory", self.factory_flash, self.store, self.broker, self.servers["2.0.0"])
        self.factory_flash.mkdir(parents=True)
        device.start()
        deadline = time.monotonic() + self.timeout_s
        while not self._flash(device)["bootable"]:
            if time.monotonic() > deadline:
                raise TimeoutError("factory provisioning did not finish")
            time.sleep(0.2)
        device.power_cut()
        for leftover in self.factory_flash.glob("*.tmp"):
            leftover.unlink()

    @staticmethod
    def _flash(device: Device) -> dict:
        return inspect(DeviceConfig(device_id=device.device_id, flash_dir=device.flash_dir))

    def _drive(self, device: Device, scenario: Scenario, until_dead: bool) -> dict | None:
        """Send update hints until the update finishes (or, with a fault armed, the power dies)."""
        deadline = time.monotonic() + self.timeout_s
        next_hint = 0.0
        while time.monotonic() < deadline:
            if until_dead and device.process.poll() is not None:
                return None
            flash = self._flash(device)
            if finished(flash, scenario):
                return flash
            if time.monotonic() >= next_hint:
                self.commands.command([device.device_id], {"cmd": Command.UPDATE})
                next_hint = time.monotonic() + 2.0
            time.sleep(0.1)
        raise TimeoutError(f"{scenario.name} did not finish within {self.timeout_s:.0f} s")

    def count_operations(self, scenario: Scenario) -> int:
        device = self._device(f"{scenario.name}-count", scenario)
        device.start()
        try:
            self._drive(device, scenario, until_dead=False)
        finally:
            device.power_cut()
        return len((device.flash_dir.parent / "ops.log").read_text().splitlines())

    def run(self, scenario: Scenario, fault: FaultPlan) -> Outcome:
        with self._lock:
            self._serial += 1
            tag = f"{scenario.name}-{fault.mode}-{fault.at}-{self._serial}"
        outcome = Outcome(scenario.name, fault)
        device = self._device(tag, scenario)
        try:
            device.start(FOTA_FLASH_FAULT=f"{fault.mode}@{fault.at}")
            try:
                final = self._drive(device, scenario, until_dead=True)
            except TimeoutError as exc:
                outcome.problems.append(f"with the fault armed: {exc}")
                return outcome
            device.power_cut()
            ops = (device.flash_dir.parent / "ops.log").read_text().splitlines()
            outcome.operation = ops[fault.at - 1] if len(ops) >= fault.at else "not reached"
            if final is None:          # the cut happened: check the flash, then power on again
                outcome.cut = True
                self._check(self._flash(device), scenario, outcome, after_cut=True)
                device.start()
                try:
                    final = self._drive(device, scenario, until_dead=False)
                except TimeoutError as exc:
                    outcome.problems.append(f"after power-on: {exc}")
                    final = self._flash(device)
            self._check(final, scenario, outcome, after_cut=False)
        finally:
            device.power_cut()
        return outcome

    @staticmethod
    def _check(flash: dict, scenario: Scenario, outcome: Outcome, *, after_cut: bool) -> None:
        when = "after the cut" if after_cut else "at the end"
        outcome.bricked = outcome.bricked or not flash["bootable"]
        problems = broken_invariants(flash, scenario, at_end=not after_cut)
        outcome.problems += [f"{when}: {problem}" for problem in problems]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="crash-sweep", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=3, help="devices run in parallel (default 3)")
    parser.add_argument("--modes", default=",".join(FAULT_MODES), help="comma-separated subset of stop,tear,lose")
    parser.add_argument("--timeout", type=float, default=90.0, help="seconds one run may take")
    parser.add_argument("--keep", action="store_true", help="keep the work directory for inspection")
    args = parser.parse_args(argv)
    modes = args.modes.split(",")
    workdir = Path(tempfile.mkdtemp(prefix="crash-sweep-"))
    started = time.monotonic()
    sweep = Sweep(workdir, timeout_s=args.timeout)
    try:
        counts = {s.name: sweep.count_operations(s) for s in SCENARIOS}
        plans = [(s, FaultPlan(mode, i)) for s in SCENARIOS for mode in modes for i in range(1, counts[s.name] + 1)]
        print(f"operations per uninterrupted run: {counts}; {len(plans)} cuts, {args.jobs} in parallel")
        with ThreadPoolExecutor(args.jobs) as pool:
            outcomes = list(pool.map(lambda plan: sweep.run(*plan), plans))
    finally:
        sweep.close()
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    print(f"\n{'scenario':<10}{'mode':<7}{'points':>8}{'cut':>6}{'failed':>8}{'bricked':>9}")
    for scenario in SCENARIOS:
        for mode in modes:
            rows = [o for o in outcomes if o.scenario == scenario.name and o.fault.mode == mode]
            print(f"{scenario.name:<10}{mode:<7}{len(rows):>8}{sum(o.cut for o in rows):>6}"
                  f"{sum(bool(o.problems) for o in rows):>8}"
                  f"{sum(o.bricked for o in rows):>9}")
    failed = [o for o in outcomes if o.problems]
    for outcome in failed:
        print(f"FAILED {outcome.scenario} {outcome.fault.mode}@{outcome.fault.at} ({outcome.operation}): "
              + "; ".join(outcome.problems))
    points = sum(counts.values())
    print(f"({time.monotonic() - started:.0f} s{', work dir kept: ' + str(workdir) if args.keep else ''})")
    print(f"crash-sweep: {points} points x {len(modes)} modes: {len(failed)} failed, "
          f"{sum(o.bricked for o in outcomes)} bricked")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
