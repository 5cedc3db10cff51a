"""SWUpdate devices in the compose lab (`scripts/fleet 3 --swupdate 2`): Debian's real swupdate
beside the lab's own devices, enrolled by the swupdate-enrol job, in one rollout of 2.0.0 with
power cuts (a bounded `scripts/chaos --devices swupdate` campaign, and `docker kill` of a lab
device while it downloads): all five commit, on their flash and in the registry. Then the bad
release 2.1.0 with an SWUpdate canary: it installs, crashes, its bootloader falls back by itself,
swupdate reports the failure, the rollout's gate trips, and nobody else is touched."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from fotalab.lab.composelab import ComposeLab
from fotalab.lab.labaccess import LabAccess
from fotalab.protocol import Event, RolloutStatus, State

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "test-artifacts"
LAB = ["device-1", "device-2", "device-3"]
SW = ["swupdate-1", "swupdate-2"]


@pytest.fixture(scope="module")
def sw_lab(docker_engine, tmp_path_factory, running_lab, lab_ports):
    """A lab of its own (project name, ports, and a fleet override outside the working tree, named
    in COMPOSE_FILE, so nobody else's lab or compose.override.yaml is touched)."""
    override = tmp_path_factory.mktemp("swlab") / "fleet.yaml"
    made = subprocess.run([sys.executable, str(REPO / "scripts" / "fleet"), "3", "--swupdate", "2", "--output",
                           str(override)], capture_output=True, text=True, timeout=60)
    assert made.returncode == 0, made.stderr
    lab = ComposeLab(f"fotalab-e2e-sw-{uuid.uuid4().hex[:6]}", REPO, {
        "COMPOSE_FILE": f"{REPO / 'compose.yaml'}{os.pathsep}{override}",
        **lab_ports(),
        "FOTA_RADIO_KBPS": "4", "FOTA_CHUNK_SIZE": "1024",     # lab devices' downloads last long enough to cut
        "FOTA_DDI_POLL_S": "2"})                               # the DDI clients poll every 2 s
    with running_lab(lab, up_s=420, down_s=180, log_args=("--timestamps",)) as started:
        yield started


@pytest.fixture(scope="module")
def sw_access(sw_lab, reach_lab) -> LabAccess:
    return reach_lab(sw_lab)


@pytest.fixture(scope="module")
def server(sw_access) -> Server:
    with sw_access.session() as http:
        yield Server(http, sw_access.server_url)


@dataclass
class Server:
    """The lab's server, over TLS, as the tests read it."""
    http: requests.Session
    url: str

    def record(self, device: str) -> dict:
        return self.http.get(f"{self.url}/api/v1/devices/{device}", timeout=5).json()

    def history(self, device: str) -> list[dict]:
        return self.http.get(f"{self.url}/api/v1/devices/{device}/history?limit=1000", timeout=5).json()["events"]

    def rollout(self, rollout_id: int) -> dict:
        return self.http.get(f"{self.url}/api/v1/rollouts/{rollout_id}", timeout=5).json()


def fota(lab: ComposeLab, *args: str) -> dict:
    done = lab.compose("--profile", "tools", "run", "--rm", "--no-deps", "-T", "cli", "fota", "--json", *args,
                       timeout=120)
    return json.loads(done.stdout)


def until(check, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = check()
            if last:
                return last
        except (requests.RequestException, ValueError, KeyError):
            pass                                  # the server is busy this moment
        time.sleep(0.5)
    raise TimeoutError(f"{what} not reached after {timeout:.0f} s (last: {str(last)[:2000]})")


def test_one_rollout_of_lab_and_swupdate_devices_with_power_cuts_commits_all_five(sw_lab, server):
    controllers = {c["controller_id"]: c for c in fota(sw_lab, "controllers", "list")["controllers"]}
    assert sorted(controllers) == SW and {c["hardware"] for c in controllers.values()} == {"swupdate-arm64"}
    until(lambda: all(server.record(d)["online"] for d in SW), 60, "both SWUpdate devices polling")
    for device in SW:                             # the factory image, from their own flash
        assert sw_lab.inspect_device(device)["boot"] == {"slot": "a", "version": "1.0.0", "trial": False,
                                                         "ustate": "0"}

    created = fota(sw_lab, "rollout", "create", "2.0.0", "--phases", "100%", "--backoff", "2")
    assert sorted(d["device_id"] for d in created["devices"]) == LAB + SW

    report = ARTIFACTS / f"{sw_lab.project}-chaos.json"
    ARTIFACTS.mkdir(exist_ok=True)
    campaign = subprocess.Popen(
        [sys.executable, str(REPO / "scripts" / "chaos"), "--project", sw_lab.project,
         "--devices", "swupdate",
         "--kills", "4", "--seed", "16", "--gap", "0.5", "2.0", "--off", "0.5", "2.0", "--settle", "300",
         "--report", str(report)], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, **sw_lab.env})         # the lab's ports, as a user's shell has them
    try:
        # beside the campaign, a lab device loses its power while it downloads
        until(lambda: server.record("device-2")["state"] == State.DOWNLOADING, 120, "device-2 downloading")
        sw_lab.kill("device-2")
        cut_at = time.time()
        time.sleep(1.5)
        sw_lab.start("device-2")
        output, _ = campaign.communicate(timeout=600)
    finally:
        if campaign.poll() is None:
            campaign.kill()
    print(output[-4000:])
    lines = output.strip().splitlines()
    assert re.fullmatch(r"chaos: \d+ kills on 5 devices: 0 bricked, 5/5 converged, recovery p99 [\d.]+ s", lines[-1]), \
        lines[-1]
    sw_line = next(line for line in lines if line.startswith("swupdate: "))
    match = re.match(r"swupdate: (\d+) kills on 2 SWUpdate devices .*: 0 bricked, 2/2 converged", sw_line)
    assert match and int(match.group(1)) == 4, sw_line
    kills = json.loads(report.read_text())["kills"]
    assert all(k["device"] in SW for k in kills)
    assert any(k["phase"] in ("downloading", "installing", "first boot") for k in kills), kills
    assert all(k["recovery_s"] is not None or k["interrupted"] for k in kills), kills
    assert any(e["event"] == Event.BOOTED and e["ts"] > cut_at for e in server.history("device-2")), \
        "device-2 did not boot after its power cut"

    done = until(lambda: (r := server.rollout(created["id"]))["status"] != RolloutStatus.RUNNING and r, 240,
                 "the rollout ending")
    assert done["status"] == RolloutStatus.COMPLETED, done["reason"]
    assert {d["device_id"]: d["status"] for d in done["devices"]} == dict.fromkeys(LAB + SW, "committed")
    for device in LAB:
        flash = sw_lab.inspect_device(device)
        assert flash["running"]["version"] == "2.0.0" and flash["boot"]["confirmed"], device
    for device in SW:
        flash = sw_lab.inspect_device(device)
        assert flash["boot"]["version"] == "2.0.0" and not flash["boot"]["trial"] and flash["bootable"], flash
        assert (server.record(device)["state"], server.record(device)["version"]) == (State.COMMITTED, "2.0.0")


def test_a_bad_release_stops_at_its_swupdate_canary_which_rolls_back_by_itself(sw_lab, server):
    canary, others = "swupdate-1", ["swupdate-2", *LAB]
    before = {d: server.record(d)["version"] for d in [canary, *others]}
    booted_before = sw_lab.inspect_device(canary)["boot"]
    since = time.time()
    bad = fota(sw_lab, "rollout", "create", "2.1.0", "--devices", ",".join([canary, *others]), "--phases", "1,100%")
    stopped = until(lambda: (r := server.rollout(bad["id"]))["status"] != RolloutStatus.RUNNING and r, 300,
                    "the bad rollout stopping")
    assert stopped["status"] == RolloutStatus.PAUSED and stopped["quarantined"] == [canary], stopped["reason"]

    # the canary fell back by itself to what it ran, and swupdate reported the failure after its reboot
    flash = sw_lab.inspect_device(canary)
    assert flash["boot"]["slot"] == booted_before["slot"] and flash["boot"]["version"] == before[canary], flash
    assert not flash["boot"]["trial"] and flash["bootable"]
    logs = sw_lab.compose("logs", "--no-color", canary).stdout
    assert "firmware 2.1.0: crashing at boot" in logs and "failed 3 trial boots: falling back" in logs
    now = server.record(canary)
    assert (now["state"], now["version"]) == (State.ROLLED_BACK, before[canary]), now
    assert now["report"]["last_rollback"]["version"] == "2.1.0"
    events = [e["event"] for e in server.history(canary) if e["received_at"] > since]
    assert events[:2] == [Event.UPDATE_STARTED, Event.ROLLED_BACK], events

    # nobody else was offered it
    for other in others:
        touched = [e["event"] for e in server.history(other)
                   if e["received_at"] > since and e["event"] != Event.BOOTED]
        assert touched == [], f"{other} is outside the canary but saw {touched}"
        assert server.record(other)["version"] == before[other]
    assert fota(sw_lab, "rollout", "abort", str(bad["id"]))["status"] == RolloutStatus.ABORTED
