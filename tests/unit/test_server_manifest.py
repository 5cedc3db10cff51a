"""Manifest selection: delta vs full image, no update, unknown device, foreign hardware, assignments."""
import json

import pytest

from server_samples import TOKEN

AUTH = {"Authorization": f"Bearer {TOKEN}"}


def ask(client, store, *, device="dev-1", hardware="m4", version="1.0.0", image=None):
    image = store.images[(hardware, version)] if image is None else image
    return client.get("/api/v1/manifest", query_string={"device": device, "hardware": hardware, "version": version,
                                                         "image": image})


def test_delta_when_the_running_image_is_its_base(client, store):
    offer = ask(client, store).json
    delta = store.deltas[("m4", "1.0.0", "2.0.0")]
    assert offer["update"] is True and offer["version"] == "2.0.0"
    assert offer["artifact"] == f"/artifacts/{delta}" and offer["artifact_kind"] == "delta"
    assert offer["base_sha256"] == store.images[("m4", "1.0.0")]
    assert json.loads(offer["manifest"])["signed"]["version"] == "2.0.0"
    assert offer["assignment"] == "default"


def test_full_image_when_no_delta_matches_the_running_image(client, store):
    offer = ask(client, store, image="ab" * 32).json
    assert offer["update"] is True and offer["artifact_kind"] == "image"
    assert offer["artifact"] == f"/artifacts/{store.images[('m4', '2.0.0')]}"
    assert offer["artifact_length"] == len(store.data[store.images[("m4", "2.0.0")]])


def test_full_image_without_an_image_parameter(client):
    offer = client.get("/api/v1/manifest?device=d&hardware=m4&version=1.0.0").json
    assert offer["update"] is True and offer["artifact_kind"] == "image"


def test_no_update_when_running_the_assigned_release(client, store):
    offer = ask(client, store, version="2.0.0").json
    assert offer == {"update": False, "reason": "already running the assigned release 2.0.0", "assigned": "2.0.0",
                     "assignment": "default"}


def test_no_update_when_the_assignment_is_older(client, store):
    offer = ask(client, store, version="3.0.0").json
    assert offer["update"] is False and "not newer" in offer["reason"]


def test_unknown_device_gets_the_default_release(client, store):
    offer = ask(client, store, device="never-seen-before").json
    assert offer["update"] is True and offer["version"] == "2.0.0" and offer["assignment"] == "default"


def test_device_assignment_overrides_the_default(client, store):
    assert client.put("/api/v1/devices/dev-7/assignment", json={"version": "3.0.0"}, headers=AUTH).status_code == 200
    offer = ask(client, store, device="dev-7").json
    assert offer["version"] == "3.0.0" and offer["artifact_kind"] == "image" and offer["assignment"] == "device"
    assert ask(client, store, device="dev-8").json["version"] == "2.0.0"
    assert client.delete("/api/v1/devices/dev-7/assignment", headers=AUTH).status_code == 204
    assert ask(client, store, device="dev-7").json["version"] == "2.0.0"


def test_foreign_hardware_is_404_with_a_hint(client, store):
    response = ask(client, store, hardware="toaster", image="")
    assert response.status_code == 404 and "FOTA_HARDWARE" in response.json["error"]


def test_assigned_release_missing_for_the_hardware_is_no_update(client, store):
    offer = ask(client, store, hardware="other-hw", version="1.0.0").json
    assert offer["update"] is False and "no build for hardware other-hw" in offer["reason"]


def test_assignment_must_exist_for_the_devices_hardware(app, client, store):
    app.extensions["fotalab"].registry.record_state("dev-9", {"ts": 1.0, "state": "running", "hardware": "other-hw"})
    refused = client.put("/api/v1/devices/dev-9/assignment", json={"version": "2.0.0"}, headers=AUTH)
    assert refused.status_code == 422 and "choose one of 1.0.0" in refused.json["error"]
    unknown = client.put("/api/v1/devices/new-dev/assignment", json={"version": "9.9.9"}, headers=AUTH)
    assert unknown.status_code == 422 and "1.0.0, 2.0.0, 3.0.0" in unknown.json["error"]


@pytest.mark.parametrize("query, message", [
    ("hardware=m4&version=1.0.0", "missing query parameter(s) device"),
    ("device=d", "missing query parameter(s) hardware, version"),
    ("device=d&hardware=m4&version=latest", "query parameter version"),
    ("device=a%2Fb&hardware=m4&version=1.0.0", "device id"),
    ("device=a%2Bb&hardware=m4&version=1.0.0", "device id"),
])
def test_malformed_manifest_requests_are_400_with_the_reason(client, query, message):
    response = client.get(f"/api/v1/manifest?{query}")
    assert response.status_code == 400 and message in response.json["error"]
