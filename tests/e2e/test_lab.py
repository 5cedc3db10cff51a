"""The compose lab end to end: a fleet update over MQTT and HTTP, with real power cuts."""
from __future__ import annotations

import hashlib

import pytest

pytestmark = pytest.mark.e2e

# where each device's power is cut during the fleet update ("installing" is short: the cut may land
# just after it, which the crash-point sweep covers operation by operation)
PHASES_TO_CUT = {"device-1": "downloading", "device-2": "installing", "device-3": "trial"}


def test_seed_routes_serve_the_signed_release(http, server_url):
    base = server_url
    assert http.get(f"{base}/healthz", timeout=5).json()["status"] == "ok"
    delta = http.get(f"{base}/updates/v1_to_v2.delta", timeout=5)
    image = http.get(f"{base}/updates/v2.bin", timeout=5)
    digest = http.get(f"{base}/hash/v2.sha256", timeout=5).text.split()[0]
    assert hashlib.sha256(image.content).hexdigest() == digest
    assert len(delta.content) * 10 < len(image.content)     # a realistic edit: the delta is small


def test_fleet_updates_and_devices_cut_mid_update_recover(compose_lab, fleet, factory_fleet):
    devices = factory_fleet()
    assert len(devices) >= 3
    fleet.command(None, {"cmd": "update"})
    for device, phase in PHASES_TO_CUT.items():
        fleet.wait_for(lambda f, device=device, phase=phase: f.states.get(device, {}).get("state") == phase, 90,
                       f"{device} {phase}")
        compose_lab.kill(device)
        compose_lab.start(device)
    fleet.wait_for(lambda f: all(f.states.get(d, {}).get("state") == "committed"
                                 and f.states[d].get("version") == "2.0.0" for d in devices), 120,
                   "every device committed on 2.0.0")
    for device in devices:
        flash = compose_lab.inspect_device(device)
        assert flash["running"]["version"] == "2.0.0" and flash["running"]["verified"], device
        assert flash["boot"]["confirmed"] and flash["boot"]["security_counter"] == 2
        assert flash["journal"] is None
    resumed = [e for e in fleet.events.get("device-1", []) if e["event"] in ("update_resumed", "download_resumed")]
    assert resumed, "device-1 was cut while downloading, so it must have resumed"
