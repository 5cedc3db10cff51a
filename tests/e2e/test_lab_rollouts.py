"""Rollouts on the compose lab, driven with `docker compose run --rm cli fota ...` and the API:
the crash-at-boot release 2.1.0 stops at its canary, which rolls back by itself; the good
release reaches every device, phase by phase, across a broker restart and a server restart."""
from __future__ import annotations

import json
import time

import pytest
import requests

pytestmark = pytest.mark.e2e


def fota(lab, *args: str) -> dict:
    done = lab.compose("--profile", "tools", "run", "--rm", "--no-deps", "-T", "cli", "fota", "--json", *args,
                       timeout=120)
    return json.loads(done.stdout)


def rollout_until(http: requests.Session, base: str, rollout_id: int, check, timeout: float, what: str) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        try:
            rollout = http.get(f"{base}/api/v1/rollouts/{rollout_id}", timeout=5).json()
            if check(rollout):
                return rollout
        except (requests.RequestException, ValueError):
            rollout = None                       # the server is restarting
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not reached after {timeout:.0f} s: {json.dumps(rollout)[:3000]}")
        time.sleep(1)


def test_rollouts_stop_a_bad_release_at_the_canary_and_survive_restarts(compose_lab, fleet, factory_fleet, http,
                                                                       server_url):
    devices = factory_fleet()
    base = server_url
    token = compose_lab.read_file("server", "/var/lib/fotalab/api-token")
    started = {d: len(fleet.events.get(d, [])) for d in devices}

    bad = fota(compose_lab, "rollout", "create", "2.1.0", "--phases", "1,100%")
    assert [d["device_id"] for d in bad["devices"]] == devices
    stopped = rollout_until(http, base, bad["id"], lambda r: r["status"] != "running", 120, "the bad rollout stopping")
    canary = devices[0]
    assert stopped["status"] == "paused" and stopped["quarantined"] == [canary], stopped["reason"]
    assert fleet.states[canary]["version"] == "1.0.0"
    assert fleet.states[canary]["last_rollback"]["version"] == "2.1.0"
    assert any(e["event"] == "rolled_back" for e in fleet.events[canary][started[canary]:])
    for other in devices[1:]:
        touched = [e["event"] for e in fleet.events.get(other, [])[started[other]:] if e["event"] != "booted"]
        assert touched == [], f"{other} is outside the canary but saw {touched}"
    assert fota(compose_lab, "rollout", "abort", str(bad["id"]))["status"] == "aborted"

    since = time.time()
    good = http.post(f"{base}/api/v1/rollouts", headers={"Authorization": f"Bearer {token}"}, timeout=10,
                         json={"release": "2.0.0", "phases": ["1", "100%"],
                               "policy": {"backoff_s": 2, "rehint_s": 10}}).json()
    rollout_until(http, base, good["id"], lambda r: r["phase"] >= 1, 120, "the good canary committed")
    compose_lab.kill("mosquitto")                # broker restart mid-rollout
    compose_lab.start("mosquitto")
    compose_lab.kill("server")                   # server restart mid-rollout
    compose_lab.start("server")
    done = rollout_until(http, base, good["id"], lambda r: r["status"] != "running", 180, "the good rollout ending")
    assert done["status"] == "completed", done["reason"]
    assert {d["device_id"]: d["status"] for d in done["devices"]} == dict.fromkeys(devices, "committed")
    for device in devices:
        # the registry and the flash: a SIGKILLed mosquitto hands out the retained states of its
        # last autosave again, which the registry ignores (ordered by the device's clock)
        assert http.get(f"{base}/api/v1/devices/{device}", timeout=5).json()["version"] == "2.0.0", device
        flash = compose_lab.inspect_device(device)
        assert flash["running"]["version"] == "2.0.0" and flash["boot"]["confirmed"], device
    # phases in order: no device of phase 1 started before the canary committed (this rollout's events)
    history = {d: http.get(f"{base}/api/v1/devices/{d}/history?limit=1000", timeout=5).json()["events"]
               for d in devices}
    canary_commit = max(e["received_at"] for e in history[canary] if e["event"] == "committed")
    for other in devices[1:]:
        starts = [e["received_at"] for e in history[other]
                  if e["event"] == "update_started" and e["received_at"] > since]
        assert starts and min(starts) > canary_commit, other
    listed = fota(compose_lab, "rollout", "list")["rollouts"]
    assert [(r["release"], r["status"]) for r in listed[-2:]] == [("2.1.0", "aborted"), ("2.0.0", "completed")]
