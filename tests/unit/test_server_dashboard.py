"""The dashboard: its page and offline assets, the snapshot, chart data computed from the
event history, the rollout log (engine and operator decisions), and the v2 -> v3 migration;
the fleet table a page at a time (filters, orders, counts in SQL) and the change feed per view."""
from __future__ import annotations

import json
import re
import sqlite3
import time
from pathlib import Path

import pytest

from fotalab.protocol import Event, State
from fotalab.server import ingest, rollout_engine
from fotalab.server.fleetview import View
from fotalab.server.live import ChangeFeed
from fotalab.server.registry import SCHEMA_VERSION, Registry
from server_samples import TOKEN

AUTH = {"Authorization": f"Bearer {TOKEN}"}
STATIC = Path(__file__).parents[2] / "services" / "fotalab" / "server" / "static"
# XML namespace names are identifiers, never fetched
NAMESPACES = ("http://www.w3.org/2000/svg",)


@pytest.fixture
def registry(app) -> Registry:
    return app.extensions["fotalab"].registry


def report(registry: Registry, device: str, kind: str, body: dict, now: float | None = None) -> None:
    payload = json.dumps({"device": device, "hardware": "m4", **body}).encode()
    assert ingest.handle(registry, f"fota/v1/devices/{device}/{kind}", payload, now)[1] == "stored"


def running(registry: Registry, *devices: str, version: str = "1.0.0", ts: float = 1.0) -> None:
    for device in devices:
        report(registry, device, "state", {"ts": ts, "state": "running", "version": version, "slot": "a",
                                           "confirmed": True})


def without_comments(text: str) -> str:
    text = re.sub(r"/\*.*?\*/|<!--.*?-->", "", text, flags=re.S)
    return re.sub(r"(^|\s)//.*$", "", text, flags=re.M)


def test_dashboard_page_and_assets_are_served_without_external_urls(client):
    page = client.get("/")
    assert page.status_code == 200 and page.mimetype == "text/html"
    html = page.get_data(as_text=True)
    assets = re.findall(r'(?:src|href)="(/static/[^"]+)"', html)
    assert {Path(a).suffix for a in assets} >= {".js", ".css"}
    types = {".js": ("text/javascript", "application/javascript"), ".css": ("text/css",),
             ".svg": ("image/svg+xml",)}
    for asset in assets:
        served = client.get(asset)
        assert served.status_code == 200 and served.mimetype in types[Path(asset).suffix], asset
    for path in STATIC.iterdir():
        code = without_comments(path.read_text())
        for namespace in NAMESPACES:
            code = code.replace(namespace, "")
        assert not re.search(r"https?://", code), f"{path.name} refers to the internet: the lab may be offline"


def test_snapshot_has_devices_with_their_last_result_and_rollouts(client, registry):
    running(registry, "dev-1", "dev-2")
    report(registry, "dev-2", "state", {"ts": 2.0, "state": "running", "version": "1.0.0", "slot": "a",
                                        "last_rollback": {"version": "2.1.0", "reason": "trial boot not confirmed"}})
    report(registry, "dev-1", "state", {"ts": 3.0, "state": "failed", "version": "1.0.0", "target": "2.0.0",
                                        "reason": "download stalled"})
    client.post("/api/v1/rollouts", json={"release": "2.0.0", "phases": ["1"]}, headers=AUTH)
    snapshot = client.get("/api/v1/dashboard").json
    results = {d["device_id"]: d["last_result"] for d in snapshot["devices"]}
    assert results == {"dev-1": {"outcome": "failed", "version": "2.0.0", "reason": "download stalled"},
                       "dev-2": {"outcome": "rolled_back", "version": "2.1.0", "reason": "trial boot not confirmed"}}
    [rollout] = snapshot["rollouts"]
    assert rollout["device_count"] == 2 and "devices" not in rollout and rollout["created_at"] > 0
    assert [d["action"] for d in snapshot["decisions"]] == ["created"]


def test_operator_actions_are_logged_and_need_the_token(client, registry):
    running(registry, "dev-1", "dev-2")
    created = client.post("/api/v1/rollouts", json={"release": "2.0.0", "phases": ["1"]}, headers=AUTH).json
    base = f"/api/v1/rollouts/{created['id']}"
    for verb in ("pause", "resume", "abort"):
        assert client.post(f"{base}/{verb}").status_code == 401
    assert [d["action"] for d in client.get(f"{base}/log").json["decisions"]] == ["created"]
    for verb in ("pause", "resume", "abort"):
        assert client.post(f"{base}/{verb}", headers=AUTH).status_code == 200
    refused = client.post(f"{base}/resume", headers=AUTH)
    assert refused.status_code == 409 and "only a paused rollout" in refused.json["error"]
    log = client.get(f"{base}/log").json["decisions"]
    assert [(d["actor"], d["action"], d["status"]) for d in log] == [
        ("operator", "created", "running"), ("operator", "paused", "paused"),
        ("operator", "resumed", "running"), ("operator", "aborted", "aborted")]
    assert log[0]["reason"].startswith("2.0.0 to 2 device(s)") and log[3]["reason"] == "aborted by the operator"
    assert client.get("/api/v1/rollouts/99/log").status_code == 404


@pytest.mark.parametrize("method, path", [("post", "/api/v1/rollouts"), ("post", "/api/v1/devices/dev-1/trigger"),
                                          ("post", "/api/v1/rollouts/1/pause")])
def test_dashboard_actions_still_need_the_token(client, registry, method, path):
    running(registry, "dev-1")
    refused = getattr(client, method)(path, json={"release": "2.0.0"})
    assert refused.status_code == 401 and "Authorization: Bearer" in refused.json["error"]
    assert registry.rollouts() == [] and registry.take_hints() == []


def test_engine_logs_phases_passed_and_completion(client, registry):
    running(registry, "dev-1", "dev-2")
    created = client.post("/api/v1/rollouts", json={"release": "2.0.0", "phases": ["1"]}, headers=AUTH).json
    hints: list[str] = []
    rollout_engine.tick(registry, hints.append, now=10)
    for ts, device in ((5.0, "dev-1"), (6.0, "dev-2")):
        report(registry, device, "state", {"ts": ts, "state": "committed", "version": "2.0.0", "confirmed": True})
        rollout_engine.tick(registry, hints.append, now=10 + ts)
    log = registry.rollout_log(rollout_id=created["id"])
    assert [(d["actor"], d["action"], d["phase"]) for d in log] == [
        ("operator", "created", 0), ("engine", "advanced", 1), ("engine", "completed", 1)]
    assert log[1]["reason"] == "phase 0 passed its gate (1 of 1 devices committed): phase 1 starts"
    assert log[2]["status"] == "completed" and hints == ["dev-1", "dev-2"]


def test_engine_logs_a_tripped_failure_gate(client, registry):
    running(registry, "dev-1", "dev-2")
    created = client.post("/api/v1/rollouts", json={"release": "2.0.0", "phases": ["1"]}, headers=AUTH).json
    rollout_engine.tick(registry, lambda device: None, now=10)
    report(registry, "dev-1", "state", {"ts": 5.0, "state": "running", "version": "1.0.0", "confirmed": True,
                                        "last_rollback": {"version": "2.0.0", "reason": "self-test failed",
                                                          "cause": "firmware"}})
    rollout_engine.tick(registry, lambda device: None, now=11)
    last = registry.rollout_log(rollout_id=created["id"])[-1]
    assert (last["actor"], last["action"], last["status"]) == ("engine", "paused", "paused")
    assert last["reason"].startswith("failure gate: 1 of 1 devices failed: dev-1 (rolled back: self-test failed)")


def test_bandwidth_chart_compares_downloads_with_full_images(client, registry, store):
    full_2 = len(store.data[store.images[("m4", "2.0.0")]])
    full_3 = len(store.data[store.images[("m4", "3.0.0")]])
    history = [("dev-1", "update_started", {"target": "2.0.0", "artifact": "delta", "length": 5000}),
               ("dev-1", "download_resumed", {"target": "2.0.0", "offset": 2000, "length": 5000}),
               ("dev-1", "downloaded", {"target": "2.0.0", "length": 5000, "resumes": 1}),
               ("dev-1", "committed", {"version": "2.0.0"}),
               ("dev-2", "update_started", {"target": "3.0.0", "artifact": "image", "length": full_3}),
               ("dev-2", "downloaded", {"target": "3.0.0", "length": full_3, "resumes": 0}),
               ("dev-2", "committed", {"version": "3.0.0"})]
    for ts, (device, event, body) in enumerate(history, 1):
        report(registry, device, "events", {"ts": ts, "event": event, **body})
    bandwidth = client.get("/api/v1/dashboard/charts").json["bandwidth"]
    assert [(u["device_id"], u["kind"], u["downloaded"], u["full"]) for u in bandwidth["updates"]] == [
        ("dev-1", "delta", 5000, full_2), ("dev-2", "image", full_3, full_3)]
    assert bandwidth["saved"] == full_2 - 5000
    assert bandwidth["saved_pct"] == round(100 * (full_2 - 5000) / (full_2 + full_3), 1)


def test_recoveries_chart_counts_power_on_boots_and_resumes_in_the_window(client, registry):
    now = time.time()
    events = [("booted", {"reset_reason": "power-on"}, now - 60), ("booted", {"reset_reason": "power-on"}, now - 50),
              ("booted", {"reset_reason": "watchdog: no kick for 10 s"}, now - 40),
              ("download_resumed", {"offset": 10, "length": 20}, now - 30),
              ("update_resumed", {"phase": "install", "offset": 0}, now - 20),
              ("booted", {"reset_reason": "power-on"}, now - 7200)]          # outside a one-hour window
    for ts, (event, body, at) in enumerate(events, 1):
        report(registry, "dev-1", "events", {"ts": ts, "event": event, **body}, now=at)
    recoveries = client.get("/api/v1/dashboard/charts?hours=1").json["recoveries"]
    assert recoveries["totals"] == {"power_on_boots": 2, "download_resumes": 1, "update_resumes": 1}
    assert recoveries["series"]["power_on_boots"][-1] == 2 and len(recoveries["series"]["power_on_boots"]) == 24


def test_rollout_chart_counts_commits_of_its_devices_with_decision_marks(client, registry):
    running(registry, "dev-1", "dev-2", "dev-3")
    created = client.post("/api/v1/rollouts", json={"release": "2.0.0", "selection": {"devices": ["dev-1", "dev-2"]},
                                                    "phases": ["1"]}, headers=AUTH).json
    for ts, device, version in ((1, "dev-1", "2.0.0"), (2, "dev-3", "2.0.0"), (3, "dev-2", "3.0.0"),
                                (4, "dev-2", "2.0.0")):
        report(registry, device, "events", {"ts": ts, "event": "committed", "version": version})
    chart = client.get(f"/api/v1/dashboard/charts?rollout={created['id']}").json["rollout"]
    assert (chart["id"], chart["devices"], chart["release"]) == (created["id"], 2, "2.0.0")
    assert [p["committed"] for p in chart["points"]] == [1, 2]
    assert [m["action"] for m in chart["marks"]] == ["created"]


@pytest.mark.parametrize("query, message", [("hours=0", "more than 0"), ("hours=x", "number of hours"),
                                            ("rollout=7", "no rollout 7")])
def test_chart_queries_are_checked(client, query, message):
    response = client.get(f"/api/v1/dashboard/charts?{query}")
    assert response.status_code in (400, 404) and message in response.json["error"]


V2_SCHEMA = """
CREATE TABLE devices (device_id TEXT PRIMARY KEY, hardware TEXT, state TEXT, version TEXT, slot TEXT,
    image_sha256 TEXT, progress REAL, reason TEXT, state_ts REAL NOT NULL DEFAULT 0, report TEXT,
    online INTEGER NOT NULL DEFAULT 0, first_seen REAL NOT NULL, last_seen REAL NOT NULL);
CREATE TABLE events (id INTEGER PRIMARY KEY AUTOINCREMENT, device_id TEXT NOT NULL, ts REAL NOT NULL,
    event TEXT NOT NULL, received_at REAL NOT NULL, payload TEXT NOT NULL, UNIQUE (device_id, ts, event));
CREATE INDEX events_by_device ON events (device_id, id);
CREATE TABLE assignments (device_id TEXT PRIMARY KEY, version TEXT NOT NULL, assigned_at REAL NOT NULL);
CREATE TABLE rollouts (id INTEGER PRIMARY KEY AUTOINCREMENT, status TEXT NOT NULL, revision INTEGER NOT NULL,
    created_at REAL NOT NULL, updated_at REAL NOT NULL, body TEXT NOT NULL);
CREATE TABLE hints (device_id TEXT PRIMARY KEY, requested_at REAL NOT NULL);
CREATE TABLE ingester (id INTEGER PRIMARY KEY CHECK (id = 1), pid INTEGER NOT NULL, connected INTEGER NOT NULL,
    since REAL NOT NULL);
PRAGMA user_version = 2;
"""


def test_a_v2_database_is_migrated_with_a_log_for_its_rollouts(tmp_path):
    from fotalab.server import rollouts
    path = tmp_path / "registry.sqlite3"
    old = sqlite3.connect(path)
    old.executescript(V2_SCHEMA)
    planned = rollouts.plan(0, "2.0.0", {"all": True}, ["dev-1"], ["1"], rollouts.Policy())
    old.execute("INSERT INTO rollouts (status, revision, created_at, updated_at, body) VALUES "
                "('paused', 3, 100.0, 200.0, ?)", (rollouts.dumps(planned),))
    old.commit()
    old.close()
    registry = Registry(path)
    registry.migrate()
    registry.migrate()                                  # idempotent
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    indexes = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    assert {"events_by_kind", "devices_by_last_seen", "rollouts_by_update", "rollout_log_by_rollout"} <= indexes
    [entry] = registry.rollout_log(rollout_id=1)
    assert (entry["action"], entry["at"], entry["phase"]) == ("created", 100.0, 0)
    assert registry.rollout(1).revision == 3


# --- the fleet table at scale: counts in SQL, a page at a time, changes per view -------------------

def fleet(registry: Registry, size: int) -> None:
    """`size` devices sim-001...: every third downloading, every fourth in group lab, the even ones online;
    seen in that order within the last second (a change feed started now reads them)."""
    base = time.time() - 1
    with registry.batch():
        for n in range(1, size + 1):
            device = f"sim-{n:03d}"
            registry.record_state(device, {"ts": 1.0, "state": State.DOWNLOADING if n % 3 == 0 else State.RUNNING,
                                           "version": f"1.0.{n % 2}", "group": "lab" if n % 4 == 0 else "sim"},
                                  now=base + n / 1000)
            registry.record_status(device, n % 2 == 0, now=base + n / 1000)


def ids(body: dict) -> list[str]:
    return [d["device_id"] for d in body["devices"]]


def test_snapshot_sends_one_page_of_the_fleet_and_counts_from_the_registry(client, registry):
    fleet(registry, 120)
    first = client.get("/api/v1/dashboard").json
    assert ids(first) == [f"sim-{n:03d}" for n in range(1, 51)] and first["page"]["ids"] == ids(first)
    assert first["counts"] == {"total": 120, "online": 60, "downloading": 40,
                               "by_state": {State.DOWNLOADING: 40, State.RUNNING: 80}}
    assert (first["page"]["total"], first["page"]["offset"], first["page"]["limit"]) == (120, 0, 50)
    second = client.get("/api/v1/dashboard?offset=50").json
    assert ids(second) == [f"sim-{n:03d}" for n in range(51, 101)] and not set(ids(first)) & set(ids(second))
    last = client.get("/api/v1/dashboard?offset=100&limit=50").json
    assert ids(last) == [f"sim-{n:03d}" for n in range(101, 121)] and last["counts"]["total"] == 120


@pytest.mark.parametrize("query, expected", [
    ("state=downloading&limit=5", [f"sim-{n:03d}" for n in (3, 6, 9, 12, 15)]),
    ("state=downloading&offset=38", ["sim-117", "sim-120"]),
    ("group=lab&limit=3", ["sim-004", "sim-008", "sim-012"]),
    ("group=lab&state=downloading&limit=3", ["sim-012", "sim-024", "sim-036"]),
    ("online=1&limit=3&sort=device&desc=1", ["sim-120", "sim-118", "sim-116"]),
    ("sort=last_seen&desc=true&limit=2", ["sim-120", "sim-119"]),
    ("sort=version&limit=2", ["sim-002", "sim-004"]),          # 1.0.0 first, the device id breaks ties
    ("sort=state&desc=1&limit=2", ["sim-119", "sim-118"]),     # running after downloading, then ids descending
    ("state=unknown", []),
    ("state=sleeping", []),                                    # a word no device reported: nothing, no error
])
def test_pages_filter_and_sort_in_the_registry(client, registry, query, expected):
    fleet(registry, 120)
    body = client.get(f"/api/v1/dashboard?{query}").json
    assert ids(body) == expected and body["page"]["ids"] == expected
    assert body["counts"]["total"] == 120                      # the counts are the fleet's, not the filter's


def test_page_total_counts_the_filter(client, registry):
    fleet(registry, 120)
    assert client.get("/api/v1/dashboard?state=downloading&group=lab").json["page"]["total"] == 10


@pytest.mark.parametrize("query, message", [
    ("offset=-1", "offset must be 0 or more"), ("limit=0", "limit 1 to 500"), ("limit=501", "limit 1 to 500"),
    ("offset=x", "whole numbers"), ("state=" + "s" * 201, "at most 200 characters"),
    ("sort=hardware", "sort must be one of"),
    ("online=maybe", "online is 1 or 0"), ("group=" + "g" * 201, "at most 200 characters")])
@pytest.mark.parametrize("path", ["/api/v1/dashboard", "/api/v1/stream"])
def test_page_queries_are_checked(client, path, query, message):
    response = client.get(f"{path}?{query}")
    assert response.status_code == 400 and message in response.json["error"]


def test_the_open_device_comes_with_the_snapshot_even_off_the_page(client, registry):
    fleet(registry, 120)
    body = client.get("/api/v1/dashboard?device=sim-099").json
    assert ids(body)[-1] == "sim-099" and "sim-099" not in body["page"]["ids"] and len(body["devices"]) == 51


def test_metrics_counts_come_from_one_aggregate_query(client, registry):
    fleet(registry, 120)
    statements: list[str] = []
    registry._db().set_trace_callback(statements.append)
    assert registry.counts() == ({State.DOWNLOADING: 40, State.RUNNING: 80}, 60)
    registry._db().set_trace_callback(None)
    assert len(statements) == 1 and "GROUP BY state" in statements[0]
    text = client.get("/metrics").get_data(as_text=True)
    assert 'fotalab_devices{state="downloading"} 40.0' in text and "fotalab_devices_online 60.0" in text


def test_a_change_batch_carries_the_counts_and_only_its_views_changed_rows(registry):
    fleet(registry, 120)
    feed = ChangeFeed(registry)
    first, second = View(), View(offset=50)
    batch = feed.read()
    assert {v: len(feed.message(batch, v)["devices"]) for v in (first, second)} == {first: 50, second: 50}
    assert feed.read() is None                                 # nothing changed since
    registry.record_state("sim-054", {"ts": 2.0, "state": State.COMMITTED, "version": "2.0.0"}, now=time.time())
    registry.record_event("sim-054", {"ts": 2.0, "event": Event.COMMITTED, "version": "2.0.0"}, now=time.time())
    batch = feed.read()
    on_first, on_second = feed.message(batch, first), feed.message(batch, second)
    assert on_first["devices"] == [] and on_first["events"] == [] and on_first["event_kinds"] == [Event.COMMITTED]
    assert ids(on_second) == ["sim-054"] and [e["device_id"] for e in on_second["events"]] == ["sim-054"]
    assert on_first["counts"] == on_second["counts"] and on_first["counts"]["downloading"] == 39
    assert on_second["page"]["ids"] == [f"sim-{n:03d}" for n in range(51, 101)]
    downloading = View(state=State.DOWNLOADING, limit=5)       # a device that leaves the filter leaves the page
    feed.message(batch, downloading)
    registry.record_state("sim-006", {"ts": 2.0, "state": State.COMMITTED, "version": "2.0.0"}, now=time.time())
    moved = feed.message(feed.read(), downloading)
    assert moved["page"]["ids"] == ["sim-003", "sim-009", "sim-012", "sim-015", "sim-018"]
    assert ids(moved) == ["sim-018"] and moved["page"]["total"] == 38


def test_a_rollout_saved_again_is_shown_with_its_new_status(client, registry):
    running(registry, "dev-1", "dev-2")
    created = client.post("/api/v1/rollouts", json={"release": "2.0.0", "phases": ["1"]}, headers=AUTH).json
    assert [r["status"] for r in client.get("/api/v1/dashboard").json["rollouts"]] == ["running"]
    client.post(f"/api/v1/rollouts/{created['id']}/pause", headers=AUTH)
    [shown] = client.get("/api/v1/dashboard").json["rollouts"]      # not the view of the revision shown before
    assert (shown["status"], shown["revision"]) == ("paused", 2)
