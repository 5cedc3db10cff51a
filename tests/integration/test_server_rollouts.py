"""Rollouts on the real server (gunicorn, 2 workers), the real broker and real devices: a good
release goes out phase by phase to committed devices; a crash-at-boot release stops at its canary;
the engine carries on across a server restart; `fota trigger` reaches one device."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest
import requests

from fotalab.lab import locallab

pytestmark = pytest.mark.integration
TOKEN = "rollout-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def lab(release_store, broker, tmp_path):
    """A server that ingests and runs rollouts (default release 1.0.0: nothing moves unless assigned),
    and three devices on the factory image."""
    server = locallab.Server(release_store, tmp_path / "server.log", broker=broker, default_release="1.0.0",
                             env={"FOTA_API_TOKEN": TOKEN}).start()
    devices = []
    for n in range(1, 4):
        device = locallab.Device(f"ro{n}-{tmp_path.name}"[-40:], tmp_path / f"d{n}" / "flash", release_store,
                                 broker, server)
        device.flash_dir.mkdir(parents=True)
        devices.append(device.start())
    ids = [d.device_id for d in devices]

    def known() -> bool:
        found = {d["device_id"]: d for d in requests.get(f"{server.url}/api/v1/devices", timeout=5).json()["devices"]}
        return all(found.get(i, {}).get("version") == "1.0.0" for i in ids)
    locallab.wait_until(known, 30, "three devices reporting 1.0.0")
    yield server, devices, ids
    for device in devices:
        device.power_cut()
    server.stop()


def create(server: locallab.Server, **body) -> dict:
    response = requests.post(f"{server.url}/api/v1/rollouts", json=body, headers=AUTH, timeout=5)
    assert response.status_code == 201, response.text
    return response.json()


def rollout(server: locallab.Server, rollout_id: int) -> dict:
    return requests.get(f"{server.url}/api/v1/rollouts/{rollout_id}", timeout=5).json()


def wait_status(server: locallab.Server, rollout_id: int, statuses: tuple[str, ...], timeout: float) -> dict:
    locallab.wait_until(lambda: rollout(server, rollout_id)["status"] in statuses, timeout,
                        f"rollout {rollout_id} {'/'.join(statuses)}")
    return rollout(server, rollout_id)


def test_good_release_rolls_out_in_phases_and_survives_a_server_restart(lab, tmp_path):
    server, devices, ids = lab
    assert requests.post(f"{server.url}/api/v1/rollouts", json={"release": "2.0.0"}, timeout=5).status_code == 401
    created = create(server, release="2.0.0", selection={"devices": ids}, phases=["1", "2"],
                     policy={"backoff_s": 1, "rehint_s": 3})
    assert [p["cumulative_devices"] for p in created["phases"]] == [1, 2, 3]
    second = requests.post(f"{server.url}/api/v1/rollouts", json={"release": "2.0.0"}, headers=AUTH, timeout=5)
    assert second.status_code == 409 and "abort it" in second.json()["error"]

    locallab.wait_until(lambda: rollout(server, created["id"])["phase"] >= 1, 60, "the canary committed")
    server.stop()                                       # SIGKILL mid-rollout; the state is in the database
    server.start()
    done = wait_status(server, created["id"], ("completed", "paused", "aborted"), 90)
    assert done["status"] == "completed", done["reason"]
    assert {d["device_id"]: d["status"] for d in done["devices"]} == dict.fromkeys(ids, "committed")
    # phases in order: each device of a later phase started after every device of the earlier one committed
    commits = {}
    for device_id in ids:
        events = requests.get(f"{server.url}/api/v1/devices/{device_id}/history?limit=1000", timeout=5).json()["events"]
        commits[device_id] = (min(e["ts"] for e in events if e["event"] == "update_started"),
                              max(e["ts"] for e in events if e["event"] == "committed"))
    assert commits[ids[0]][1] < commits[ids[1]][0] and commits[ids[1]][1] < commits[ids[2]][0]
    for device in devices:
        assert device.inspect()["running"]["version"] == "2.0.0"


def test_bad_release_stops_at_the_canary_which_rolls_back_by_itself(lab):
    server, devices, ids = lab
    created = create(server, release="2.1.0", selection={"devices": ids}, phases=["1", "100%"])
    stopped = wait_status(server, created["id"], ("paused", "aborted", "completed"), 90)
    assert stopped["status"] == "paused" and "failure gate" in stopped["reason"]
    assert stopped["quarantined"] == [ids[0]]
    assert [d["status"] for d in stopped["devices"]] == ["rolled_back", "pending", "pending"]
    canary = requests.get(f"{server.url}/api/v1/devices/{ids[0]}", timeout=5).json()
    assert canary["version"] == "1.0.0" and canary["report"]["last_rollback"]["version"] == "2.1.0"
    for other in ids[1:]:
        history = requests.get(f"{server.url}/api/v1/devices/{other}/history", timeout=5).json()["events"]
        assert not [e for e in history if e["event"] == "update_started"], f"{other} was touched"
        assert requests.get(f"{server.url}/api/v1/devices/{other}/assignment", timeout=5).json()["source"] == "default"

    aborted = requests.post(f"{server.url}/api/v1/rollouts/{created['id']}/abort", headers=AUTH, timeout=5)
    assert aborted.json()["status"] == "aborted"
    assert requests.get(f"{server.url}/api/v1/devices/{ids[0]}/assignment", timeout=5).json()["source"] == "default"
    again = requests.post(f"{server.url}/api/v1/rollouts/{created['id']}/resume", headers=AUTH, timeout=5)
    assert again.status_code == 409 and "only a paused" in again.json()["error"]


def test_trigger_sends_one_device_its_hint_and_unknown_ones_are_refused(lab):
    server, devices, ids = lab
    url = f"{server.url}/api/v1/devices/{ids[1]}"
    assert requests.put(f"{url}/assignment", json={"version": "2.0.0"}, headers=AUTH, timeout=5).ok
    assert requests.post(f"{url}/trigger", headers=AUTH, timeout=5).status_code == 202
    locallab.wait_until(lambda: requests.get(url, timeout=5).json()["state"] == "committed", 60, "device committed")
    assert requests.get(f"{server.url}/api/v1/devices/{ids[0]}", timeout=5).json()["version"] == "1.0.0"
    missing = requests.post(f"{server.url}/api/v1/devices/nope/trigger", headers=AUTH, timeout=5)
    assert missing.status_code == 404 and "GET /api/v1/devices" in missing.json()["error"]


def fota(server: locallab.Server, *args: str, token: str = TOKEN) -> subprocess.CompletedProcess:
    env = {**os.environ, "FOTA_SERVER_URL": server.url, "FOTA_API_TOKEN": token}
    return subprocess.run([sys.executable, "-m", "fotalab.cli", *args], env=env, capture_output=True, text=True,
                          timeout=120)


def test_fota_command_drives_a_rollout_and_says_what_was_wrong(lab):
    server, devices, ids = lab
    releases = fota(server, "releases").stdout.splitlines()
    assert releases[0].split()[-2:] == ["image_bytes", "delta_bytes"]
    row = next(line for line in releases if " 2.0.0 " in line)
    assert re.search(r"good\s+\d+\s+\d+ from 1\.0\.0", row), row       # its image and delta sizes
    listed = fota(server, "--json", "devices")
    assert {d["device_id"] for d in json.loads(listed.stdout)["devices"]} >= set(ids)
    unknown = fota(server, "rollout", "create", "2.0.0", "--devices", "nope")
    assert unknown.returncode == 1 and "unknown device(s) nope" in unknown.stderr
    refused = fota(server, "trigger", ids[0], token="")
    assert refused.returncode == 1 and "needs the API token" in refused.stderr
    bad_phase = fota(server, "rollout", "create", "2.0.0", "--phases", "half")
    assert bad_phase.returncode == 1 and "neither a device count" in bad_phase.stderr

    watched = fota(server, "rollout", "create", "2.0.0", "--devices", ids[2], "--watch")
    assert watched.returncode == 0, watched.stderr
    assert "COMPLETED" in watched.stdout and "[########################] 1/1" in watched.stdout
    shown = json.loads(fota(server, "--json", "rollout", "show", "1").stdout)
    assert shown["status"] == "completed" and shown["devices"][0]["status"] == "committed"
    history = fota(server, "device", ids[2])
    assert "committed" in history.stdout and history.stdout.startswith(f"{ids[2]}: 2.0.0 (committed)")

    fota(server, "rollout", "create", "2.0.0", "--devices", ",".join(ids[:2]), "--phases", "1")
    paused = fota(server, "rollout", "pause", "2")
    assert paused.returncode == 0 and "PAUSED" in paused.stdout
    assert "only a running rollout" in fota(server, "rollout", "pause", "2").stderr
    assert "ABORTED" in fota(server, "rollout", "abort", "2").stdout
