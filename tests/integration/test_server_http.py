"""The real server under gunicorn: byte-exact ranges, metrics over several workers, one JSON log
line per request, slow downloads that outlast the worker timeout and hold no thread, and
clients that hang up (a download stops, a dashboard stream gives its place back)."""
from __future__ import annotations

import hashlib
import json
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from fotalab.lab import locallab
from server_samples import make_store, scraped_metric

pytestmark = pytest.mark.integration


@pytest.fixture
def store(tmp_path):
    return make_store(tmp_path / "store")


def worker_pids(server: locallab.Server) -> set[int]:
    children = Path(f"/proc/{server.process.pid}/task/{server.process.pid}/children").read_text()
    return {int(pid) for pid in children.split()}


def request_lines(log: Path) -> list[dict]:
    lines = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    return [line for line in lines if line.get("msg") == "request"]


def test_downloads_are_exact_counted_and_logged(store, tmp_path):
    server = locallab.Server(store.root, tmp_path / "server.log", workers=2,
                             env={"FOTA_API_TOKEN": "t", "FOTA_SERVER_THREADS": "4"}).start()
    try:
        sha = store.images[("m4", "2.0.0")]
        data = store.data[sha]
        url = f"{server.url}/artifacts/{sha}"
        cuts = [0, 4096, 100_000, len(data)]
        with requests.Session() as session:
            parts = [session.get(url, headers={"Range": f"bytes={a}-{b - 1}"}, timeout=5)
                     for a, b in zip(cuts, cuts[1:])]
            whole = [session.get(url, timeout=5) for _ in range(6)]
        assert all(p.status_code == 206 for p in parts) and b"".join(p.content for p in parts) == data
        assert all(w.status_code == 200 and w.content == data for w in whole)
        assert requests.get(f"{server.url}/artifacts/{'0' * 64}", timeout=5).status_code == 404
        # a download is counted once its last block is handed to gunicorn
        locallab.wait_until(lambda: scraped_metric(server.url, "fotalab_artifact_downloads_in_flight") == 0, 5,
                            "downloads closed")
        assert scraped_metric(server.url, "fotalab_artifact_bytes_sent_total", kind="image") == 7 * len(data)
        assert scraped_metric(server.url, "fotalab_artifact_downloads_total", kind="image") == 9
        for status, count in (("206", 3), ("200", 6), ("404", 1)):
            assert scraped_metric(server.url, "fotalab_http_requests_total", method="GET", route="artifact",
                                  status=status) == count

        time.sleep(0.3)                                          # the log writer is a thread
        lines = [line for line in request_lines(server.log) if line["route"] == "artifact"]
        assert sorted(line["status"] for line in lines) == [200] * 6 + [206] * 3 + [404]
        assert sorted(line["bytes"] for line in lines if line["status"] == 206) == sorted(
            b - a for a, b in zip(cuts, cuts[1:]))
        assert all(line["bytes"] == len(data) for line in lines if line["status"] == 200)
    finally:
        server.stop()


def slow_download(port: int, path: str, rate: float) -> tuple[bytes, float]:
    """A client on a slow link: a small receive buffer read at `rate` bytes/s."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
        sock.settimeout(30)
        sock.connect(("127.0.0.1", port))
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".encode())
        data, started = bytearray(), time.monotonic()
        while chunk := sock.recv(65536):
            data += chunk
            time.sleep(max(0.0, len(data) / rate - (time.monotonic() - started)))
    return bytes(data).partition(b"\r\n\r\n")[2], time.monotonic() - started


def test_slow_downloads_outlast_the_worker_timeout_without_killing_workers(tmp_path):
    store = make_store(tmp_path / "store", image_size=12 << 20)   # more than loopback's socket buffers hold
    sha = store.images[("m4", "1.0.0")]
    # far more transfers than the workers have threads: a download is served on the event loop
    timeout_s, clients = 2, 24
    server = locallab.Server(store.root, tmp_path / "server.log", workers=2,
                             env={"FOTA_API_TOKEN": "t", "FOTA_SERVER_THREADS": "2",
                                  "FOTA_SERVER_TIMEOUT": str(timeout_s)}).start()
    try:
        locallab.wait_until(lambda: len(worker_pids(server)) == 2, 10, "both workers")
        before = worker_pids(server)
        rate = len(store.data[sha]) / (2.5 * timeout_s)          # each transfer lasts 2.5 x the timeout
        with ThreadPoolExecutor(clients) as pool:
            results = list(pool.map(lambda _: slow_download(server.port, f"/artifacts/{sha}", rate), range(clients)))
        assert all(hashlib.sha256(body).hexdigest() == sha for body, _ in results)
        assert min(seconds for _, seconds in results) > 2 * timeout_s
        time.sleep(0.3)
        served = [line for line in request_lines(server.log) if line["route"] == "artifact"]
        assert len(served) == clients and min(line["duration_ms"] for line in served) > 1000 * timeout_s
        assert "WORKER TIMEOUT" not in server.log.read_text()
        assert worker_pids(server) == before
    finally:
        server.stop()


def test_a_download_stops_when_its_client_hangs_up(tmp_path):
    store = make_store(tmp_path / "store", image_size=12 << 20)
    sha = store.images[("m4", "1.0.0")]
    server = locallab.Server(store.root, tmp_path / "server.log", workers=1, env={"FOTA_API_TOKEN": "t"}).start()
    try:
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
            sock.connect(("127.0.0.1", server.port))
            sock.sendall(f"GET /artifacts/{sha} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
            assert sock.recv(65536).startswith(b"HTTP/1.1 200")
        locallab.wait_until(lambda: scraped_metric(server.url, "fotalab_artifact_downloads_in_flight") == 0, 10,
                            "the download to end")
        # a block or two was handed over before the hang-up; the rest of the 12 MiB was never read
        assert 0 < scraped_metric(server.url, "fotalab_artifact_bytes_sent_total", kind="image") <= 4 << 20
    finally:
        server.stop()


def test_a_closed_dashboard_gives_its_stream_place_back_at_once(store, tmp_path):
    server = locallab.Server(store.root, tmp_path / "server.log", workers=1,
                             env={"FOTA_API_TOKEN": "t", "FOTA_SERVER_THREADS": "4",
                                  "FOTA_SERVER_STREAMS": "1"}).start()
    url = f"{server.url}/api/v1/stream"
    try:
        first = requests.get(url, stream=True, timeout=10)
        lines = first.iter_lines()      # kept: urllib3 closes the connection when this generator is dropped
        assert first.status_code == 200 and next(lines).startswith(b"retry:")
        assert requests.get(url, timeout=5).status_code == 503          # the worker's one place is taken
        first.close()
        # taken back on the hang-up, not at the stream's next keep-alive write (15 s)
        deadline = time.monotonic() + 3
        while (second := requests.get(url, stream=True, timeout=5)).status_code != 200:
            second.close()
            assert time.monotonic() < deadline, "the closed stream still holds its place after 3 s"
            time.sleep(0.1)
        second.close()
    finally:
        server.stop()
