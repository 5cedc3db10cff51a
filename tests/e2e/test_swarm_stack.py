"""The lab as a Docker Swarm stack on a single-node swarm (deploy/swarm/stack.yaml, docs/swarm.md).

Tier `swarm`: it takes longer than CI's budget allows (a fresh stack signs every release, then
10 devices on 2 shared cores), so it runs only when asked for: `scripts/test -m swarm tests/e2e`.
If this engine is in no swarm, the tests `docker swarm init` it and leave it afterwards; the stack
has its own name and ports and is removed with its volumes, on failure too.
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import requests

from fotalab.lab.locallab import free_port
from fotalab.lab.stackctl import Stack, prepare_images
from fotalab.lab.swarmlab import LOCAL, swarm_state

pytestmark = [pytest.mark.e2e, pytest.mark.swarm]

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "test-artifacts"
DEVICES = 10


@pytest.fixture(scope="module")
def single_node_swarm(request, docker_engine):
    expression = request.config.getoption("markexpr") or ""
    if "swarm" not in expression or "not swarm" in expression:
        pytest.skip("tier `swarm` (longer than CI's budget): scripts/test -m swarm tests/e2e")
    initialized = swarm_state() == "inactive"
    if initialized:
        subprocess.run([*LOCAL, "swarm", "init", "--advertise-addr", "127.0.0.1"], check=True, capture_output=True)
    elif swarm_state() != "active":
        pytest.fail(f"this engine's swarm state is {swarm_state()!r}")
    yield
    if initialized:
        subprocess.run([*LOCAL, "swarm", "leave", "--force"], capture_output=True)


@pytest.fixture(scope="module")
def stack(single_node_swarm):
    prepare_images()
    stack = Stack(f"fotalab-e2e-swarm-{uuid.uuid4().hex[:6]}", env={
        "FOTA_FLEET_SIZE": str(DEVICES), "STACK_SERVER_PORT": str(free_port()), "STACK_MQTT_PORT": str(free_port()),
        # a slow radio, so kills land in downloads too; Swarm powers a killed device on after 1 s
        "FOTA_RADIO_KBPS": "16", "FOTA_CHUNK_SIZE": "1024"})
    try:
        stack.deploy()
        stack.wait_ready(timeout=900)
        yield stack
    finally:
        ARTIFACTS.mkdir(exist_ok=True)
        try:
            (ARTIFACTS / f"{stack.name}.log").write_text(stack.lab.logs())
        except Exception as exc:    # keep tearing down even if the logs fail
            print(f"could not save the stack's logs: {exc}")
        stack.remove(volumes=True)


def run_stack_cli(stack: Stack, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "scripts" / "stack"), "--name", stack.name, "fota", *args],
                          capture_output=True, text=True, timeout=timeout, cwd=REPO)


def test_thirty_task_kills_on_ten_devices_brick_nothing_and_every_device_converges(stack):
    report = ARTIFACTS / "swarm-chaos-report.json"
    started = time.monotonic()
    done = subprocess.run([sys.executable, str(REPO / "scripts" / "chaos"), "--stack", stack.name,
                           "--mqtt-port", stack.env["STACK_MQTT_PORT"],
                           "--server-url", f"http://127.0.0.1:{stack.env['STACK_SERVER_PORT']}",
                           "--kills", "30", "--seed", "18", "--gap", "0.5", "2.0", "--settle", "420",
                           "--report", str(report)], capture_output=True, text=True, timeout=1200, cwd=REPO)
    print(done.stdout[-4000:], done.stderr[-2000:], f"campaign {time.monotonic() - started:.0f} s")
    last = done.stdout.strip().splitlines()[-1]
    match = re.fullmatch(r"chaos: (\d+) kills on (\d+) devices: (\d+) bricked, (\d+)/(\d+) converged, "
                         r"recovery p99 ([\d.]+) s", last)
    assert match, last
    kills, devices, bricked, converged, total, _ = match.groups()
    assert int(kills) >= 30 and int(devices) == DEVICES
    assert int(bricked) == 0 and converged == total == devices
    details = json.loads(report.read_text())
    assert all(k["recovery_s"] is not None or k["interrupted"] for k in details["kills"])


def test_a_killed_device_task_comes_back_on_its_slot_with_the_same_flash(stack):
    lab = stack.lab
    lab.device_containers()
    before_id = lab.container("device-3")
    before = lab.inspect_device("device-3")

    def volume(cid: str) -> str:
        mounts = json.loads(lab.docker(None, "inspect", cid).stdout)[0]["Mounts"]
        return next(m["Name"] for m in mounts if m["Destination"] == "/data")

    lab.kill("device-3")
    state = json.loads(lab.docker(None, "inspect", before_id).stdout)[0]["State"]
    assert state["ExitCode"] == 137                 # SIGKILL: a power cut, not a shutdown
    lab.start("device-3")                           # Swarm powers it on again: a new task, same slot
    after_id = lab.container("device-3")
    assert after_id != before_id
    assert volume(after_id) == volume(before_id) == f"{stack.name}_device-flash-3"
    after = lab.inspect_device("device-3")
    assert after["running"]["version"] == before["running"]["version"]
    assert after["boot"]["security_counter"] == before["boot"]["security_counter"]


def test_the_fota_cli_and_the_dashboard_work_against_the_stack(stack):
    devices = run_stack_cli(stack, "devices")
    assert devices.returncode == 0, devices.stderr
    assert all(f"device-{n} " in devices.stdout for n in range(1, DEVICES + 1))
    page = requests.get(f"http://127.0.0.1:{stack.env['STACK_SERVER_PORT']}/", timeout=10)
    assert page.status_code == 200 and "<html" in page.text.lower()


def test_a_rollout_of_the_bad_release_stops_at_its_canary_on_the_stack(stack):
    done = run_stack_cli(stack, "rollout", "create", "2.1.0", "--phases", "1,100%", "--watch", timeout=600)
    print(done.stdout[-3000:], done.stderr[-1000:])
    assert done.returncode == 3, "the rollout should pause after its canary rolled back"
    shown = json.loads(run_stack_cli(stack, "--json", "rollout", "list").stdout)
    rollouts = shown if isinstance(shown, list) else shown.get("rollouts", [])
    assert rollouts and rollouts[-1]["status"] in ("paused", "aborted")
