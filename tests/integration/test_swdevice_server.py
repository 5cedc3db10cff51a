"""The SWUpdate device against the lab's own update server (server/ddi.py), not a stub: Debian's
swupdate, enrolled with `fota controllers add`, takes the .swu of the release a rollout offers,
installs it, reboots, and its post-reboot report commits it in the server's registry; the bad
release is installed, falls back, and the server records the failure."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import requests
from test_swdevice import RELEASES, ROOT_IN_NS, Device, skip_unless_a_device_can_run, wait

from fotalab.formats.swu import EnvKey
from fotalab.lab import locallab
from fotalab.signer.build import build_releases
from fotalab.signer.releases import load_plan
from fotalab.signer.swu import ensure_swu_signer

pytestmark = pytest.mark.integration
TOKEN = "swdevice-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


class Endpoint:
    def __init__(self, url: str) -> None:
        self.url = url


def test_swupdate_device_updates_and_rolls_back_through_the_lab_server(tmp_path, release_key, broker):
    skip_unless_a_device_can_run()
    work = tmp_path / "w"
    (work / "firmware").mkdir(parents=True)
    (work / "firmware" / "releases.toml").write_text(RELEASES)
    signer, _ = ensure_swu_signer(work / "keys")
    build_releases(load_plan(work / "firmware" / "releases.toml"), release_key, work / "firmware", work / "store",
                   swu_signer=signer, swu_flash_dir=f"{ROOT_IN_NS}/flash")
    server = locallab.Server(work / "store", tmp_path / "server.log", broker=broker, default_release="1.0.0",
                             env={"FOTA_API_TOKEN": TOKEN, "FOTA_DDI_POLL_S": "1"}).start()
    server.ingester()
    device = Device(work, Endpoint(server.url), work / "store")
    try:
        env = {**os.environ, "FOTA_SERVER_URL": server.url, "FOTA_API_TOKEN": TOKEN}
        added = subprocess.run([sys.executable, "-m", "fotalab.cli", "--json", "controllers", "add", "sw-1",
                                "--hardware", "swupdate-arm64"], env=env, capture_output=True, text=True, timeout=60)
        assert added.returncode == 0, added.stderr
        token = json.loads(added.stdout)["credentials"]["target_token"]
        device.start(FOTA_DDI_TARGET_TOKEN=token)
        wait(lambda: device.env().get(EnvKey.SLOT) == "a", 30, device)
        for release in ("2.0.0", "2.1.0"):
            created = requests.post(f"{server.url}/api/v1/rollouts", headers=AUTH, timeout=10, json={
                "release": release, "selection": {"devices": ["sw-1"]}, "phases": ["100%"]})
            assert created.status_code == 201, created.text
            rollout_url = f"{server.url}/api/v1/rollouts/{created.json()['id']}"
            wait(lambda url=rollout_url: requests.get(url, timeout=5).json()["devices"][0]["status"]
                 not in ("pending", "offered"), 120, device)
            record = requests.get(f"{server.url}/api/v1/devices/sw-1", timeout=5).json()
            if release == "2.0.0":              # installed in slot b, rebooted, confirmed, reported
                assert (record["state"], record["version"]) == ("committed", "2.0.0"), record
                assert device.boot_env().get(EnvKey.SLOT) == "b"
            else:                               # crashed 3 times, fell back, swupdate reported the failure
                assert (record["state"], record["version"]) == ("rolled_back", "2.0.0"), record
        history = [e["event"] for e in requests.get(f"{server.url}/api/v1/devices/sw-1/history", timeout=5
                                                    ).json()["events"]]
        # the failure came after SWUpdate said it had installed 2.1.0: a rollback, which quarantines the
        # release for this controller (no poll offers it again)
        assert history[:4] == ["update_started", "committed", "update_started", "rolled_back"], history
        assert "failed 3 trial boots: falling back to slot b" in device.log.read_text()
    finally:
        if device.process and device.process.poll() is None:
            device.kill()
        server.stop()
