"""Key rotation with the real signer: a device in the field follows the signed handover."""
import shutil

import pytest

from fotalab.lab import locallab

pytestmark = pytest.mark.integration


def test_device_updates_across_a_key_rotation_and_adopts_the_new_key(release_store, make_device, fleet, tmp_path):
    root = tmp_path / "signer"
    shutil.copytree(release_store.parent, root)          # the lab's store and its (old) key
    device = make_device()
    device.releases = root / "releases"
    device.start()
    fleet.wait_for(lambda f: f.states.get(device.device_id, {}).get("state") == "running", 30, "first boot")
    old_key = device.inspect()["trusted_keys"]

    locallab.run_signer(root, "rotate-key")
    store = locallab.run_signer(root, "build")
    server = locallab.Server(store, tmp_path / "rotated-server.log").start()
    try:
        device.power_cut()
        device.server = server
        device.start()
        fleet.wait_for(lambda f: f.states.get(device.device_id, {}).get("state") == "running", 30, "reboot")
        fleet.command([device.device_id], {"cmd": "update"})
        fleet.wait_for(lambda f: f.states.get(device.device_id, {}).get("state") == "committed", 60, "commit")
    finally:
        server.stop()
    flash = device.inspect()
    assert flash["running"]["version"] == "2.0.0" and flash["running"]["verified"]
    assert len(flash["trusted_keys"]) == 1 and flash["trusted_keys"] != old_key
    assert any(e["event"] == "key_rotated" for e in fleet.events[device.device_id])
