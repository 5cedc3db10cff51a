"""GET /api/v1/stream: a snapshot first, then the registry's changes from the worker's one
poller; capped per worker; ends by itself, and at once when the worker stops or the client
hangs up."""
from __future__ import annotations

import json
import time

import pytest

from fotalab.server import ingest
from fotalab.server.live import Hangup, Subscription
from server_samples import make_app


@pytest.fixture
def live_app(tmp_path, store):
    """The app with a fast poller (50 ms), two streams per worker, streams of 5 s."""
    return make_app(tmp_path, store, streams=2, live_poll_s=0.05, stream_s=5.0)


def messages(response):
    """(event, data) of each Server-Sent Event of a streamed response; comments as (':', text)."""
    for chunk in response.response:
        text = chunk.decode()
        if text.startswith(":"):
            yield ":", text
            continue
        fields = dict(line.split(": ", 1) for line in text.strip().splitlines())
        yield fields["event"], json.loads(fields["data"])


def test_stream_starts_with_a_snapshot_then_sends_a_state_change(live_app):
    registry = live_app.extensions["fotalab"].registry
    ingest.handle(registry, "fota/v1/devices/dev-1/state", b'{"ts": 1, "state": "running", "version": "1.0.0"}')
    response = live_app.test_client().get("/api/v1/stream", buffered=False)
    assert response.status_code == 200 and response.mimetype == "text/event-stream"
    assert response.headers["Cache-Control"] == "no-cache"
    first = response.response.__iter__().__next__().decode()
    assert first.startswith("retry: 3000\nevent: snapshot\n")
    snapshot = json.loads(first.split("data: ", 1)[1])
    assert [(d["device_id"], d["state"]) for d in snapshot["devices"]] == [("dev-1", "running")]

    ingest.handle(registry, "fota/v1/devices/dev-1/state",
                  b'{"ts": 2, "state": "downloading", "version": "1.0.0", "progress": 0.5}')
    ingest.handle(registry, "fota/v1/devices/dev-1/events", b'{"ts": 2, "event": "update_started"}')
    seen = {}
    for event, data in messages(response):
        if event == "changes":
            seen.update({d["device_id"]: d for d in data["devices"]})
            seen.update({e["event"]: e for e in data["events"]})
        if "update_started" in seen and seen.get("dev-1", {}).get("state") == "downloading":
            break
    assert seen["dev-1"]["progress"] == 0.5 and seen["update_started"]["device_id"] == "dev-1"
    response.close()


def test_the_poller_sends_each_change_once_to_every_stream(live_app):
    registry = live_app.extensions["fotalab"].registry
    streams = [live_app.test_client().get("/api/v1/stream", buffered=False) for _ in range(2)]
    readers = [messages(s) for s in streams]
    for reader in readers:
        assert next(reader)[0] == "snapshot"
    time.sleep(0.2)                          # the poller has read the (empty) backlog
    ingest.handle(registry, "fota/v1/devices/dev-1/status", b"online")
    for reader in readers:
        event, data = next(reader)
        assert event == "changes" and [(d["device_id"], d["online"]) for d in data["devices"]] == [("dev-1", True)]
    time.sleep(0.3)                          # nothing changed since: no batch is queued
    hub = live_app.extensions["fotalab"].live
    hub.close()
    for stream in streams:
        assert list(messages(stream)) == []
        stream.close()


def test_streams_beyond_the_cap_get_503_with_a_retry_hint(live_app):
    client = live_app.test_client()
    open_streams = [client.get("/api/v1/stream", buffered=False) for _ in range(2)]
    refused = client.get("/api/v1/stream")
    assert refused.status_code == 503 and refused.headers["Retry-After"] == "30"
    assert "already serves 2 live dashboard streams" in refused.json["error"]
    assert "GET /api/v1/dashboard" in refused.json["error"] and refused.json["retry_ms"] == 30000
    open_streams[0].close()                  # a closed stream gives its place back
    again = client.get("/api/v1/stream", buffered=False)
    assert again.status_code == 200
    again.close()
    open_streams[1].close()


def test_stream_cap_leaves_half_the_threads_for_downloads(tmp_path, store):
    app = make_app(tmp_path, store, streams=8, threads=4)
    assert app.extensions["fotalab"].live.limit == 2


def test_a_stream_ends_by_itself_so_the_browser_reconnects(tmp_path, store):
    app = make_app(tmp_path, store, stream_s=0.3, live_poll_s=0.05)
    response = app.test_client().get("/api/v1/stream", buffered=False)
    started = time.monotonic()
    assert [event for event, _ in messages(response)] == ["snapshot"]
    assert time.monotonic() - started < 2
    response.close()
    assert app.extensions["fotalab"].live.streams() == 0


def test_closing_the_hub_ends_open_streams_at_once_and_refuses_new_ones(live_app):
    response = live_app.test_client().get("/api/v1/stream", buffered=False)
    reader = messages(response)
    assert next(reader)[0] == "snapshot"
    started = time.monotonic()
    live_app.extensions["fotalab"].live.close()
    assert list(reader) == [] and time.monotonic() - started < 1
    assert live_app.test_client().get("/api/v1/stream").status_code == 503
    response.close()


@pytest.mark.parametrize("order", ["tied, then hung up", "hung up, then tied"])
def test_a_hangup_ends_its_stream_at_once_whenever_it_comes(order):
    subscription, hangup = Subscription(), Hangup()
    steps = [lambda: hangup.tie(subscription), hangup.set]
    for step in steps if order.startswith("tied") else reversed(steps):
        step()
    started = time.monotonic()
    assert subscription.next(timeout=5) is None and time.monotonic() - started < 1
    assert subscription.ended == "the client went away"
