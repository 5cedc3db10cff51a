"""A man-in-the-middle on the link (fota-linkproxy's attack settings, used by docs/labs/05-attacks.md):
the device refuses a tampered delta and an old release the server was tricked into offering."""
import pytest

from fotalab.lab.linkproxy import LinkProxy
from fotalab.protocol import SUCCESS_STATES

pytestmark = pytest.mark.integration


def test_delta_with_flipped_bytes_is_discarded_and_the_running_image_kept(make_device, fleet, update_server):
    link = LinkProxy(("127.0.0.1", update_server.port), corrupt_probability=1.0).start()
    try:
        device = make_device(FOTA_SERVER_URL=f"http://127.0.0.1:{link.port}")
        device.start()
        fleet.wait_for(lambda f: f.states.get(device.device_id, {}).get("state") == "running", 30, "first boot")
        fleet.command([device.device_id], {"cmd": "update"})
        fleet.wait_for(lambda f: f.states.get(device.device_id, {}).get("state") == "failed", 60, "the update failing")
    finally:
        link.stop()
    assert link.flipped >= 1
    assert "but the signed manifest says" in fleet.states[device.device_id]["reason"]
    flash = device.inspect()
    assert flash["running"]["version"] == "1.0.0" and flash["running"]["verified"] and flash["journal"] is None


def test_old_release_offered_for_a_spoofed_version_is_refused(make_device, fleet, update_server):
    device = make_device(FOTA_SERVER_URL=update_server.url)
    device.start()
    fleet.wait_for(lambda f: f.states.get(device.device_id, {}).get("state") == "running", 30, "first boot")
    fleet.command([device.device_id], {"cmd": "update"})
    fleet.wait_for(lambda f: f.states.get(device.device_id, {}).get("state") == "committed", 60, "commit of 2.0.0")
    device.power_cut()
    link = LinkProxy(("127.0.0.1", update_server.port), spoof_version="1.0.0").start()
    try:
        device.start(FOTA_SERVER_URL=f"http://127.0.0.1:{link.port}")
        fleet.wait_for(lambda f: f.states.get(device.device_id, {}).get("state") in SUCCESS_STATES, 30,
                       "boot on 2.0.0")
        fleet.command([device.device_id], {"cmd": "update"})
        fleet.wait_for(lambda f: f.states.get(device.device_id, {}).get("state") == "failed", 60, "the replay refused")
    finally:
        link.stop()
    assert "not newer than the running 2.0.0" in fleet.states[device.device_id]["reason"]
    assert device.inspect()["running"]["version"] == "2.0.0"
