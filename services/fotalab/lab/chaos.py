"""Chaos campaign against the running lab, compose or Swarm stack: seeded `docker kill`s, then a verdict.

The lab is the compose project (containers found by compose's labels) or, with --stack or when
only a stack runs here, a Swarm stack (lab/swarmlab.py: containers found by Swarm's labels; a
killed task's container is started again by Swarm, on the same slot, with the same flash).

`scripts/chaos` (see --help) triggers the update on every device, then, on a seeded random
schedule, cuts the power of a random device (`docker kill`) in whatever phase it is
(downloading, patching, trial boot, idle), keeps it off for a random time and starts it
again. With --reset-waves, a converged device picked for a kill is reset to its factory flash
instead and updated again, so a long campaign keeps hitting every phase. Afterwards it waits (bounded) for the
fleet to settle and checks every device from its own flash (`fota-device inspect`): never
bricked, on the target version with no update pending, security counter equal to the
committed image's, no committed version lost, and the server's registry and history agreeing
with the flash. It only observes and checks, so kills from
another tool at the same time are fine.

SWUpdate devices (swupdate-N, `scripts/fleet N --swupdate M`) are campaigned alike, with what
they offer instead of MQTT (lab/swfleet.py): their state from the server's registry, the API's
trigger as their hint, their phase at a cut and their verdict from their flash (GRUB environment
and slots: bricked when no slot would boot, converged when the slot it boots holds the target,
confirmed, and the server recorded that commit). They get no reset waves: the server cannot
tell that a DDI client's flash went back to factory. `--devices swupdate` cuts only them;
`--aim` cuts a device only while it is in the middle of an update (and stops after 90 s without
one). It writes a JSON report and ends with

    chaos: <K> kills on <N> devices: <B> bricked, <C>/<N> converged, recovery p99 <s> s
"""
from __future__ import annotations

import argparse
import json
import math
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Protocol

import requests

from ..formats.image import parse_version
from ..protocol import SUCCESS_STATES, Command, Event, State
from . import swarmlab
from .composelab import ComposeLab
from .fleetwatch import FleetWatcher
from .labaccess import LabAccess, reach, reach_plaintext
from .serverrecord import last_commit, until_server_agrees
from .swfleet import SwFleet, is_swdevice

PHASES = {State.CHECKING: "checking", State.DOWNLOADING: "downloading", State.INSTALLING: "patching",
          State.REBOOTING: "trial boot", State.TRIAL: "trial boot", State.CONFIRMING: "confirming"}


@dataclass
class Kill:
    device: str
    phase: str
    at: float
    off_s: float
    started_at: float = 0.0
    recovery_s: float | None = None
    interrupted: bool = False     # cut again before it had booted: no recovery to time


@dataclass
class Verdict:
    device: str
    bricked: bool
    converged: bool
    problems: list[str] = field(default_factory=list)
    flash: dict = field(default_factory=dict)


def p99(values: list[float]) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(0.99 * len(ordered)) - 1)]


class Campaign:
    def __init__(self, lab: Lab, watcher: FleetWatcher, *, server_url: str, http: requests.Session, target: str,
                 kills: int, seed: int, off_s: tuple[float, float], gap_s: tuple[float, float], reset_waves: bool,
                 infra_share: float = 0.0, which: str = "all", aim: bool = False, sw: SwFleet | None = None,
                 devices: list[str] | None = None) -> None:
        self.lab, self.watcher, self.server_url, self.target, self.quota = lab, watcher, server_url, target, kills
        self.http = http
        self.rng = random.Random(seed)
        self.off_s, self.gap_s, self.reset_waves, self.infra_share = off_s, gap_s, reset_waves, infra_share
        self.devices = devices if devices is not None else lab.device_containers()
        self.aim, self.sw = aim, sw
        # the devices whose power it cuts (all of them are judged)
        self.targets = [d for d in self.devices if which == "all" or (which == "swupdate") == is_swdevice(d)]
        self.kills: list[Kill] = []
        self.off: set[str] = set()
        self.highest_committed: dict[str, str] = {}
        self.reset_at: dict[str, float] = {}
        self.resets = 0
        self.notes: list[str] = []     # what happened beside the kills (node kills), for the report
        self._lock = threading.Lock()

    # -- observing
    def state(self, device: str) -> dict:
        if self.sw and is_swdevice(device):
            return self.sw.states.get(device, {})
        return self.watcher.states.get(device, {})

    def converged(self, device: str) -> bool:
        if self.sw and is_swdevice(device):
            return self.sw.converged(device, self.target)
        state = self.state(device)
        return state.get("version") == self.target and bool(state.get("confirmed")) and \
            state.get("state") in SUCCESS_STATES and \
            state.get("ts", 0) > self.reset_at.get(device, 0)

    def note_commits(self) -> None:
        for device in self.devices:
            for event in self.watcher.events.get(device, []):
                if event.get("event") == Event.COMMITTED and event["ts"] > self.reset_at.get(device, 0):
                    best = self.highest_committed.get(device, "0.0.0")
                    if parse_version(event["version"]) > parse_version(best):
                        self.highest_committed[device] = event["version"]

    # -- acting
    def hint(self, devices: list[str] | None = None) -> None:
        if self.sw:
            self.sw.hint([d for d in (self.devices if devices is None else devices) if is_swdevice(d)])
            if devices is not None:
                devices = [d for d in devices if not is_swdevice(d)]
                if not devices:
                    return
        try:
            self.watcher.command(devices, {"cmd": Command.UPDATE})
        except (RuntimeError, ValueError):      # the broker is down this moment: the next hint will do
            pass

    def in_update(self, device: str) -> bool:
        """In the middle of an update (what --aim waits for)."""
        if self.sw and is_swdevice(device):
            return self.sw.in_update(device)
        return self.state(device).get("state", "") in PHASES

    def boot_times(self, device: str) -> list[float]:
        """When the device booted: its `booted` events, or an SWUpdate device's firmware starting."""
        if self.sw and is_swdevice(device):
            return list(self.sw.boots.get(device, []))
        return [e["ts"] for e in self.watcher.events.get(device, []) if e.get("event") == Event.BOOTED]

    def hint_all(self) -> None:
        self.hint(None)

    def power_cycle(self, device: str) -> None:
        """Kill a service and start it again after a random time (devices: a power cut)."""
        if self.sw and is_swdevice(device):
            phase = self.sw.phase(device)
        else:
            phase = PHASES.get(self.state(device).get("state", ""), "idle") if device in self.devices else device
        off = self.rng.uniform(*self.off_s)
        kill = Kill(device, phase, time.time(), round(off, 2))
        try:
            self.lab.kill(device)
        except (LookupError, RuntimeError, subprocess.CalledProcessError):
            return     # not running this moment (a Swarm task between two containers, its node off)
        with self._lock:
            self.kills.append(kill)
            self.off.add(device)

        def power_on() -> None:
            kill.started_at = time.time()
            started = self.lab.start(device)    # a Swarm stack: Swarm powered it on, at this time
            if isinstance(started, float):
                kill.started_at = started
            if self.sw and is_swdevice(device):
                self.sw.watch_boot(device, kill.started_at)
            with self._lock:
                self.off.discard(device)
        threading.Timer(off, power_on).start()

    def reset(self, device: str) -> None:
        """A converged device back to its factory flash, then the update again: a new wave for it."""
        self.reset_at[device] = time.time()
        self.highest_committed.pop(device, None)
        self.lab.reset_flash(device)
        self.resets += 1
        threading.Timer(4.0, self.hint, args=([device],)).start()

    def run(self, settle_timeout: float, beside: threading.Thread | None = None) -> list[Verdict]:
        """The kills; then, once `beside` (if any) is done too, the settling and the verdict."""
        self.hint_all()
        next_hint = time.monotonic() + 10
        aimless_since = None
        while len(self.kills) < self.quota or (beside and beside.is_alive()):
            time.sleep(self.rng.uniform(*self.gap_s))
            if len(self.kills) >= self.quota:     # our kills are done; what runs beside is not
                candidates, infra = [], []
            else:
                with self._lock:
                    candidates = [d for d in self.targets if d not in self.off]
                if self.aim:
                    candidates = [d for d in candidates if self.in_update(d) or
                                  (self.reset_waves and not is_swdevice(d) and self.converged(d))]
                infra = [s for s in ("server", "mosquitto") if s not in self.off]
            if infra and self.rng.random() < self.infra_share:
                self.power_cycle(self.rng.choice(infra))
            elif self.aim and not candidates and len(self.kills) < self.quota:
                # nothing mid-update: wait for one, but not for ever (every target converged, or stuck)
                aimless_since = aimless_since or time.monotonic()
                if time.monotonic() - aimless_since > 90:
                    self.notes.append(f"--aim: no target was in the middle of an update for 90 s after "
                                      f"{len(self.kills)} of {self.quota} kills; stopped there")
                    break
            elif candidates:
                aimless_since = None
                device = self.rng.choice(candidates)
                if self.reset_waves and self.converged(device) and not is_swdevice(device):
                    self.reset(device)
                else:
                    self.power_cycle(device)
            if time.monotonic() > next_hint:      # a device booted mid-wave may have missed the hint
                self.hint_all()
                next_hint = time.monotonic() + 10
        return self.settle(settle_timeout)

    def settle(self, timeout: float) -> list[Verdict]:
        deadline = time.monotonic() + timeout
        while self.off and time.monotonic() < deadline:
            time.sleep(0.2)
        while time.monotonic() < deadline and not all(self.converged(d) for d in self.devices):
            self.hint_all()
            time.sleep(5)
        # a device cut just before the end still shows its last (converged) state: wait for its boot
        while time.monotonic() < deadline and self.awaiting_boot():
            time.sleep(1)
        self.note_commits()
        self.measure_recovery()
        return [self.check(device) for device in self.devices]

    def awaiting_boot(self) -> list[str]:
        """Devices whose last power-on has not been followed by a boot report yet."""
        waiting = []
        for device in self.devices:
            last = max((k for k in self.kills if k.device == device), key=lambda k: k.at, default=None)
            if last and not any(ts >= (last.started_at or last.at) for ts in self.boot_times(device)):
                waiting.append(device)
        return waiting

    def measure_recovery(self) -> None:
        """A device has recovered when it reports its next boot (the server and broker are not timed)."""
        for kill in self.kills:
            if kill.device not in self.devices:
                continue
            boots = [ts for ts in self.boot_times(kill.device) if kill.started_at and ts >= kill.started_at]
            next_cut = min((k.at for k in self.kills if k.device == kill.device and k.at > kill.at), default=math.inf)
            if boots and min(boots) < next_cut:
                kill.recovery_s = round(min(boots) - kill.started_at, 2)
            else:
                kill.interrupted = next_cut < math.inf

    def check(self, device: str) -> Verdict:
        if self.sw and is_swdevice(device):
            try:
                bricked, converged, problems, flash = self.sw.check(device, self.target)
            except (subprocess.SubprocessError, LookupError, ValueError) as exc:
                return Verdict(device, bricked=False, converged=False, problems=[f"inspect failed: {exc}"])
            return Verdict(device, bricked=bricked, converged=converged, problems=problems, flash=flash)
        try:
            flash = self.lab.inspect_device(device)
        except subprocess.CalledProcessError as exc:
            return Verdict(device, bricked=False, converged=False, problems=[f"inspect failed: {exc.stderr}"])
        except (LookupError, RuntimeError) as exc:      # a Swarm slot with no container, its node off
            return Verdict(device, bricked=False, converged=False, problems=[f"inspect failed: {exc}"])
        verdict = Verdict(device, bricked=not flash["bootable"], converged=False, flash=flash)
        if verdict.bricked:
            verdict.problems.append(f"bricked: {flash['next_boot']}")
            return verdict
        running, boot = flash["running"], flash["boot"]
        if not running["verified"]:
            verdict.problems.append("runs an image that does not verify")
        slot_counter = flash["slots"][boot["active"]]["security_counter"]
        if boot["confirmed"] and boot["security_counter"] != slot_counter:
            verdict.problems.append(f"security counter {boot['security_counter']} != committed image's {slot_counter}")
        lost = self.highest_committed.get(device)
        if lost and parse_version(running["version"]) < parse_version(lost):
            verdict.problems.append(f"committed {lost} was lost: runs {running['version']}")
        verdict.converged = running["version"] == self.target and boot["confirmed"] and flash["journal"] is None
        if not verdict.converged:
            verdict.problems.append(f"not converged: runs {running['version']} "
                                    f"({'confirmed' if boot['confirmed'] else 'on trial'}), journal {flash['journal']}")
        verdict.problems += self.server_disagreements(device, flash)
        return verdict

    def server_disagreements(self, device: str, flash: dict) -> list[str]:
        """The server's registry and history must tell the same story as the device's flash."""
        running = flash["running"]
        sha = flash["slots"][running["slot"]]["sha256"]

        def check(record: dict, history: list[dict]) -> list[str]:
            problems = []
            if (record.get("version"), record.get("image_sha256")) != (running["version"], sha):
                problems.append(f"server records {record.get('version')} ({str(record.get('image_sha256'))[:12]}), "
                                f"the flash runs {running['version']} ({sha[:12]})")
            committed = last_commit(history)
            if committed and committed != running["version"]:
                problems.append(f"server history's last commit is {committed}, the flash runs {running['version']}")
            return problems
        return until_server_agrees(self.server_url, device, check, within_s=15, http=self.http)


class Lab(Protocol):
    """What a campaign needs from a lab: ComposeLab (compose labels) or SwarmLab (Swarm's labels)."""
    def device_containers(self) -> list[str]: ...
    def kill(self, name: str) -> None: ...
    def start(self, name: str) -> float | None: ...
    def reset_flash(self, name: str) -> None: ...
    def read_file(self, name: str, path: str) -> str: ...
    def inspect_device(self, name: str) -> dict: ...


@dataclass
class Outcome:
    """A finished campaign: what the summary lines say, and the exit status."""
    campaign: Campaign
    verdicts: list[Verdict]
    bricked: int
    converged: int
    unrecovered: list[Kill]

    @property
    def ok(self) -> bool:
        return self.bricked == 0 and self.converged == len(self.verdicts) and not self.unrecovered


def parser(prog: str = "chaos", doc: str | None = __doc__) -> argparse.ArgumentParser:
    # "resolve": swarm-chaos puts its own --devices (how many devices its test swarm runs) over this one
    parser = argparse.ArgumentParser(prog=prog, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     conflict_handler="resolve")
    env = os.environ     # the variables `docker compose` itself reads, so the defaults find the same lab
    parser.add_argument("--project", default=env.get("COMPOSE_PROJECT_NAME") or "fotalab",
                        help="compose project of the running lab (default: $COMPOSE_PROJECT_NAME, else fotalab)")
    parser.add_argument("--stack", default=env.get("FOTA_STACK") or None,
                        help="the lab deployed as a Swarm stack of this name (scripts/stack; default: "
                             "$FOTA_STACK; without it: the compose project, else the one stack running here)")
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--target", default="2.0.0", help="the release the fleet must end on")
    parser.add_argument("--off", type=float, nargs=2, default=(0.5, 3.0), metavar=("MIN", "MAX"),
                        help="seconds a killed device stays off (a Swarm stack: Swarm restarts it itself)")
    parser.add_argument("--gap", type=float, nargs=2, default=(0.2, 1.5), metavar=("MIN", "MAX"),
                        help="seconds between two kills")
    parser.add_argument("--infra", type=float, default=0.0, metavar="SHARE",
                        help="share of kills aimed at the server or the broker instead of a device (0-1)")
    parser.add_argument("--reset-waves", action="store_true",
                        help="a converged device picked for a kill is reset to its factory flash instead and "
                             "updated again, so a long campaign keeps hitting every phase")
    parser.add_argument("--devices", dest="cut", choices=("all", "lab", "swupdate"), default="all",
                        help="whose power it cuts: every device, the lab's own (device-N) or the SWUpdate "
                             "devices (swupdate-N); every device is judged all the same")
    parser.add_argument("--aim", action="store_true",
                        help="cut a device only while it is in the middle of an update (checking, downloading, "
                             "installing, trial boot); stops early when none was for 90 s")
    parser.add_argument("--settle", type=float, default=180, help="seconds the fleet may take to settle")
    parser.add_argument("--mqtt-port", type=int, default=None,
                        help="the broker's port on this machine (default: $MQTT_PORT, else 1883; "
                             "a stack: $STACK_MQTT_PORT, else 11883)")
    parser.add_argument("--server-url", default=None,
                        help="the update server (default: port $SERVER_PORT, else 8000, on this machine; "
                             "a stack: $STACK_SERVER_PORT, else 18800)")
    parser.add_argument("--report", type=Path, default=Path("chaos-report.json"))
    return parser


def pick_lab(args: argparse.Namespace, identity_dir: Path) -> tuple[Lab, LabAccess]:
    """The lab to campaign against and how to reach it (over TLS as fota-tools, its identity
    copied into `identity_dir`, when the lab runs TLS)."""
    env = os.environ
    stack = args.stack
    if not stack:
        lab = ComposeLab(args.project, Path.cwd())
        running = swarmlab.stacks() if not lab.device_containers() else []
        if len(running) == 1 and not os.environ.get("COMPOSE_PROJECT_NAME"):
            stack = running[0]
        else:
            access = reach(lab, "127.0.0.1", int(env.get("SERVER_PORT") or 8000), int(env.get("MQTT_PORT") or 1883),
                           int(env.get("MQTTS_PORT") or 8883), identity_dir)
            return lab, replace(access, server_url=args.server_url or access.server_url,
                                mqtt_port=access.mqtt_port if args.mqtt_port is None else args.mqtt_port)
    swarm = swarmlab.SwarmLab(stack)
    port = int(env.get("STACK_MQTT_PORT") or 11883) if args.mqtt_port is None else args.mqtt_port
    url = args.server_url or f"http://{swarm.endpoint('frontdoor', int(env.get('STACK_SERVER_PORT') or 18800))}"
    return swarm, reach_plaintext(swarm, url, swarm.endpoint("mosquitto", port).rsplit(":", 1)[0], port)


def execute(lab: Lab, args: argparse.Namespace, access: LabAccess,
            during: Callable[[Campaign], None] | None = None) -> Outcome:
    """Run the campaign (`during` runs beside it, e.g. node kills), write the report, print the table."""
    server_url, http = access.server_url, access.session()
    started = time.time()
    devices = lab.device_containers()
    sw_devices = [d for d in devices if is_swdevice(d)]
    token = ""
    if sw_devices:
        try:
            token = lab.read_file("server", "/var/lib/fotalab/api-token")
        except (subprocess.CalledProcessError, LookupError):
            print("chaos: cannot read the server's API token: SWUpdate devices will not be hinted", file=sys.stderr)
    sw = SwFleet(lab, sw_devices, server_url, token, http) if sw_devices else None     # type: ignore[arg-type]
    with access.watcher() as watcher:
        if sw:
            sw.__enter__()
        time.sleep(1.0)     # retained states arrive
        campaign = Campaign(lab, watcher, server_url=server_url, http=http, target=args.target, kills=args.kills,
                            seed=args.seed, off_s=tuple(args.off), gap_s=tuple(args.gap), reset_waves=args.reset_waves,
                            infra_share=args.infra, which=getattr(args, "cut", "all"),
                            aim=getattr(args, "aim", False), sw=sw, devices=devices)
        beside = threading.Thread(target=during, args=(campaign,), daemon=True) if during else None
        if beside:
            beside.start()
        try:
            verdicts = campaign.run(args.settle, beside)
        finally:
            if sw:
                sw.__exit__(None, None, None)
    device_kills = [k for k in campaign.kills if k.device in campaign.devices]
    recoveries = [k.recovery_s for k in device_kills if k.recovery_s is not None]
    outcome = Outcome(campaign, verdicts, bricked=sum(v.bricked for v in verdicts),
                      converged=sum(v.converged and not v.problems for v in verdicts),
                      unrecovered=[k for k in device_kills if k.recovery_s is None and not k.interrupted])
    phases: dict[str, int] = {}
    for kill in campaign.kills:
        phases[kill.phase] = phases.get(kill.phase, 0) + 1
    args.report.write_text(json.dumps({
        "seed": args.seed, "target": args.target, "duration_s": round(time.time() - started, 1),
        "resets": campaign.resets, "kills_by_phase": phases,
        "kills": [asdict(k) for k in campaign.kills], "notes": campaign.notes,
        "devices": [{**asdict(v), "flash": {k: v.flash.get(k) for k in ("running", "boot", "journal", "env")}}
                    for v in verdicts]}, indent=1))
    print(f"{'device':<12}{'kills':>6}  {'version':<9}{'verdict'}")
    for verdict in verdicts:
        count = sum(k.device == verdict.device for k in campaign.kills)
        version = (verdict.flash.get("running") or {}).get("version", "?")
        if is_swdevice(verdict.device):           # what its bootloader boots
            version = (verdict.flash.get("boot") or {}).get("version") or "?"
        print(f"{verdict.device:<12}{count:>6}  {version:<9}{'; '.join(verdict.problems) or 'ok'}")
    print(f"kills by phase: {phases}; resets to factory: {campaign.resets}; cut again before booting: "
          f"{sum(k.interrupted for k in device_kills)}; never recovered: {len(outcome.unrecovered)}; "
          f"recovery p99 {p99(recoveries):.1f} s; report: {args.report}")
    for note in campaign.notes:
        print(f"note: {note}")
    sw_verdicts = [v for v in verdicts if is_swdevice(v.device)]
    if sw_verdicts:
        sw_kills = [k for k in device_kills if is_swdevice(k.device)]
        sw_phases: dict[str, int] = {}
        for kill in sw_kills:
            sw_phases[kill.phase] = sw_phases.get(kill.phase, 0) + 1
        sw_recoveries = [k.recovery_s for k in sw_kills if k.recovery_s is not None]
        print(f"swupdate: {len(sw_kills)} kills on {len(sw_verdicts)} SWUpdate devices {sw_phases}: "
              f"{sum(v.bricked for v in sw_verdicts)} bricked, "
              f"{sum(v.converged and not v.problems for v in sw_verdicts)}/{len(sw_verdicts)} converged, "
              f"recovery p99 {p99(sw_recoveries):.1f} s")
    return outcome


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="fotalab-chaos-") as identity_dir:
        lab, access = pick_lab(args, Path(identity_dir))
        devices = lab.device_containers()
        if not devices:
            print(f"chaos: no device containers in compose project {args.project!r} nor in a Swarm stack: start "
                  "the lab first (scripts/lab up, or scripts/stack up)", file=sys.stderr)
            return 2
        outcome = execute(lab, args, access)
    recoveries = [k.recovery_s for k in outcome.campaign.kills if k.recovery_s is not None]
    print(f"chaos: {len(outcome.campaign.kills)} kills on {len(devices)} devices: {outcome.bricked} bricked, "
          f"{outcome.converged}/{len(devices)} converged, recovery p99 {p99(recoveries):.1f} s")
    return 0 if outcome.ok else 1


if __name__ == "__main__":
    sys.exit(main())
