"""The server's errors: an error's class is its HTTP status (errors.py), never its message text;
and save_rollout withdraws the assignments an abort ends, whoever aborted."""
from __future__ import annotations

import json
from dataclasses import replace

import pytest

from fotalab.protocol import Outcome
from fotalab.server import errors, ingest, rollouts
from fotalab.server.registry import Registry
from server_samples import TOKEN

AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def registry(app) -> Registry:
    return app.extensions["fotalab"].registry


def running(registry: Registry, *devices: str) -> None:
    for device in devices:
        report = {"device": device, "hardware": "m4", "ts": 1.0, "state": "running", "version": "1.0.0",
                  "confirmed": True}
        ingest.handle(registry, f"fota/v1/devices/{device}/state", json.dumps(report).encode())


@pytest.mark.parametrize("error, status", [
    (errors.InvalidRequest, 400), (errors.InvalidMessage, 400), (errors.Unauthorized, 401), (errors.NotFound, 404),
    (errors.UnknownHardware, 404), (errors.RolloutConflict, 409), (errors.Unprocessable, 422),
    (errors.RolloutError, 422), (errors.AssignmentError, 422), (errors.Unavailable, 503), (errors.ServerError, 500),
])
def test_each_server_error_is_answered_with_the_status_of_its_class(app, client, error, status):
    @app.get("/raise")
    def raise_it():
        raise error("what was wrong: what to do")
    response = client.get("/raise")
    assert response.status_code == status
    assert response.json == {"error": "what was wrong: what to do", "status": status}


def test_an_unauthorized_answer_names_the_bearer_scheme(app, client):
    @app.get("/raise")
    def raise_it():
        raise errors.Unauthorized("send the token")
    assert client.get("/raise").headers["WWW-Authenticate"] == "Bearer realm=fotalab"


def test_the_status_follows_the_class_whatever_the_message_says(app, client):
    @app.get("/raise")
    def raise_it():
        raise rollouts.RolloutError("rollout 1 is running: abort it or let it finish")   # once matched for 409
    assert client.get("/raise").status_code == 422


def test_a_conflicting_rollout_is_refused_with_409(client, registry):
    running(registry, "dev-1", "dev-2")
    assert client.post("/api/v1/rollouts", json={"release": "2.0.0"}, headers=AUTH).status_code == 201
    refused = client.post("/api/v1/rollouts", json={"release": "3.0.0"}, headers=AUTH)
    assert refused.status_code == 409
    assert refused.json["error"] == "rollout 1 is running: abort it or let it finish before creating another one"


def test_a_rollout_that_cannot_be_planned_is_refused_with_422(client, registry):
    running(registry, "dev-1")
    for body in ({"release": "9.9.9"}, {"release": "2.0.0", "phases": ["0"]},
                 {"release": "2.0.0", "selection": {"devices": ["nobody"]}}):
        assert client.post("/api/v1/rollouts", json=body, headers=AUTH).status_code == 422, body


def test_an_operator_move_the_rollouts_status_forbids_is_refused_with_409(client, registry):
    running(registry, "dev-1")
    client.post("/api/v1/rollouts", json={"release": "2.0.0"}, headers=AUTH)
    assert client.post("/api/v1/rollouts/1/abort", headers=AUTH).status_code == 200
    for verb in ("pause", "resume", "abort"):
        assert client.post(f"/api/v1/rollouts/1/{verb}", headers=AUTH).status_code == 409, verb


def offered(registry: Registry, devices: list[str], *, release: str = "2.0.0") -> rollouts.Rollout:
    """A rollout of `release` to `devices` in one phase, saved with every device offered it."""
    planned = rollouts.plan(0, release, {"all": True}, devices, ["100%"], rollouts.Policy())
    created = registry.create_rollout(planned, "test")
    stepped, _ = rollouts.step(created, {}, now=10.0)
    return registry.save_rollout(stepped, assign=[d.device_id for d in stepped.devices])


def test_saving_an_aborted_rollout_withdraws_its_release_from_devices_that_did_not_commit(registry):
    rollout = offered(registry, ["dev-1", "dev-2", "dev-3"])
    runs = (replace(rollout.devices[0], status=Outcome.COMMITTED),
            replace(rollout.devices[1], status=Outcome.ROLLED_BACK), rollout.devices[2])
    aborted = rollouts.abort(replace(rollout, devices=runs))
    assert registry.save_rollout(aborted, actor=rollouts.Actor.OPERATOR) is not None
    assert [registry.assignment(d) for d in ("dev-1", "dev-2", "dev-3")] == ["2.0.0", None, None]


def test_saving_a_rollout_that_goes_on_withdraws_no_assignment(registry):
    rollout = offered(registry, ["dev-1", "dev-2"])
    assert registry.save_rollout(rollouts.pause(rollout), actor=rollouts.Actor.OPERATOR) is not None
    assert [registry.assignment(d) for d in ("dev-1", "dev-2")] == ["2.0.0", "2.0.0"]


def test_an_abort_leaves_an_assignment_of_another_release_alone(registry):
    rollout = offered(registry, ["dev-1", "dev-2"])
    registry.set_assignment("dev-2", "3.0.0")                 # the operator moved it on meanwhile
    registry.save_rollout(rollouts.abort(rollout), actor=rollouts.Actor.OPERATOR)
    assert [registry.assignment(d) for d in ("dev-1", "dev-2")] == [None, "3.0.0"]
