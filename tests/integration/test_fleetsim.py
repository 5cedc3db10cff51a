"""fota-fleetsim against a real broker and gunicorn server: 20 virtual devices, each with its own
MQTT identity and flash, taken through a phased rollout to commit while power cuts hit some of
them in the middle of their update; the server sees them as ordinary fleet members."""
from __future__ import annotations

import signal

import requests

from fotalab.lab import locallab
from fotalab.lab.fleetsim.shards import STOP_WITHIN_S
from fotalab.protocol import SUCCESS_STATES, Event, RolloutStatus

DEVICES = 20
TOKEN = {"Authorization": "Bearer integration-token"}


def test_virtual_devices_update_to_commit_through_a_rollout_with_power_cuts(release_store, broker,
                                                                             ingesting_server, tmp_path):
    server = ingesting_server(workers=2)
    sim = locallab.FleetSim(tmp_path / "fleetsim", release_store, broker, server, DEVICES,
                            env={"FOTA_SIM_CUT_SHARE": "0.3", "FOTA_SIM_OFF_S": "0.5", "FOTA_SIM_SEED": "3"}).start()
    try:
        locallab.wait_until(lambda: sim.status().get("online") == DEVICES, 30, "20 virtual devices online")
        created = requests.post(f"{server.url}/api/v1/rollouts", headers=TOKEN, timeout=10, json={
            "release": "2.0.0", "selection": {"group": "sim"}, "phases": ["1", "25%", "100%"]})
        assert created.status_code == 201, created.text
        rollout_url = f"{server.url}/api/v1/rollouts/{created.json()['id']}"
        locallab.wait_until(lambda: requests.get(rollout_url, timeout=10).json()["status"] != RolloutStatus.RUNNING,
                            50, "the rollout over the virtual devices")
        rollout = requests.get(rollout_url, timeout=10).json()
        assert rollout["status"] == RolloutStatus.COMPLETED, rollout
        status = sim.status()
        assert status["cuts"] >= 2, status               # some were cut mid-update, and still committed
        assert status["errors"] == 0 and status["bricked"] == 0, status["error_samples"]

        def registered() -> list[dict]:
            devices = requests.get(f"{server.url}/api/v1/devices", timeout=10).json()
            return [d for d in devices["devices"] if d["device_id"].startswith("sim-")]
        try:
            locallab.wait_until(lambda: all(d["state"] in SUCCESS_STATES and d["version"] == "2.0.0"
                                            for d in registered()), 10,
                                "the registry to show every virtual device on 2.0.0")
        except TimeoutError:
            raise AssertionError({d["device_id"]: (d["state"], d["version"]) for d in registered()
                                  if d["state"] not in SUCCESS_STATES}) from None
        devices = registered()
        assert len(devices) == DEVICES
        assert {(d["version"], d["online"]) for d in devices} == {("2.0.0", True)}
        for device in devices:              # each has its own history, as any device of the fleet
            history = requests.get(f"{server.url}/api/v1/devices/{device['device_id']}/history", timeout=10).json()
            events = {e["event"] for e in history["events"]}
            # a power cut can take the in-flight update_started report down with it (as on a real
            # device); after power-on the device reports update_resumed for the journaled update
            assert {Event.BOOTED, Event.STAGED} <= events, (device["device_id"], events)
            assert events & {Event.UPDATE_STARTED, Event.UPDATE_RESUMED}, (device["device_id"], events)
        locallab.wait_until(lambda: sim.status()["online"] == DEVICES, 30, "every virtual device connected")
    finally:
        sim.stop()


def test_a_fleet_split_over_two_processes_is_one_fleet_to_the_server_and_in_its_status(release_store, broker,
                                                                                       ingesting_server, tmp_path):
    server = ingesting_server(workers=2)
    sim = locallab.FleetSim(tmp_path / "fleetsim", release_store, broker, server, DEVICES,
                            env={"FOTA_SIM_PROCESSES": "2", "FOTA_SIM_CUT_SHARE": "0.2", "FOTA_SIM_OFF_S": "0.5"}
                            ).start()
    try:
        locallab.wait_until(lambda: sim.status().get("online") == DEVICES, 30, "20 virtual devices online")
        status = sim.status()
        assert (status["processes"], status["devices"], status["phases"]) == (2, DEVICES, {"idle": DEVICES}), status
        created = requests.post(f"{server.url}/api/v1/rollouts", headers=TOKEN, timeout=10, json={
            "release": "2.0.0", "selection": {"group": "sim"}, "phases": ["100%"]})
        assert created.status_code == 201, created.text
        rollout_url = f"{server.url}/api/v1/rollouts/{created.json()['id']}"
        locallab.wait_until(lambda: requests.get(rollout_url, timeout=10).json()["status"] != RolloutStatus.RUNNING,
                            50, "the rollout over both processes' devices")
        assert requests.get(rollout_url, timeout=10).json()["status"] == RolloutStatus.COMPLETED
        locallab.wait_until(lambda: sim.status().get("versions") == {"2.0.0": DEVICES}, 10, "every device on 2.0.0")
        status = sim.status()
        assert status["errors"] == 0 and status["bricked"] == 0 and status["cuts"] >= 1, status
        assert status["connects"] >= 2 * DEVICES and status["longest"] == [], status
        sim.process.send_signal(signal.SIGTERM)    # as compose stops it: both children, then the parent
        assert sim.process.wait(STOP_WITHIN_S + 5) == 0
    finally:
        sim.stop()
