"""The dashboard's event stream on the real server (gunicorn, several workers) fed by the real
broker: a state a device publishes shows up in an open stream, and a stop does not wait for
open streams."""
from __future__ import annotations

import json
import signal
import time

import pytest
import requests

pytestmark = pytest.mark.integration


@pytest.fixture
def live_server(ingesting_server):
    return ingesting_server(workers=2)


def stream_messages(response: requests.Response):
    """(event, data) of each Server-Sent Event; keep-alive comments are skipped."""
    event, data = "", ""
    for line in response.iter_lines(decode_unicode=True):
        if line.startswith("event: "):
            event = line[len("event: "):]
        elif line.startswith("data: "):
            data = line[len("data: "):]
        elif not line and event:
            yield event, json.loads(data)
            event, data = "", ""


def test_stream_shows_a_state_ingested_from_the_broker(live_server, publisher):
    with requests.get(f"{live_server.url}/api/v1/stream", stream=True, timeout=10) as response:
        assert response.status_code == 200
        assert response.headers["Content-Type"].startswith("text/event-stream")
        messages = stream_messages(response)
        event, snapshot = next(messages)
        assert event == "snapshot" and all(d["device_id"] != "live-1" for d in snapshot["devices"])
        publisher.send("live-1", "state", {"ts": time.time(), "state": "downloading", "version": "1.0.0",
                                           "slot": "a", "progress": 0.25})
        deadline = time.monotonic() + 10
        for _event, data in messages:
            seen = {d["device_id"]: d for d in data.get("devices", [])}
            if "live-1" in seen:
                assert (seen["live-1"]["state"], seen["live-1"]["progress"]) == ("downloading", 0.25)
                break
            assert time.monotonic() < deadline, "the ingested state did not reach the stream in 10 s"


def test_server_stops_promptly_with_open_streams(live_server):
    streams = [requests.get(f"{live_server.url}/api/v1/stream", stream=True, timeout=10) for _ in range(3)]
    for response in streams:
        assert next(stream_messages(response))[0] == "snapshot"
    started = time.monotonic()
    live_server.process.send_signal(signal.SIGTERM)
    live_server.process.wait(timeout=15)
    # gunicorn waits up to graceful_timeout (5 s) for open connections; the streams end at once
    assert time.monotonic() - started < 4
    for response in streams:
        assert list(stream_messages(response)) == []
        response.close()
