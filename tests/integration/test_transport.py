"""The device's HTTP transport against the real server: exact ranges, stalls and trickles."""
import hashlib
import json

import pytest

from fotalab.device.errors import TransportError
from fotalab.device.transport import HttpTransport
from fotalab.lab.linkproxy import LinkProxy

pytestmark = pytest.mark.integration


@pytest.fixture
def delta_ref(release_store):
    index = json.loads((release_store / "index.json").read_text())
    release = next(r for r in index["releases"] if r["version"] == "2.0.0")
    return release["deltas"][0]


def test_ranges_are_byte_exact_and_resume_where_asked(update_server, delta_ref, release_store):
    transport = HttpTransport(update_server.url, timeout_s=5, chunk_size=1000)
    url, length = f"/artifacts/{delta_ref['sha256']}", delta_ref["length"]
    head = b"".join(transport.open_range(url, 0, length // 2))
    tail = b"".join(transport.open_range(url, length // 2, length))
    assert hashlib.sha256(head + tail).hexdigest() == delta_ref["sha256"]


def test_trickling_transfer_times_out_with_a_clear_error(update_server, delta_ref):
    link = LinkProxy(("127.0.0.1", update_server.port), kbps=1.6).start()     # 200 B/s
    try:
        transport = HttpTransport(f"http://127.0.0.1:{link.port}", timeout_s=5, chunk_size=256,
                                  min_rate_bps=400, rate_window_s=1.5)
        with pytest.raises(TransportError, match="trickling at .* below the minimum 400 B/s"):
            for _ in transport.open_range(f"/artifacts/{delta_ref['sha256']}", 0, delta_ref["length"]):
                pass
    finally:
        link.stop()


def test_stalled_transfer_times_out_with_a_clear_error(update_server, delta_ref):
    link = LinkProxy(("127.0.0.1", update_server.port), kbps=0.4).start()     # a 512-byte piece every 10 s
    try:
        transport = HttpTransport(f"http://127.0.0.1:{link.port}", timeout_s=1, chunk_size=256)
        with pytest.raises(TransportError, match="stalled: no data for 1 s"):
            for _ in transport.open_range(f"/artifacts/{delta_ref['sha256']}", 0, delta_ref["length"]):
                pass
    finally:
        link.stop()


def test_unreachable_server_is_a_transient_error():
    transport = HttpTransport("http://127.0.0.1:9", timeout_s=1, chunk_size=1024)
    with pytest.raises(TransportError, match="unreachable"):
        transport.fetch_manifest(device_id="d", hardware="fotalab-m4", version="1.0.0", image_sha256="00")
