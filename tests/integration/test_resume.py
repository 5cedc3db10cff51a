"""Resumable downloads over a slow link: power cuts re-fetch at most one chunk each."""
import time

import pytest

from fotalab.lab.linkproxy import LinkProxy

pytestmark = pytest.mark.integration

CHUNK = 256


@pytest.fixture
def slow_link(update_server):
    """A 2 kbit/s link between the device and the server that counts the bytes it carries."""
    proxy = LinkProxy(("127.0.0.1", update_server.port), kbps=2).start()
    yield proxy
    proxy.stop()


def test_repeated_cuts_mid_download_refetch_at_most_a_chunk_each(make_device, fleet, slow_link, release_store):
    device = make_device(FOTA_CHUNK_SIZE=str(CHUNK), FOTA_SERVER_URL=f"http://127.0.0.1:{slow_link.port}")
    device.start()
    fleet.wait_for(lambda f: f.states.get(device.device_id, {}).get("state") == "running", 30, "first boot")
    fleet.command([device.device_id], {"cmd": "update"})
    cuts, offsets = 0, []
    try:
        while cuts < 3:
            fleet.wait_for(lambda f: f.states.get(device.device_id, {}).get("state") == "downloading"
                           and f.states[device.device_id]["offset"] not in offsets, 60, "download progress")
            offsets.append(fleet.states[device.device_id]["offset"])
            time.sleep(0.3)          # cut somewhere inside the next chunk
            device.power_cut()
            cuts += 1
            device.start()
        fleet.wait_for(lambda f: f.states.get(device.device_id, {}).get("state") == "committed", 120, "commit")
    except TimeoutError as exc:
        raise AssertionError(f"after {cuts} cuts at offsets {offsets}: {exc}\n--- the device's log ---\n"
                             f"{device.log.read_text()[-6000:]}") from None
    flash = device.inspect()
    assert flash["running"]["version"] == "2.0.0" and flash["running"]["verified"]
    artifact = next(e for e in fleet.events[device.device_id] if e["event"] == "update_started")["length"]
    control_bytes = 4096 * (cuts + 1)     # the manifest and health checks, a few KiB per power-on
    print(f"link carried {slow_link.bytes_down} bytes for a {artifact}-byte artifact with {cuts} cuts")
    assert slow_link.bytes_down <= artifact + CHUNK * cuts + control_bytes, (slow_link.bytes_down, artifact)
    resumed = [e for e in fleet.events[device.device_id] if e["event"] == "download_resumed"]
    assert len(resumed) >= cuts - 1


def test_link_dropping_connections_mid_transfer_still_delivers_a_byte_identical_image(
        make_device, fleet, update_server):
    flaky = LinkProxy(("127.0.0.1", update_server.port), drop_probability=0.3, seed=5).start()
    try:
        device = make_device(FOTA_CHUNK_SIZE=str(CHUNK), FOTA_SERVER_URL=f"http://127.0.0.1:{flaky.port}")
        device.start()
        fleet.wait_for(lambda f: f.states.get(device.device_id, {}).get("state") == "running", 30, "first boot")
        fleet.command([device.device_id], {"cmd": "update"})
        fleet.wait_for(lambda f: f.states.get(device.device_id, {}).get("state") == "committed", 120, "commit")
    finally:
        flaky.stop()
    events = fleet.events[device.device_id]
    artifact = next(e for e in events if e["event"] == "update_started")["length"]
    print(f"link dropped {flaky.drops} connections and carried {flaky.bytes_down} bytes "
          f"for a {artifact}-byte artifact")
    assert flaky.drops >= 1 and any(e["event"] == "retry" for e in events)
    flash = device.inspect()      # the installed image matched the signed SHA-256 before it could boot
    assert flash["running"]["version"] == "2.0.0" and flash["running"]["verified"]
