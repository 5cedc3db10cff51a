"""A device process updates over the real broker and server, and survives SIGKILL."""
import pytest

pytestmark = pytest.mark.integration


def state_of(fleet, device):
    return fleet.states.get(device.device_id, {})


def test_device_updates_by_delta_and_commits(make_device, fleet):
    device = make_device().start()
    fleet.wait_for(lambda f: state_of(f, device).get("state") == "running", 30, "first boot")
    assert state_of(fleet, device)["version"] == "1.0.0"
    fleet.command([device.device_id], {"cmd": "update"})
    fleet.wait_for(lambda f: state_of(f, device).get("state") == "committed", 60, "commit of 2.0.0")
    final = state_of(fleet, device)
    assert (final["version"], final["slot"], final["verified"], final["confirmed"]) == ("2.0.0", "b", True, True)
    flash = device.inspect()
    assert flash["running"]["version"] == "2.0.0" and flash["bootable"]
    assert flash["boot"]["security_counter"] == 2
    events = [e["event"] for e in fleet.events[device.device_id]]
    assert events.index("downloaded") < events.index("staged") < events.index("committed")


def test_killed_mid_update_device_comes_back_and_finishes(make_device, fleet):
    device = make_device(FOTA_CHUNK_SIZE="1024").start()
    fleet.wait_for(lambda f: state_of(f, device).get("state") == "running", 30, "first boot")
    fleet.command([device.device_id], {"cmd": "update"})
    fleet.wait_for(lambda f: state_of(f, device).get("state") in ("downloading", "installing", "rebooting", "trial"),
                   30, "update in progress")
    device.power_cut()
    assert device.inspect()["bootable"]
    device.start()
    fleet.wait_for(lambda f: state_of(f, device).get("version") == "2.0.0"
                   and state_of(f, device).get("confirmed"), 60, "2.0.0 committed after the cut")
    assert device.inspect()["running"]["verified"]
