"""A DDI client against the real server (gunicorn, 2 workers, ingesting from the real broker):
enrolled with `fota controllers add`, it polls, reads its deploymentBase, downloads the
artifact in two Range requests, reports proceeding and then closed + success; the registry
shows it committed and the rollout that offered the release counts it at its gate."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

import pytest
import requests

from fotalab.lab import locallab

pytestmark = pytest.mark.integration
TOKEN = "ddi-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def server(release_store, broker, tmp_path):
    running = locallab.Server(release_store, tmp_path / "server.log", broker=broker, default_release="1.0.0",
                              env={"FOTA_API_TOKEN": TOKEN, "FOTA_DDI_POLL_S": "2"}).start()
    running.ingester()
    yield running
    running.stop()


def fota(server: locallab.Server, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "FOTA_SERVER_URL": server.url, "FOTA_API_TOKEN": TOKEN}
    return subprocess.run([sys.executable, "-m", "fotalab.cli", *args], env=env, capture_output=True, text=True,
                          timeout=120)


def test_a_ddi_client_updates_and_a_rollout_gate_counts_its_commit(server):
    added = fota(server, "--json", "controllers", "add", "ddi-1", "--hardware", "fotalab-m4")
    assert added.returncode == 0, added.stderr
    enrolled = json.loads(added.stdout)
    token = enrolled["credentials"]["target_token"]
    ddi = {"Authorization": f"TargetToken {token}"}
    base_url = enrolled["ddi_url"]
    assert base_url == f"{server.url}/DEFAULT/controller/v1/ddi-1"
    assert "ddi-1" in fota(server, "controllers", "list").stdout
    assert "ddi-1" in fota(server, "devices").stdout

    first = requests.get(base_url, headers=ddi, timeout=5)
    assert first.status_code == 200 and first.json()["config"]["polling"]["sleep"] == "00:00:02"
    assert "deploymentBase" not in first.json().get("_links", {})
    assert requests.get(base_url, timeout=5).status_code == 401

    created = requests.post(f"{server.url}/api/v1/rollouts", headers=AUTH, timeout=5,
                            json={"release": "2.0.0", "selection": {"devices": ["ddi-1"]}, "phases": ["100%"]})
    assert created.status_code == 201, created.text
    rollout_url = f"{server.url}/api/v1/rollouts/{created.json()['id']}"

    def links() -> dict:
        return requests.get(base_url, headers=ddi, timeout=5).json().get("_links", {})
    locallab.wait_until(lambda: "deploymentBase" in links(), 20, "a deploymentBase link on the poll")
    deployment = requests.get(links()["deploymentBase"]["href"], headers=ddi, timeout=5).json()
    [chunk] = deployment["deployment"]["chunks"]
    [artifact] = chunk["artifacts"]
    assert chunk["version"] == "2.0.0" and artifact["filename"].endswith(".img")

    url, size = artifact["_links"]["download-http"]["href"], artifact["size"]
    head = requests.get(url, headers={"Range": f"bytes=0-{size // 2 - 1}"}, timeout=10)
    assert head.status_code == 206 and len(head.content) == size // 2
    etag = head.headers["ETag"]
    tail = requests.get(url, headers={"Range": f"bytes={size // 2}-", "If-Range": etag}, timeout=10)
    assert tail.status_code == 206
    data = head.content + tail.content
    assert hashlib.sha256(data).hexdigest() == artifact["hashes"]["sha256"]
    assert hashlib.sha1(data).hexdigest() == artifact["hashes"]["sha1"]
    assert requests.get(artifact["_links"]["md5sum-http"]["href"], headers=ddi, timeout=5).text.split()[0] == \
        hashlib.md5(data).hexdigest()

    feedback_url = f"{base_url}/deploymentBase/{deployment['id']}/feedback"
    proceeding = {"id": deployment["id"], "status": {"execution": "proceeding", "details": ["Installing"],
                                                     "result": {"finished": "none", "progress": {"cnt": 1, "of": 2}}}}
    assert requests.post(feedback_url, json=proceeding, headers=ddi, timeout=5).status_code == 200
    device_url = f"{server.url}/api/v1/devices/ddi-1"
    assert requests.get(device_url, timeout=5).json()["state"] == "installing"
    assert requests.get(rollout_url, timeout=5).json()["status"] == "running"
    closed = {"id": deployment["id"], "status": {"execution": "closed", "result": {"finished": "success"},
                                                 "details": ["Update succeeded, post-reboot check passed"]}}
    assert requests.post(feedback_url, json=closed, headers=ddi, timeout=5).status_code == 200

    device = requests.get(device_url, timeout=5).json()
    assert (device["state"], device["version"], device["online"]) == ("committed", "2.0.0", True)
    listed = {d["device_id"]: d for d in requests.get(f"{server.url}/api/v1/devices", timeout=5).json()["devices"]}
    assert listed["ddi-1"]["state"] == "committed"
    locallab.wait_until(lambda: requests.get(rollout_url, timeout=5).json()["status"] == "completed", 20,
                        "the rollout completed")
    rollout = requests.get(rollout_url, timeout=5).json()
    assert rollout["devices"][0]["status"] == "committed" and rollout["phases"][0]["committed"] == 1
    history = [e["event"] for e in requests.get(f"{device_url}/history", timeout=5).json()["events"]]
    assert history == ["update_started", "committed"]
    assert "deploymentBase" not in links()
