"""SWUpdate devices of the compose lab (`scripts/fleet N --swupdate M`, docs/swupdate.md): their
enrolment, and what a chaos campaign (lab/chaos.py) needs to cut their power and judge them.

    python -m fotalab.lab.swfleet enrol --tokens '/credentials/{name}/ddi-token' swupdate-1 ...

The one-shot `swupdate-enrol` job that scripts/fleet adds runs this before the SWUpdate devices
start: it enrols each device as a hawkBit DDI controller (`POST /api/v1/controllers`, as
`fota controllers add` does) and writes the TargetToken the server answers with to the file the
pattern names for it, on that device's own credentials volume, which it mounts read-only and
reads the token from through FOTA_DDI_TARGET_TOKEN_FILE. A device
enrolled on an earlier `up` keeps its token; one whose token file was lost is refused with the
way out (the server keeps only a hash of the token).
"""
from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import requests

from ..cli import Api, CliConfig, CliError
from ..envconfig import ConfigError
from ..formats.swu import EnvKey, GrubEnvError, UState, parse_grubenv
from ..protocol import State
from .serverrecord import last_commit, until_server_agrees

PREFIX = "swupdate-"


def is_swdevice(service: str) -> bool:
    """An SWUpdate device's compose service (swupdate-1, swupdate-2, ...)."""
    return service.startswith(PREFIX) and service[len(PREFIX):].isdigit()


def write_token(path: Path, token: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, f"{token}\n".encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def enrol(api: Api, names: list[str], tokens: str, hardware: str | None = None) -> list[str]:
    """Enrol the controllers not enrolled yet, each one's TargetToken into the file `tokens`
    names for it ({name}: the controller); returns a line per name saying what was done."""
    enrolled = {c["controller_id"] for c in api.call("GET", "/controllers")["controllers"]}
    done = []
    for name in names:
        path = Path(tokens.format(name=name))
        path.parent.mkdir(parents=True, exist_ok=True)
        if name in enrolled and path.exists():
            done.append(f"{name}: enrolled already, its TargetToken kept in {path}")
            continue
        if name in enrolled:
            raise CliError(f"{name} is enrolled on the server but its TargetToken is not in {path} (the device's "
                           "volume was removed and the server's was not): `docker compose down -v` starts both afresh")
        made = api.call("POST", "/controllers", {"name": name, **({"hardware": hardware} if hardware else {})})
        write_token(path, made["credentials"]["target_token"])
        done.append(f"{name}: enrolled (hardware {made['hardware']}), TargetToken written to {path}")
    return done


class SwLab(Protocol):
    """What the campaign's helpers need from the lab (composelab.ComposeLab)."""
    def exec_text(self, service: str, *command: str, timeout: float = 10) -> str | None: ...
    def inspect_device(self, name: str) -> dict: ...


# the registry's state of a DDI controller (server/ddi_feedback.py) as a phase of its update
UPDATE_PHASES = {State.CHECKING: "downloading", State.DOWNLOADING: "downloading", State.INSTALLING: "installing"}


@dataclass
class SwFleet:
    """The SWUpdate devices of a campaign. They speak DDI, not MQTT: their state comes from the
    server's registry (their feedback), their update hint is the API's trigger, their boots are
    seen in the container (the firmware's running file, fresh after a power-on), their phase at a
    cut and their verdict are read from their flash (GRUB environment and slots)."""
    lab: SwLab
    devices: list[str]
    server_url: str
    api_token: str
    http: requests.Session = field(default_factory=requests.Session)    # reaches the server (TLS: LabAccess)
    poll_s: float = 1.0
    states: dict[str, dict] = field(default_factory=dict)
    boots: dict[str, list[float]] = field(default_factory=dict)
    powered_on: dict[str, float] = field(default_factory=dict)     # each device's last power-on
    _stop: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self.boots = {d: [] for d in self.devices}
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def __enter__(self) -> SwFleet:
        self.refresh()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()

    def refresh(self) -> None:
        try:
            found = self.http.get(f"{self.server_url}/api/v1/devices", timeout=5).json()["devices"]
        except (requests.RequestException, ValueError, KeyError):
            return                              # the server restarts this moment: keep the last view
        self.states.update({d["device_id"]: d for d in found if d["device_id"] in self.devices})

    def _poll(self) -> None:
        while not self._stop.wait(self.poll_s):
            self.refresh()

    # -- observing
    def converged(self, device: str, target: str) -> bool:
        record = self.states.get(device, {})
        return record.get("state") == State.COMMITTED and record.get("version") == target

    def fresh_state(self, device: str) -> str:
        """The registry's state of the device, if it reported it since its last power-on ("" if not:
        after a cut the registry still shows what it said before, while it boots)."""
        record = self.states.get(device, {})
        fresh = (record.get("state_ts") or 0) >= self.powered_on.get(device, 0)
        return record.get("state") or "" if fresh else ""

    def in_update(self, device: str) -> bool:
        return self.fresh_state(device) in UPDATE_PHASES

    def phase(self, device: str) -> str:
        """The phase the device is in now, from its flash (as swupdate and the bootloader see it,
        through lazyfs) and its feedback since its last power-on: first boot, installing, downloading,
        booting (powered on, nothing reported since), or idle."""
        text = self.lab.exec_text(device, "cat", "/data/grub/grubenv", timeout=5)
        try:
            env = parse_grubenv(text.encode()) if text else {}
        except GrubEnvError:
            env = {}
        if env.get(EnvKey.UPGRADE_AVAILABLE) == "1":
            return "first boot"
        registry = UPDATE_PHASES.get(self.fresh_state(device))
        if env.get(EnvKey.USTATE) == UState.IN_PROGRESS:
            return registry or "installing"
        booting = device in self.powered_on and not any(t >= self.powered_on[device] for t in self.boots[device])
        return registry or ("booting" if booting else "idle")

    def watch_boot(self, device: str, powered_on: float, timeout: float = 90) -> None:
        """Record the device's next boot after a power-on: its firmware writes the running file."""
        path = f"/tmp/fota-swdevice-{device}.running"
        self.powered_on[device] = powered_on

        def watch() -> None:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and not self._stop.is_set():
                text = self.lab.exec_text(device, "date", "-r", path, "+%s.%N", timeout=5)
                try:
                    booted = float(text) if text else 0.0
                except ValueError:
                    booted = 0.0
                if booted >= powered_on - 0.01:
                    self.boots[device].append(booted)
                    return
                time.sleep(0.5)
        threading.Thread(target=watch, daemon=True).start()

    # -- acting
    def hint(self, devices: list[str]) -> None:
        """The update hint of a DDI controller: its next poll may be offered the release."""
        for device in devices:
            try:
                self.http.post(f"{self.server_url}/api/v1/devices/{device}/trigger", timeout=5,
                              headers={"Authorization": f"Bearer {self.api_token}"})
            except requests.RequestException:
                pass                            # the server restarts this moment: the next hint will do

    # -- the verdict
    def check(self, device: str, target: str) -> tuple[bool, bool, list[str], dict]:
        """(bricked, converged, problems, flash) from the device's flash and the server's record."""
        flash = self.lab.inspect_device(device)
        if not flash.get("bootable"):
            return True, False, [f"bricked: {flash.get('next_boot')}"], flash
        boot, problems = flash["boot"], []
        converged = boot["version"] == target and not boot["trial"] and \
            boot["ustate"] in (UState.OK, UState.TESTING)
        if not converged:
            problems.append(f"not converged: boots slot {boot['slot']} with {boot['version']} "
                            f"({'on trial' if boot['trial'] else 'confirmed'}), ustate={boot['ustate']}")
        if flash.get("running") and flash["running"].get("version") != boot["version"]:
            problems.append(f"runs {flash['running'].get('version')}, the environment names {boot['version']}")
        problems += self.server_disagreements(device, boot["version"])
        return False, converged, problems, flash

    def server_disagreements(self, device: str, version: str | None) -> list[str]:
        """The server must have recorded the commit of what the flash boots, and nothing after it
        (swupdate reports at its next poll after the boot)."""
        def check(record: dict, history: list[dict]) -> list[str]:
            problems = []
            if (record.get("state"), record.get("version")) != (State.COMMITTED, version):
                problems.append(f"server records {record.get('version')} ({record.get('state')}), "
                                f"the flash boots {version}")
            committed = last_commit(history)
            if committed and committed != version:
                problems.append(f"server history's last commit is {committed}, the flash boots {version}")
            return problems
        return until_server_agrees(self.server_url, device, check, within_s=30, http=self.http)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="swfleet", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    add = commands.add_parser("enrol", help="enrol SWUpdate devices as DDI controllers, each token into a file")
    add.add_argument("--tokens", required=True,
                     help="each device's TargetToken file: a path with {name}, e.g. /credentials/{name}/ddi-token")
    add.add_argument("--hardware", default=None, help="their hardware (default: the server's SWUpdate hardware)")
    add.add_argument("--wait", type=float, default=60, help="seconds to wait for the server to answer")
    add.add_argument("names", nargs="+")
    args = parser.parse_args(argv)
    try:
        config = CliConfig.from_env()
        api = Api(config.server_url, config.api_token, config.tls)
        deadline = time.monotonic() + args.wait
        while True:
            try:
                lines = enrol(api, args.names, args.tokens, args.hardware)
                break
            except CliError as exc:
                if "cannot reach" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(1)
    except (CliError, ConfigError) as exc:
        print(f"swfleet: {exc}", file=sys.stderr)
        return 1
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
