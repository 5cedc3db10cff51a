"""The front door (fota-frontdoor: the real nginx) in front of the real server under gunicorn:
artifacts straight from the store with ranges, conditions and caching; errors, traversal and
everything else answered by the server; download metrics still true."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time

import pytest
import requests

from fotalab.lab import locallab

API = {"Authorization": "Bearer frontdoor-token"}


@pytest.fixture(scope="module")
def lab_behind_front_door(store, tmp_path_factory):
    """(front door, server): the server reads the front door's download log, as in compose."""
    if not (shutil.which("nginx") or os.path.exists("/usr/sbin/nginx")):
        pytest.fail("nginx is not installed: scripts/test installs it (apt-get install nginx-light)")
    root = tmp_path_factory.mktemp("frontdoor")
    server = locallab.Server(store, root / "server.log", env={
        "FOTA_API_TOKEN": API["Authorization"].split()[1], "FOTA_DOWNLOAD_LOG": str(root / "door" / "downloads.log")})
    server.start()
    door = locallab.FrontDoor(root / "door", server).start()
    yield door, server
    door.stop()
    server.stop()


@pytest.fixture(scope="module")
def door(lab_behind_front_door) -> locallab.FrontDoor:
    return lab_behind_front_door[0]


@pytest.fixture(scope="module")
def image(store) -> tuple[str, bytes]:
    """(sha256, bytes) of release 2.0.0's image."""
    index = json.loads((store / "index.json").read_text())
    sha = next(r["image"] for r in index["releases"] if r["version"] == "2.0.0")
    return sha, (store / "artifacts" / sha).read_bytes()


def test_an_artifact_is_served_whole_and_by_range_byte_exactly(door, image):
    sha, data = image
    whole = requests.get(f"{door.url}/artifacts/{sha}", timeout=5)
    assert whole.status_code == 200 and whole.content == data
    assert whole.headers["Cache-Control"] == "public, max-age=31536000, immutable"
    assert re.fullmatch(r'"[^"]+"', whole.headers["ETag"])            # strong
    part = requests.get(f"{door.url}/artifacts/{sha}", headers={"Range": "bytes=1000-4095"}, timeout=5)
    assert part.status_code == 206 and part.content == data[1000:4096]
    assert part.headers["Content-Range"] == f"bytes 1000-4095/{len(data)}"
    tail = requests.get(f"{door.url}/artifacts/{sha}", headers={"Range": "bytes=-10"}, timeout=5)
    assert tail.status_code == 206 and tail.content == data[-10:]
    head = requests.head(f"{door.url}/artifacts/{sha}", timeout=5)
    assert head.status_code == 200 and int(head.headers["Content-Length"]) == len(data) and not head.content


def test_conditions_follow_the_artifacts_strong_etag(door, image):
    sha, data = image
    etag = requests.head(f"{door.url}/artifacts/{sha}", timeout=5).headers["ETag"]
    url = f"{door.url}/artifacts/{sha}"
    resumed = requests.get(url, headers={"Range": "bytes=100-", "If-Range": etag}, timeout=5)
    assert resumed.status_code == 206 and resumed.content == data[100:]
    other = requests.get(url, headers={"Range": "bytes=100-", "If-Range": '"another-file"'}, timeout=5)
    assert other.status_code == 200 and other.content == data       # never bytes spliced onto another file
    assert requests.get(url, headers={"If-None-Match": etag}, timeout=5).status_code == 304
    assert requests.get(url, headers={"If-Match": '"another-file"'}, timeout=5).status_code == 412


def test_an_unsatisfiable_range_is_416_with_the_length(door, image):
    sha, data = image
    answer = requests.get(f"{door.url}/artifacts/{sha}", headers={"Range": f"bytes={len(data)}-"}, timeout=5)
    assert answer.status_code == 416
    assert answer.headers["Content-Range"] == f"bytes */{len(data)}"


def test_what_the_store_lacks_gets_the_servers_own_error(door):
    unknown = requests.get(f"{door.url}/artifacts/{'0' * 64}", timeout=5)
    assert unknown.status_code == 404 and "/api/v1/releases" in unknown.json()["error"]
    not_a_hash = requests.get(f"{door.url}/artifacts/{'A' * 64}", timeout=5)
    assert not_a_hash.status_code == 400 and "SHA-256" in not_a_hash.json()["error"]
    posted = requests.post(f"{door.url}/artifacts/{'0' * 64}", timeout=5)
    assert posted.status_code in (404, 405)


TRAVERSAL = [
    "/artifacts/../index.json", "/artifacts/..%2f..%2fsecret.txt", "/artifacts/%2e%2e", "/artifacts//etc/passwd",
    "/artifacts/%2e%2e%2findex.json", "/artifacts/..%2findex.json", "/artifacts/%2fetc%2fpasswd",
    "/updates/../index.json", "/updates/..%2findex.json", "/updates/%2e%2e%2findex.json", "/updates/index.json",
    "/updates/..%00/secret.txt", "/updates/manifests%2fm4%2f2.0.0.json", "/index.json", "/artifacts/",
]


@pytest.mark.parametrize("path", TRAVERSAL)
def test_traversal_through_the_front_door_never_serves_a_file(door, path):
    answer = requests.get(f"{door.url}{path}", timeout=5)
    assert answer.status_code in (400, 404), (path, answer.status_code)
    assert b'"signed"' not in answer.content and b'"artifacts"' not in answer.content


def test_a_symlink_planted_in_the_store_is_not_followed(door, store, tmp_path):
    outside = tmp_path / "outside.bin"
    outside.write_bytes(b"not firmware")
    planted = "e" * 64
    os.symlink(outside, store / "artifacts" / planted)
    try:
        answer = requests.get(f"{door.url}/artifacts/{planted}", timeout=5)
        assert answer.status_code == 404 and b"not firmware" not in answer.content
    finally:
        (store / "artifacts" / planted).unlink()


def test_manifests_names_and_the_api_are_proxied_to_the_server(door, image, store):
    manifest = requests.get(f"{door.url}/api/v1/manifest",
                            params={"device": "door-1", "hardware": "fotalab-m4", "version": "1.0.0"}, timeout=5)
    assert manifest.status_code == 200 and manifest.json()["update"] is not None
    sha, data = image
    name = json.loads((store / "index.json").read_text())["artifacts"][sha]["names"][0]
    by_name = requests.get(f"{door.url}/updates/{name}", headers={"Range": "bytes=10-"}, timeout=5)
    assert by_name.status_code == 206 and by_name.content == data[10:]
    assert requests.post(f"{door.url}/api/v1/rollouts", json={}, timeout=5).status_code == 401
    refused = requests.post(f"{door.url}/api/v1/rollouts", json={}, headers=API, timeout=5)
    assert refused.status_code == 400 and refused.json()["error"]


def test_the_dashboard_stream_is_not_buffered(door):
    with requests.get(f"{door.url}/api/v1/stream", stream=True, timeout=5) as stream:
        assert stream.status_code == 200
        first = next(stream.iter_lines())        # the snapshot arrives before the stream ends
        assert first


def metric(base: str, name: str, kind: str) -> float:
    text = requests.get(f"{base}/metrics", timeout=5).text
    found = re.search(rf'^{name}\{{kind="{kind}"\}} (\S+)$', text, re.M)
    return float(found.group(1)) if found else 0.0


def settled(base: str, name: str, kind: str) -> float:
    """The metric once the downloads of earlier tests are counted: nginx flushes its log, and the
    server reads it, once a second."""
    value = metric(base, name, kind)
    while True:
        time.sleep(2.5)
        if (again := metric(base, name, kind)) == value:
            return value
        value = again


def test_downloads_the_front_door_serves_count_in_the_servers_metrics(door, image, store):
    sha, data = image
    kind = json.loads((store / "index.json").read_text())["artifacts"][sha]["kind"]
    before = settled(door.url, "fotalab_artifact_downloads_total", kind)
    sent_before = metric(door.url, "fotalab_artifact_bytes_sent_total", kind)
    for _ in range(3):
        assert requests.get(f"{door.url}/artifacts/{sha}", timeout=5).content == data
    assert requests.get(f"{door.url}/artifacts/{sha}", headers={"Range": "bytes=-100"}, timeout=5).status_code == 206
    deadline = time.monotonic() + 10
    while metric(door.url, "fotalab_artifact_downloads_total", kind) < before + 4 and time.monotonic() < deadline:
        time.sleep(0.3)
    assert metric(door.url, "fotalab_artifact_downloads_total", kind) == before + 4
    assert metric(door.url, "fotalab_artifact_bytes_sent_total", kind) == sent_before + 3 * len(data) + 100


def test_health_goes_through_the_door(door):
    """`fota-frontdoor health` (compose's healthcheck): /healthz through nginx, proxied to the server."""
    done = subprocess.run([sys.executable, "-m", "fotalab.frontdoor.main", "health"], capture_output=True, text=True,
                          env=door.environment(), timeout=30)
    assert done.returncode == 0 and f"http://127.0.0.1:{door.port}/healthz answered 200" in done.stdout
