"""Every kind of bad firmware is rolled back by the device itself, with the reason."""
import pytest

from fotalab.lab import locallab

pytestmark = pytest.mark.integration


@pytest.fixture
def server_offering(release_store, tmp_path):
    servers = []

    def start(version: str) -> locallab.Server:
        server = locallab.Server(release_store, tmp_path / f"server-{version}.log", default_release=version).start()
        servers.append(server)
        return server
    yield start
    for server in servers:
        server.stop()


@pytest.mark.parametrize("version, env, reason", [
    ("2.1.0", {}, "last reset: crash (exit 1)"),
    ("2.2.0", {"FOTA_WATCHDOG_S": "2"}, "last reset: watchdog: no kick for 2 s"),
    ("2.3.0", {}, "self-test failed"),
    ("2.4.0", {"FOTA_TRIAL_SOAK_S": "5"}, "last reset: crash (exit 1)"),
], ids=["crash-at-boot", "hang", "selftest-fail", "crash-after"])
def test_bad_release_rolls_back_to_the_running_image(make_device, fleet, server_offering, version, env, reason):
    device = make_device(**env)
    device.server = server_offering(version)
    device.start()
    fleet.wait_for(lambda f: f.states.get(device.device_id, {}).get("state") == "running", 30, "first boot")
    fleet.command([device.device_id], {"cmd": "update"})
    fleet.wait_for(lambda f: f.states.get(device.device_id, {}).get("state") == "rolled_back", 90, "rollback")
    state = fleet.states[device.device_id]
    assert (state["version"], state["slot"], state["confirmed"]) == ("1.0.0", "a", True)
    assert reason in state["reason"]
    assert state["last_rollback"]["version"] == version
    flash = device.inspect()
    assert flash["running"]["version"] == "1.0.0" and flash["boot"]["security_counter"] == 1
    fleet.command([device.device_id], {"cmd": "update"})      # the bad release is quarantined now
    fleet.wait_for(lambda f: "quarantined" in f.states.get(device.device_id, {}).get("reason", ""), 30,
                   "quarantine refusal")
