"""The JSON API: token-protected writes, devices and history, OpenAPI, JSON errors, readiness."""
import re

import pytest

from fotalab.server import ingest
from fotalab.server.config import ServerConfig
from fotalab.server.main import prepare
from server_samples import TOKEN, make_app


@pytest.fixture
def registry(app):
    return app.extensions["fotalab"].registry


@pytest.mark.parametrize("method", ["put", "delete"])
@pytest.mark.parametrize("headers, message", [
    ({}, "send 'Authorization: Bearer <token>'"),
    ({"Authorization": f"Basic {TOKEN}"}, "malformed Authorization header"),
    ({"Authorization": "Bearer"}, "malformed Authorization header"),
    ({"Authorization": "Bearer wrong-token"}, "wrong API token"),
    ({"Authorization": f"Bearer {TOKEN}x"}, "wrong API token"),
])
def test_writes_need_the_bearer_token(client, registry, method, headers, message):
    response = getattr(client, method)("/api/v1/devices/dev-1/assignment", json={"version": "3.0.0"},
                                       headers=headers)
    assert response.status_code == 401 and message in response.json["error"]
    assert response.headers["WWW-Authenticate"].lower().startswith("bearer")
    assert registry.assignment("dev-1") is None


def test_assignment_with_the_token(client, registry):
    headers = {"Authorization": f"Bearer {TOKEN}"}
    made = client.put("/api/v1/devices/dev-1/assignment", json={"version": "3.0.0"}, headers=headers)
    assert made.status_code == 200 and made.json == {"version": "3.0.0", "source": "device"}
    assert registry.assignment("dev-1") == "3.0.0"
    assert client.get("/api/v1/devices/dev-1/assignment").json == {"version": "3.0.0", "source": "device"}
    bad = client.put("/api/v1/devices/dev-1/assignment", data="3.0.0", headers=headers)
    assert bad.status_code == 400 and '{"version"' in bad.json["error"]


def test_generated_token_is_kept_and_shown_only_when_created(tmp_path, store, capsys):
    config = ServerConfig(releases_dir=store.root, data_dir=tmp_path / "data")
    first = prepare(config)
    assert first.api_token in capsys.readouterr().err
    assert (tmp_path / "data" / "api-token").stat().st_mode & 0o777 == 0o600
    second = prepare(config)
    assert second.api_token == first.api_token and first.api_token not in capsys.readouterr().err


def test_a_restart_does_not_report_the_previous_runs_ingester(tmp_path, store, registry):
    registry.set_ingester(12345, True)
    assert registry.ingester()["connected"] is True
    prepare(ServerConfig(releases_dir=store.root, data_dir=tmp_path / "data", api_token=TOKEN))
    assert registry.ingester() is None


def test_devices_and_history_from_ingested_messages(client, registry):
    state = b'{"device": "dev-1", "ts": 10.5, "state": "downloading", "version": "1.0.0", "slot": "a", ' \
            b'"hardware": "m4", "progress": 0.25, "target": "2.0.0"}'
    assert ingest.handle(registry, "fota/v1/devices/dev-1/state", state) == ("state", "stored")
    assert ingest.handle(registry, "fota/v1/devices/dev-1/status", b"online") == ("status", "stored")
    for ts, event in ((10.0, "update_started"), (10.4, "download_resumed"), (11.0, "rolled_back")):
        payload = f'{{"device": "dev-1", "ts": {ts}, "event": "{event}", "reason": "r"}}'.encode()
        assert ingest.handle(registry, "fota/v1/devices/dev-1/events", payload) == ("events", "stored")
    ingest.handle(registry, "fota/v1/devices/dev-2/status", b"offline")

    listed = client.get("/api/v1/devices").json
    assert listed["count"] == 2 and [d["device_id"] for d in listed["devices"]] == ["dev-1", "dev-2"]
    assert [d["device_id"] for d in client.get("/api/v1/devices?online=true").json["devices"]] == ["dev-1"]
    assert [d["device_id"] for d in client.get("/api/v1/devices?state=downloading").json["devices"]] == ["dev-1"]
    device = client.get("/api/v1/devices/dev-1").json
    assert (device["state"], device["version"], device["slot"], device["progress"], device["online"]) == \
        ("downloading", "1.0.0", "a", 0.25, True)
    assert device["report"]["target"] == "2.0.0" and device["assignment"] == {"version": "2.0.0", "source": "default"}

    history = client.get("/api/v1/devices/dev-1/history?limit=2").json
    assert [e["event"] for e in history["events"]] == ["update_started", "download_resumed"]
    rest = client.get(f"/api/v1/devices/dev-1/history?after={history['next_after']}").json
    assert [e["event"] for e in rest["events"]] == ["rolled_back"] and rest["next_after"] is None
    assert rest["events"][0]["payload"]["reason"] == "r"


def test_unknown_device_and_bad_queries_are_explained(client, registry):
    assert "GET /api/v1/devices lists them" in client.get("/api/v1/devices/nobody").json["error"]
    assert client.get("/api/v1/devices/nobody/history").status_code == 404
    assert client.get("/api/v1/devices?online=maybe").status_code == 400
    ingest.handle(registry, "fota/v1/devices/known/status", b"online")
    assert "must be integers" in client.get("/api/v1/devices/known/history?limit=x").json["error"]
    assert "limit must be 1-1000" in client.get("/api/v1/devices/known/history?limit=0").json["error"]


def test_errors_are_json_never_a_stack_trace(app, client):
    @app.get("/boom")
    def boom():
        raise RuntimeError("secret internals")
    response = client.get("/boom")
    assert response.status_code == 500 and response.json == {"error": "internal error: the server log has the details",
                                                             "status": 500}
    assert b"Traceback" not in response.data and b"secret internals" not in response.data
    missing = client.get("/no/such/page")
    assert missing.status_code == 404 and missing.is_json
    wrong = client.post("/healthz")
    assert wrong.status_code == 405 and wrong.is_json and "GET" in wrong.headers["Allow"]


def test_openapi_describes_every_route_and_nothing_else(app, client):
    document = client.get("/api/v1/openapi.json").json
    assert document["openapi"].startswith("3.")
    described = {(path, method) for path, item in document["paths"].items() for method in item}
    routes = {(re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule.rule), method.lower())
              for rule in app.url_map.iter_rules() if rule.endpoint != "static"
              and not rule.endpoint.startswith("ddi.")        # hawkBit's DDI API: docs/ddi.md describes it
              for method in rule.methods - {"HEAD", "OPTIONS"}}
    routes |= {("/artifacts/{sha256}", "get"), ("/updates/{name}", "get")}     # served in front of Flask
    assert described == routes
    for path, method in described:
        if method in ("put", "delete", "post"):
            assert document["paths"][path][method]["security"] == [{"bearer": []}]


def test_readiness_reports_database_and_broker(tmp_path, store):
    ready = make_app(tmp_path, store).test_client().get("/readyz")
    assert ready.status_code == 200 and ready.json["checks"]["database"]["ok"] is True
    unreachable = make_app(tmp_path, store, mqtt_host="127.0.0.1", mqtt_port=1).test_client().get("/readyz")
    assert unreachable.status_code == 503 and "MQTT broker 127.0.0.1:1 unreachable" in unreachable.json["problems"][0]


def test_metrics_are_prometheus_text_with_device_counts(client, registry):
    ingest.handle(registry, "fota/v1/devices/a/state", b'{"ts": 1, "state": "committed"}')
    ingest.handle(registry, "fota/v1/devices/b/state", b'{"ts": 1, "state": "committed"}')
    ingest.handle(registry, "fota/v1/devices/c/status", b"online")
    text = client.get("/metrics").get_data(as_text=True)
    assert 'fotalab_devices{state="committed"} 2.0' in text
    assert 'fotalab_devices{state="unknown"} 1.0' in text
    assert "fotalab_devices_online 1.0" in text
    assert "# TYPE fotalab_artifact_downloads_in_flight gauge" in text


def test_rollout_can_select_the_devices_of_a_group(client, registry):
    for device, group in (("dev-1", "field"), ("dev-2", "lab"), ("dev-3", "field")):
        report = f'{{"device": "{device}", "ts": 1.0, "state": "running", "version": "1.0.0", "slot": "a", ' \
                 f'"hardware": "m4", "group": "{group}"}}'.encode()
        ingest.handle(registry, f"fota/v1/devices/{device}/state", report)
    created = client.post("/api/v1/rollouts", json={"release": "2.0.0", "selection": {"group": "field"},
                                                    "phases": ["1"]}, headers={"Authorization": f"Bearer {TOKEN}"})
    assert created.status_code == 201, created.json
    assert sorted(d["device_id"] for d in created.json["devices"]) == ["dev-1", "dev-3"]
