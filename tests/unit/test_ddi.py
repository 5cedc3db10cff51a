"""hawkBit's DDI API on the update server: every resource, status codes, auth, malformed input,
cancellation, and DDI controllers as ordinary fleet members (registry, history, rollouts)."""
from __future__ import annotations

import hashlib
import json
import sqlite3
import time

import pytest

from fotalab.cli import release_row
from fotalab.server import rollout_engine
from fotalab.server.ddi_store import DdiStore
from server_samples import TOKEN, http_client, make_app

BEARER = {"Authorization": f"Bearer {TOKEN}"}
BASE = "/DEFAULT/controller/v1"
NOT_READABLE = "hawkbit.server.error.rest.body.notReadable"
NOT_FOUND = "hawkbit.server.error.repo.entitiyNotFound"


@pytest.fixture
def registry(app):
    return app.extensions["fotalab"].registry


def enrol(client, name="ctl-1", hardware="m4") -> str:
    answer = client.post("/api/v1/controllers", json={"name": name, "hardware": hardware}, headers=BEARER)
    assert answer.status_code == 201, answer.json
    return answer.json["credentials"]["target_token"]


def auth(token: str) -> dict:
    return {"Authorization": f"TargetToken {token}"}


def feedback(execution: str, finished: str = "none", details=(), progress=None) -> dict:
    result = {"finished": finished, **({"progress": progress} if progress else {})}
    return {"id": "1", "time": "20261206T031500", "status": {"execution": execution, "result": result,
                                                               "details": list(details)}}


def poll(client, token, name="ctl-1"):
    answer = client.get(f"{BASE}/{name}", headers=auth(token))
    assert answer.status_code == 200, answer.json
    return answer.json


def offered_action(client, token, name="ctl-1") -> int:
    href = poll(client, token, name)["_links"]["deploymentBase"]["href"]
    return int(href.rsplit("/", 1)[1])


def assign(client, version="3.0.0", name="ctl-1"):
    answer = client.put(f"/api/v1/devices/{name}/assignment", json={"version": version}, headers=BEARER)
    assert answer.status_code == 200


def post_feedback(client, token, action_id, body, name="ctl-1", channel="deploymentBase"):
    return client.post(f"{BASE}/{name}/{channel}/{action_id}/feedback", json=body, headers=auth(token))


# --- enrolment -------------------------------------------------------------------------------------


def test_enrolling_a_controller_shows_its_token_once_and_lists_it_without(client, registry):
    answer = client.post("/api/v1/controllers", json={"name": "ctl-1", "hardware": "m4"}, headers=BEARER)
    assert answer.status_code == 201
    token = answer.json["credentials"]["target_token"]
    assert len(token) == 32 and answer.json["tenant"] == "DEFAULT"
    assert answer.json["ddi_url"].endswith("/DEFAULT/controller/v1/ctl-1")
    listed = client.get("/api/v1/controllers").json
    assert [c["controller_id"] for c in listed["controllers"]] == ["ctl-1"] and token not in json.dumps(listed)
    assert token not in registry.path.read_bytes().decode("latin-1")           # only its hash is stored
    assert [d["device_id"] for d in client.get("/api/v1/devices").json["devices"]] == ["ctl-1"]


@pytest.mark.parametrize("body, headers, status", [
    ({"name": "ctl-1", "hardware": "m4"}, {}, 401),
    ({"name": "bad/name", "hardware": "m4"}, BEARER, 400),
    ({"name": "ctl-2", "hardware": "no-such-hw"}, BEARER, 422),
    ({"name": "ctl-2"}, BEARER, 400),                 # two hardware ids in the store: say which
    ({"name": "ctl-1", "hardware": "m4"}, BEARER, 409),
])
def test_enrolment_refuses_what_it_cannot_do(client, body, headers, status):
    enrol(client)
    answer = client.post("/api/v1/controllers", json=body, headers=headers)
    assert answer.status_code == status and answer.json["error"]


# --- auth, tenant, unknown things --------------------------------------------------------------------


def test_requests_without_a_valid_token_are_401_in_hawkbits_error_shape(client):
    token = enrol(client)
    for headers in ({}, {"Authorization": "Bearer " + token}, auth("wrong"), auth(""), auth(token + "x")):
        answer = client.get(f"{BASE}/ctl-1", headers=headers)
        assert answer.status_code == 401
        assert set(answer.json) == {"exceptionClass", "errorCode", "message"}
        assert answer.headers["WWW-Authenticate"].startswith("TargetToken")
    other = enrol(client, "ctl-2")
    assert client.get(f"{BASE}/ctl-1", headers=auth(other)).status_code == 401     # another controller's token
    assert client.get(f"{BASE}/ghost", headers=auth(token)).status_code == 401     # no names guessed by token


def test_an_unknown_tenant_action_or_controller_is_404(client):
    token = enrol(client)
    assert client.get("/OTHER/controller/v1/ctl-1", headers=auth(token)).json["errorCode"] == NOT_FOUND
    assert client.get("/default/controller/v1/ctl-1", headers=auth(token)).status_code == 200   # case-insensitive
    missing = client.get(f"{BASE}/ctl-1/deploymentBase/999", headers=auth(token))
    assert missing.status_code == 404 and missing.json["errorCode"] == NOT_FOUND
    assert post_feedback(client, token, 999, feedback("proceeding")).status_code == 404
    assert client.get(f"{BASE}/ctl-1/cancelAction/999", headers=auth(token)).status_code == 404


def test_a_gateway_token_speaks_for_every_controller_of_the_tenant(tmp_path, store):
    client = http_client(make_app(tmp_path, store, ddi_gateway_token="gw-secret"))
    enrol(client)
    gateway = {"Authorization": "GatewayToken gw-secret"}
    assert client.get(f"{BASE}/ctl-1", headers=gateway).status_code == 200
    assert client.get(f"{BASE}/ghost", headers=gateway).status_code == 404
    assert client.get(f"{BASE}/ctl-1", headers={"Authorization": "GatewayToken nope"}).status_code == 401


def test_without_a_configured_gateway_token_none_is_accepted(client):
    enrol(client)
    assert client.get(f"{BASE}/ctl-1", headers={"Authorization": "GatewayToken x"}).status_code == 401


# --- the base resource and deploymentBase ------------------------------------------------------------


def test_the_base_resource_says_how_often_to_poll_and_asks_for_config_data_first(client):
    token = enrol(client)
    base = poll(client, token)
    assert base["config"] == {"polling": {"sleep": "00:00:10"}}
    assert set(base["_links"]) == {"configData"} and base["_links"]["configData"]["href"].startswith("http")
    assert client.put(f"{BASE}/ctl-1/configData", json={"data": {"hwRevision": "2"}},
                      headers=auth(token)).status_code == 200
    assert "_links" not in poll(client, token)          # nothing to do, nothing to ask


def test_an_assignment_becomes_a_deployment_with_the_images_hashes_and_links(client, store):
    token = enrol(client)
    assign(client)
    action_id = offered_action(client, token)
    assert offered_action(client, token) == action_id              # the same action on every poll
    answer = client.get(f"{BASE}/ctl-1/deploymentBase/{action_id}", headers=auth(token))
    assert answer.status_code == 200 and "actionHistory" not in answer.json
    body = answer.json
    assert body["id"] == str(action_id)
    assert (body["deployment"]["download"], body["deployment"]["update"]) == ("forced", "forced")
    [chunk] = body["deployment"]["chunks"]
    assert (chunk["part"], chunk["version"]) == ("os", "3.0.0")
    [artifact] = chunk["artifacts"]
    data = store.data[store.images[("m4", "3.0.0")]]
    assert artifact["filename"] == "m4-3.0.0.img" and artifact["size"] == len(data)
    assert artifact["hashes"] == {"sha1": hashlib.sha1(data).hexdigest(), "md5": hashlib.md5(data).hexdigest(),
                                  "sha256": hashlib.sha256(data).hexdigest()}
    download = artifact["_links"]["download-http"]["href"]
    assert download.startswith("http://") and download.endswith(f"/artifacts/{hashlib.sha256(data).hexdigest()}")
    path = download.split("://", 1)[1].split("/", 1)[1]
    ranged = client.get("/" + path, headers={"Range": "bytes=100-199", "If-Range": f'"{artifact["hashes"]["sha256"]}"'})
    assert ranged.status_code == 206 and ranged.data == data[100:200]
    md5sum = artifact["_links"]["md5sum-http"]["href"].split("://", 1)[1].split("/", 1)[1]
    assert client.get("/" + md5sum, headers=auth(token)).text == f"{hashlib.md5(data).hexdigest()}  m4-3.0.0.img\n"
    assert client.get("/" + md5sum).status_code == 401


def test_nothing_is_offered_without_an_assignment_or_a_hint(client, registry):
    token = enrol(client)
    assert "deploymentBase" not in poll(client, token).get("_links", {})
    DdiStore(registry).request_offer("ctl-1")                      # `fota trigger`: the default release
    action_id = offered_action(client, token)
    chunk = client.get(f"{BASE}/ctl-1/deploymentBase/{action_id}", headers=auth(token)).json["deployment"]["chunks"][0]
    assert chunk["version"] == "2.0.0"


def test_swupdate_hardware_gets_the_releases_swu(tmp_path, store):
    index = json.loads((store.root / "index.json").read_text())
    swu = store.put(b"070701" + b"\0" * 4000, "swu", ["sw-hw-2.0.0.swu"], index)
    index["releases"].append({"hardware": "sw-hw", "version": "2.0.0", "security_counter": 1, "behaviour": "good",
                              "source_sha256": "0" * 64, "image": store.images[("m4", "2.0.0")],
                              "manifest": "manifests/m4/2.0.0.json", "deltas": [],
                              "swu": {"sha256": swu, "length": 4006, "source": "x"}, "swu_deltas": []})
    (store.root / "index.json").write_text(json.dumps(index))
    client = http_client(make_app(tmp_path, store))
    token = enrol(client, "sw-1", "sw-hw")
    assign(client, "2.0.0", "sw-1")
    action_id = offered_action(client, token, "sw-1")
    [artifact] = client.get(f"{BASE}/sw-1/deploymentBase/{action_id}",
                            headers=auth(token)).json["deployment"]["chunks"][0]["artifacts"]
    assert (artifact["filename"], artifact["size"], artifact["hashes"]["sha256"]) == ("sw-hw-2.0.0.swu", 4006, swu)


# --- feedback -------------------------------------------------------------------------------------------


def test_feedback_moves_the_device_from_downloading_to_committed(client):
    token = enrol(client)
    assign(client)
    action_id = offered_action(client, token)
    assert post_feedback(client, token, action_id, feedback("proceeding", progress={"cnt": 1, "of": 4},
                                                            details=["Downloading"])).status_code == 200
    device = client.get("/api/v1/devices/ctl-1").json
    assert (device["state"], device["progress"]) == ("downloading", 0.25)
    post_feedback(client, token, action_id, feedback("proceeding", progress={"cnt": 2, "of": 4},
                                                     details=["Installing Update Chunk Artifacts."]))
    assert client.get("/api/v1/devices/ctl-1").json["state"] == "installing"
    assert post_feedback(client, token, action_id, feedback("closed", "success", ["All done"])).status_code == 200
    device = client.get("/api/v1/devices/ctl-1").json
    assert (device["state"], device["version"], device["report"]["confirmed"]) == ("committed", "3.0.0", True)
    events = [e["event"] for e in client.get("/api/v1/devices/ctl-1/history").json["events"]]
    assert events == ["update_started", "committed"]
    assert "deploymentBase" not in poll(client, token).get("_links", {})
    assert post_feedback(client, token, action_id, feedback("closed", "success")).status_code == 200  # a retry
    gone = post_feedback(client, token, action_id, feedback("proceeding"))
    assert gone.status_code == 410 and set(gone.json) == {"exceptionClass", "errorCode", "message"}


def test_a_closed_failure_fails_the_device_with_the_clients_details(client):
    token = enrol(client)
    assign(client)
    action_id = offered_action(client, token)
    post_feedback(client, token, action_id, feedback("closed", "failure", ["Bootloader fell back", "rc=3"]))
    device = client.get("/api/v1/devices/ctl-1").json
    assert (device["state"], device["reason"]) == ("failed", "Bootloader fell back; rc=3")
    [failed] = [e for e in client.get("/api/v1/devices/ctl-1/history").json["events"] if e["event"] == "failed"]
    assert failed["payload"]["reason"] == "Bootloader fell back; rc=3"


def test_a_failure_after_the_update_was_installed_is_a_rollback_the_rollout_quarantines(client, registry):
    token = enrol(client)
    created = client.post("/api/v1/rollouts", json={"release": "3.0.0", "selection": {"devices": ["ctl-1"]}},
                          headers=BEARER).json
    rollout_engine.tick(registry, print)
    action_id = offered_action(client, token)
    post_feedback(client, token, action_id, feedback("proceeding", details=["All Chunks Installed."]))
    post_feedback(client, token, action_id, feedback("closed", "failure", ["Update Failed."]))    # SWUpdate's words
    device = client.get("/api/v1/devices/ctl-1").json
    assert (device["state"], device["reason"]) == ("rolled_back", "Update Failed.")
    assert device["report"]["last_rollback"] == {"version": "3.0.0", "reason": "Update Failed.", "cause": "firmware"}
    rollout_engine.tick(registry, print)
    rollout = client.get(f"/api/v1/rollouts/{created['id']}").json
    assert rollout["status"] == "paused" and rollout["quarantined"] == ["ctl-1"]     # the failure gate tripped
    DdiStore(registry).request_offer("ctl-1")                    # an operator's trigger: still not offered again
    assert "deploymentBase" not in poll(client, token).get("_links", {})


@pytest.mark.parametrize("body", [
    None, [], "text", {}, {"status": "closed"},
    {"status": {"execution": "finished", "result": {"finished": "success"}}},
    {"status": {"execution": "closed"}},
    {"status": {"execution": "closed", "result": {"finished": "none"}}},
    {"status": {"execution": "closed", "result": {"finished": "maybe"}}},
    {"status": {"execution": "proceeding", "result": {"finished": "none", "progress": {"cnt": -1, "of": 2}}}},
    {"status": {"execution": "proceeding", "result": {"finished": "none", "progress": {"cnt": "1"}}}},
    {"status": {"execution": "proceeding", "result": {"finished": "none"}, "details": "not a list"}},
    {"status": {"execution": "proceeding", "result": {"finished": "none"}, "details": [1, 2]}},
    {"status": {"execution": "proceeding", "result": {"finished": "none"}, "details": ["x"] * 51}},
    {"status": {"execution": "proceeding", "result": {"finished": "none"}, "code": "200"}},
])
def test_malformed_feedback_is_400_and_changes_nothing(client, registry, body):
    token = enrol(client)
    assign(client)
    action_id = offered_action(client, token)
    before = client.get("/api/v1/devices/ctl-1").json
    answer = client.post(f"{BASE}/ctl-1/deploymentBase/{action_id}/feedback", data=json.dumps(body),
                         headers={**auth(token), "Content-Type": "application/json"})
    assert answer.status_code == 400 and answer.json["errorCode"] == NOT_READABLE
    assert client.get("/api/v1/devices/ctl-1").json == before
    assert client.get("/api/v1/devices/ctl-1/history").json["events"] == []
    assert DdiStore(registry).action("ctl-1", action_id).status == "RUNNING"


def test_a_body_that_is_not_json_or_too_big_is_400(client):
    token = enrol(client)
    assign(client)
    action_id = offered_action(client, token)
    url = f"{BASE}/ctl-1/deploymentBase/{action_id}/feedback"
    assert client.post(url, data=b"{not json", headers=auth(token)).status_code == 400
    big = json.dumps(feedback("proceeding", details=["x" * 1000] * 50 + ["y" * 20000]))
    assert client.post(url, data=big, headers={**auth(token), "Content-Type": "application/json"}).status_code == 400


def test_action_history_lists_the_clients_messages_newest_first(client):
    token = enrol(client)
    assign(client)
    action_id = offered_action(client, token)
    for text in ("Started download", "Download done", "Write firmware"):
        post_feedback(client, token, action_id, feedback("proceeding", details=[text]))
    history = client.get(f"{BASE}/ctl-1/deploymentBase/{action_id}?actionHistory=2",
                         headers=auth(token)).json["actionHistory"]
    assert history["status"] == "RUNNING" and len(history["messages"]) == 2
    assert "Write firmware" in history["messages"][0] and "Download done" in history["messages"][1]
    everything = client.get(f"{BASE}/ctl-1/deploymentBase/{action_id}?actionHistory=-1", headers=auth(token))
    assert len(everything.json["actionHistory"]["messages"]) == 3
    assert client.get(f"{BASE}/ctl-1/deploymentBase/{action_id}?actionHistory=x",
                      headers=auth(token)).status_code == 400


# --- configData and cancelAction -----------------------------------------------------------------------


def test_config_data_merges_replaces_and_removes_attributes(client):
    token = enrol(client)
    url = f"{BASE}/ctl-1/configData"
    assert client.put(url, json={"data": {"a": "1", "b": "2"}}, headers=auth(token)).status_code == 200
    assert client.put(url, json={"data": {"c": "3"}, "mode": "merge"}, headers=auth(token)).status_code == 200
    assert client.put(url, json={"data": {"a": ""}, "mode": "remove"}, headers=auth(token)).status_code == 200
    [listed] = client.get("/api/v1/controllers").json["controllers"]
    assert listed["attributes"] == {"b": "2", "c": "3"}
    client.put(url, json={"data": {"z": "9"}, "mode": "replace", "id": "", "status": {}}, headers=auth(token))
    assert client.get("/api/v1/controllers").json["controllers"][0]["attributes"] == {"z": "9"}
    for bad in ({}, {"data": {}}, {"data": {"a": 1}}, {"data": {"a": "1"}, "mode": "append"}, {"data": ["a"]}):
        answer = client.put(url, json=bad, headers=auth(token))
        assert answer.status_code == 400 and answer.json["errorCode"] == NOT_READABLE


def test_a_withdrawn_assignment_cancels_the_action_through_cancel_action(client, registry):
    token = enrol(client)
    assign(client)
    action_id = offered_action(client, token)
    assert client.get(f"{BASE}/ctl-1/cancelAction/{action_id}", headers=auth(token)).status_code == 404
    client.delete("/api/v1/devices/ctl-1/assignment", headers=BEARER)
    links = poll(client, token)["_links"]
    assert "deploymentBase" not in links and links["cancelAction"]["href"].endswith(f"/cancelAction/{action_id}")
    cancel = client.get(f"{BASE}/ctl-1/cancelAction/{action_id}", headers=auth(token)).json
    assert cancel == {"id": str(action_id), "cancelAction": {"stopId": str(action_id)}}
    assert post_feedback(client, token, action_id, feedback("proceeding"), channel="cancelAction").status_code == 200
    assert DdiStore(registry).action("ctl-1", action_id).status == "CANCELING"
    assert post_feedback(client, token, action_id, feedback("canceled"), channel="cancelAction").status_code == 200
    assert DdiStore(registry).action("ctl-1", action_id).status == "CANCELED"
    assert "cancelAction" not in poll(client, token).get("_links", {})
    assert post_feedback(client, token, action_id, feedback("canceled"), channel="cancelAction").status_code == 200
    assert post_feedback(client, token, action_id, feedback("rejected"), channel="cancelAction").status_code == 410


def test_a_rejected_cancellation_lets_the_update_go_on(client, registry):
    token = enrol(client)
    assign(client)
    action_id = offered_action(client, token)
    client.delete("/api/v1/devices/ctl-1/assignment", headers=BEARER)
    assert "cancelAction" in poll(client, token)["_links"]
    post_feedback(client, token, action_id, feedback("rejected", details=["already installing"]),
                  channel="cancelAction")
    assert poll(client, token)["_links"]["deploymentBase"]["href"].endswith(f"/{action_id}")
    assert post_feedback(client, token, action_id, feedback("closed", "success")).status_code == 200
    assert client.get("/api/v1/devices/ctl-1").json["state"] == "committed"


# --- rollouts ---------------------------------------------------------------------------------------------


def test_a_rollout_offers_its_release_on_the_next_poll_and_counts_the_commit(client, registry):
    token = enrol(client)
    created = client.post("/api/v1/rollouts", json={"release": "3.0.0", "selection": {"devices": ["ctl-1"]},
                                                    "phases": ["100%"]}, headers=BEARER)
    assert created.status_code == 201
    mqtt_hints: list[str] = []
    rollout_engine.tick(registry, mqtt_hints.append)
    assert mqtt_hints == []                                          # a DDI controller is hinted by its poll
    action_id = offered_action(client, token)
    post_feedback(client, token, action_id, feedback("proceeding", details=["Installing"]))
    rollout_engine.tick(registry, mqtt_hints.append)
    assert client.get(f"/api/v1/rollouts/{created.json['id']}").json["status"] == "running"
    post_feedback(client, token, action_id, feedback("closed", "success"))
    rollout_engine.tick(registry, mqtt_hints.append)
    rollout = client.get(f"/api/v1/rollouts/{created.json['id']}").json
    assert rollout["status"] == "completed" and rollout["devices"][0]["status"] == "committed"


def test_a_failed_controller_is_offered_again_on_the_rollouts_retry(client, registry):
    token = enrol(client)
    created = client.post("/api/v1/rollouts", json={"release": "3.0.0", "selection": {"devices": ["ctl-1"]},
                                                    "policy": {"backoff_s": 0, "max_failure_ratio": 0.5}},
                          headers=BEARER).json
    rollout_engine.tick(registry, print)
    first = offered_action(client, token)
    post_feedback(client, token, first, feedback("closed", "failure", ["no space left"]))
    assert "deploymentBase" not in poll(client, token).get("_links", {})       # not before the retry
    rollout_engine.tick(registry, print)                                       # classifies: retry
    rollout_engine.tick(registry, print)                                       # the backoff is over: offered again
    second = offered_action(client, token)
    assert second != first
    post_feedback(client, token, second, feedback("closed", "success"))
    rollout_engine.tick(registry, print)
    assert client.get(f"/api/v1/rollouts/{created['id']}").json["status"] == "completed"


def test_an_aborted_rollout_cancels_the_open_action(client, registry):
    token = enrol(client)
    created = client.post("/api/v1/rollouts", json={"release": "3.0.0", "selection": {"all": True}},
                          headers=BEARER).json
    rollout_engine.tick(registry, print)
    action_id = offered_action(client, token)
    assert client.post(f"/api/v1/rollouts/{created['id']}/abort", headers=BEARER).status_code == 200
    assert poll(client, token)["_links"]["cancelAction"]["href"].endswith(f"/cancelAction/{action_id}")


def online_soon(client, name="ctl-1") -> bool:
    """A poll's last_seen is written with others' within ddi_polls.FLUSH_S."""
    deadline = time.monotonic() + 5
    while not client.get(f"/api/v1/devices/{name}").json["online"] and time.monotonic() < deadline:
        time.sleep(0.05)
    return client.get(f"/api/v1/devices/{name}").json["online"]


def test_a_controller_that_stops_polling_goes_offline(client, registry):
    token = enrol(client)
    assert client.get("/api/v1/devices/ctl-1").json["online"] is False       # enrolled, never polled
    poll(client, token)
    assert online_soon(client)
    rollout_engine.tick(registry, print, ddi_offline_s=30)
    assert client.get("/api/v1/devices/ctl-1").json["online"] is True
    rollout_engine.tick(registry, print, now=registry.device("ctl-1")["last_seen"] + 31, ddi_offline_s=30)
    assert client.get("/api/v1/devices/ctl-1").json["online"] is False
    poll(client, token)
    assert online_soon(client)


def test_a_controller_is_on_the_dashboard_with_its_state(client):
    token = enrol(client)
    assign(client)
    post_feedback(client, token, offered_action(client, token), feedback("proceeding", progress={"cnt": 1, "of": 2}))
    [device] = client.get("/api/v1/dashboard").json["devices"]
    assert (device["device_id"], device["state"], device["progress"], device["hardware"]) == \
        ("ctl-1", "downloading", 0.5, "m4")


def test_fota_releases_shows_a_swu_and_its_deltas_against_the_whole(client):
    release = {"version": "2.0.0", "deltas": [], "artifacts": [{"kind": "image", "length": 524746}],
               "swu": {"sha256": "a" * 64, "length": 527360},
               "swu_deltas": [{"base_version": "1.0.0", "length": 108032, "sha256": "b" * 64}]}
    row = release_row(release, "2.0.0")
    assert (row["swu_bytes"], row["swu_delta_bytes"]) == (527360, "108032 from 1.0.0 (0.20 of full)")
    assert release_row({"version": "1.0.0", "deltas": []}, "2.0.0")["swu_bytes"] is None


def test_a_poll_the_event_loop_cannot_read_at_once_is_answered_from_the_pool(client, monkeypatch):
    token = enrol(client)
    real, waits = DdiStore.poll_view, []

    def busy_on_the_loop(self, controller_id):
        waits.append(self.registry._timeout)
        if self.registry._timeout < 1:             # the loop's connections give up at once (ddi_polls.READ_WAIT_S)
            raise sqlite3.OperationalError("database is locked")
        return real(self, controller_id)
    monkeypatch.setattr(DdiStore, "poll_view", busy_on_the_loop)
    assert poll(client, token)["config"] == {"polling": {"sleep": "00:00:10"}}
    assert waits == [0.02, 10.0]
