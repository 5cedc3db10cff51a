"""The JSON API under /api/v1: releases, the device manifest, devices, history, assignments,
triggers, rollouts, and the enrolment of DDI controllers (ddi.py serves the controllers themselves).

Reads are open; every other method needs the bearer token (auth.py), checked once for the
whole blueprint so that no state-changing endpoint can forget it. The description of every
route is in openapi.py, served at /api/v1/openapi.json. A problem is raised as an
errors.ServerError, whose class is its status; app.py answers it as JSON.
"""
from __future__ import annotations

import json
import re
import secrets
import time
from collections.abc import Callable

from flask import Blueprint, Response, jsonify, request

from ..protocol import Command, Event
from . import assignment, offer, rollouts
from .artifacts import ReleaseIndex
from .auth import token_problem
from .ddi_store import DdiStore
from .errors import EnrollmentError, InvalidRequest, NotFound, RolloutError, Unauthorized, Unavailable
from .openapi import openapi_document
from .registry import Registry
from .rollouts import Actor
from .services import services
from .tlsauth import client_identity, token_needs_tls

MAX_ID = 128
READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
SAVE_ATTEMPTS = 20              # an operator's change that keeps losing the race with the engine's tick
CONTROLLER_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,63}")    # a path segment of every DDI URL, as is

blueprint = Blueprint("api", __name__, url_prefix="/api/v1")


def checked_device_id(device_id: str) -> str:
    if not device_id or len(device_id) > MAX_ID or any(c in device_id for c in "/+#") or not device_id.isprintable():
        raise InvalidRequest(f"device id {device_id[:MAX_ID]!r} is not valid: 1-{MAX_ID} printable characters "
                             "without '/', '+' or '#' (the id in its MQTT topics)")
    return device_id


def known_device(device_id: str) -> dict:
    device = services().registry.device(checked_device_id(device_id))
    if device is None:
        raise NotFound(f"no device {device_id!r} has reported to this server: GET /api/v1/devices lists them")
    return device


def release_json(index: ReleaseIndex, release: dict) -> dict:
    shas = [release["image"], *(d["sha256"] for d in release["deltas"])]
    return {**release, "artifacts": [{"sha256": sha, "kind": index.by_sha[sha].kind, "length": index.by_sha[sha].length,
                                      "names": list(index.by_sha[sha].names), "url": index.by_sha[sha].url}
                                     for sha in shas if sha in index.by_sha]}


@blueprint.before_request
def require_token_for_writes() -> None:
    if request.method not in READ_METHODS:
        problem = token_problem(request, services().config.api_token)
        if problem is None and services().config.tls:
            problem = token_needs_tls(request)
        if problem:
            raise Unauthorized(problem)


@blueprint.get("/openapi.json")
def openapi() -> Response:
    return jsonify(openapi_document())


@blueprint.get("/releases")
def releases() -> Response:
    index, hardware = services().index.get(), request.args.get("hardware")
    return jsonify(key_id=index.key_id, default_release=services().config.default_release,
                   releases=[release_json(index, r) for r in index.releases if hardware in (None, r["hardware"])])


@blueprint.get("/manifest")
def manifest() -> Response:
    args = request.args
    if not args.get("device") and client_identity(request):     # HTTPS: the certificate names the device
        args = args.copy()
        args["device"] = client_identity(request)
    missing = [name for name in ("device", "hardware", "version") if not args.get(name)]
    if missing:
        raise InvalidRequest(f"missing query parameter(s) {', '.join(missing)}: a device asks with ?device=<id>"
                             "&hardware=<hardware id>&version=<running version>&image=<running image sha256>")
    target = services().assigned(checked_device_id(args["device"]))
    try:
        chosen = offer.select(services().index.get(), hardware=args["hardware"], running_version=args["version"],
                              running_image=args.get("image", ""), assigned_version=target.version)
    except ValueError as exc:                   # a malformed running version (formats.image.parse_version)
        raise InvalidRequest(f"query parameter version: {exc}") from None
    return jsonify({**chosen.to_json(), "assignment": target.source})


@blueprint.get("/devices")
def devices() -> Response:
    online = request.args.get("online")
    if online not in (None, "true", "false"):
        raise InvalidRequest(f"query parameter online must be 'true' or 'false', got {online!r}")
    found = services().registry.devices(state=request.args.get("state"),
                                        online=None if online is None else online == "true")
    return jsonify(devices=found, count=len(found))


@blueprint.get("/devices/<device_id>")
def device(device_id: str) -> Response:
    return jsonify({**known_device(device_id), "assignment": services().assigned(device_id).to_json()})


@blueprint.get("/devices/<device_id>/history")
def history(device_id: str) -> Response:
    known_device(device_id)
    try:
        after = int(request.args.get("after", 0))
        limit = int(request.args.get("limit", 100))
    except ValueError:
        raise InvalidRequest("query parameters after and limit must be integers") from None
    if not 1 <= limit <= 1000 or after < 0:
        raise InvalidRequest("limit must be 1-1000 and after an event id >= 0")
    events = services().registry.history(device_id, after=after, limit=limit)
    return jsonify(device_id=device_id, events=events, next_after=events[-1]["id"] if len(events) == limit else None)


@blueprint.get("/devices/<device_id>/assignment")
def get_assignment(device_id: str) -> Response:
    return jsonify(services().assigned(checked_device_id(device_id)).to_json())


@blueprint.put("/devices/<device_id>/assignment")
def put_assignment(device_id: str) -> Response:
    body = request.get_json(silent=True)
    if not isinstance(body, dict) or not isinstance(body.get("version"), str):
        raise InvalidRequest('send a JSON body {"version": "<release version>"}, e.g. {"version": "2.0.0"}')
    made = assignment.assign(services().registry, services().index.get(), checked_device_id(device_id),
                             body["version"])
    return jsonify(made.to_json())


@blueprint.delete("/devices/<device_id>/assignment")
def delete_assignment(device_id: str) -> Response:
    services().registry.clear_assignment(checked_device_id(device_id))
    return Response(status=204)


@blueprint.post("/devices/<device_id>/certificate")
def certificate_event(device_id: str) -> tuple[Response, int]:
    """The operator revoked or reissued the device's certificate (`fota device revoke|reprovision`): its history."""
    body = request.get_json(silent=True) or {}
    kinds = (Event.CERTIFICATE_REVOKED, Event.CERTIFICATE_REISSUED)
    if body.get("event") not in kinds or not isinstance(body.get("serial"), str):
        raise InvalidRequest(f"send {{\"event\": one of {', '.join(kinds)}, \"serial\": \"<hex>\"}}")
    event = {"event": body["event"], "serial": body["serial"][:64], "ts": round(time.time(), 3)}
    services().registry.record_event(checked_device_id(device_id), event)
    return jsonify(event), 201


@blueprint.post("/devices/<device_id>/trigger")
def trigger(device_id: str) -> tuple[Response, int]:
    known_device(device_id)
    services().registry.request_hint(device_id)
    return jsonify(device_id=device_id, sent={"cmd": Command.UPDATE},
                   assignment=services().assigned(device_id).to_json()), 202


def select_devices(registry: Registry, selection: object) -> tuple[dict, list[str]]:
    """{"all": true}, {"hardware": id}, {"group": name} or {"devices": [ids]}: ids in phase order."""
    known = {d["device_id"]: d for d in registry.devices()}
    if selection == {"all": True}:
        return selection, sorted(known)
    if isinstance(selection, dict) and set(selection) == {"hardware"}:
        return selection, sorted(d for d, v in known.items() if v["hardware"] == selection["hardware"])
    if isinstance(selection, dict) and set(selection) == {"group"}:       # the group devices report
        return selection, sorted(d for d, v in known.items() if (v["report"] or {}).get("group") == selection["group"])
    if isinstance(selection, dict) and set(selection) == {"devices"} and isinstance(selection["devices"], list):
        unknown = [d for d in selection["devices"] if d not in known]
        if unknown:
            raise RolloutError(f"unknown device(s) {', '.join(map(str, unknown))}: "
                               "GET /api/v1/devices lists the known ones")
        return selection, list(dict.fromkeys(selection["devices"]))
    raise RolloutError('selection is {"all": true}, {"hardware": "<id>"}, {"group": "<name>"} '
                       'or {"devices": ["<id>", ...]}')


def check_release(registry: Registry, index: ReleaseIndex, version: str, device_ids: list[str]) -> None:
    for hardware in sorted({registry.device(d)["hardware"] or "" for d in device_ids}):
        available = index.versions(hardware or None)
        if version not in available:
            raise RolloutError(f"no release {version!r} for hardware {hardware or 'any'!r}: "
                               f"choose one of {', '.join(available) or 'none'}")


def planned_rollout(registry: Registry, index: ReleaseIndex, body: dict) -> tuple[rollouts.Rollout, str]:
    """The rollout a request body asks for, with the reason its log starts with. Raises
    RolloutError, or TypeError for a policy (or selection) of the wrong shape."""
    selection, device_ids = select_devices(registry, body.get("selection", {"all": True}))
    check_release(registry, index, body["release"], device_ids)
    phases = body.get("phases", ["1", "100%"])
    if not isinstance(phases, list) or not all(isinstance(p, (str, int)) for p in phases):
        raise RolloutError('phases is a list such as ["1", "50%", "100%"]')
    policy = rollouts.Policy(**body.get("policy", {}))
    planned = rollouts.plan(0, body["release"], selection, device_ids, [str(p) for p in phases], policy)
    return planned, (f"{body['release']} to {len(device_ids)} device(s) selected by {json.dumps(selection)}, "
                     f"cumulative phases {', '.join(map(str, planned.phases))}")


@blueprint.post("/rollouts")
def create_rollout() -> tuple[Response, int]:
    body = request.get_json(silent=True)
    if not isinstance(body, dict) or not isinstance(body.get("release"), str):
        raise InvalidRequest('send a JSON body {"release": "2.0.0", "selection": {"all": true}, '
                             '"phases": ["1", "50%"]}')
    registry = services().registry
    try:
        created = registry.create_rollout(*planned_rollout(registry, services().index.get(), body))
    except TypeError as exc:
        raise InvalidRequest(f"policy: {exc}; known fields: {', '.join(rollouts.Policy.__dataclass_fields__)}"
                             ) from None
    return jsonify(created.to_json()), 201


@blueprint.get("/rollouts")
def list_rollouts() -> Response:
    found = services().registry.rollouts()
    return jsonify(rollouts=[r.to_json() for r in found], count=len(found))


@blueprint.get("/rollouts/<int:rollout_id>")
def get_rollout(rollout_id: int) -> Response:
    return jsonify(services().known_rollout(rollout_id).to_json())


@blueprint.get("/rollouts/<int:rollout_id>/log")
def rollout_log(rollout_id: int) -> Response:
    services().known_rollout(rollout_id)
    return jsonify(rollout_id=rollout_id, decisions=services().registry.rollout_log(rollout_id=rollout_id))


def operate(rollout_id: int, change: Callable[[rollouts.Rollout], rollouts.Rollout]) -> Response:
    """An operator's change (pause, resume, abort), saved against the revision it read; a change
    the rollout's status forbids raises RolloutConflict (409)."""
    for _ in range(SAVE_ATTEMPTS):                   # lost a race with the engine's tick: read again
        current = services().known_rollout(rollout_id)
        changed = change(current)
        saved = services().registry.save_rollout(changed, actor=Actor.OPERATOR,
                                                 decisions=rollouts.decisions(current, changed))
        if saved is not None:
            return jsonify(saved.to_json())
    raise Unavailable(f"rollout {rollout_id} changes too fast to update; try again")


@blueprint.post("/rollouts/<int:rollout_id>/pause")
def pause_rollout(rollout_id: int) -> Response:
    return operate(rollout_id, rollouts.pause)


@blueprint.post("/rollouts/<int:rollout_id>/resume")
def resume_rollout(rollout_id: int) -> Response:
    return operate(rollout_id, rollouts.resume)


@blueprint.post("/rollouts/<int:rollout_id>/abort")
def abort_rollout(rollout_id: int) -> Response:
    return operate(rollout_id, rollouts.abort)


def enrolment_hardware(index: ReleaseIndex, asked: object) -> str:
    """The hardware a controller is enrolled for: the one asked for, else the only one there is
    (or the only one of the lab's own format, the others being SWUpdate's)."""
    if asked is None:
        lab = sorted({r["hardware"] for r in index.releases if "swu" not in r})
        for candidates in (sorted(index.hardware), lab):
            if len(candidates) == 1:
                return candidates[0]
        raise InvalidRequest(f"name the controller's hardware: one of {', '.join(sorted(index.hardware))}")
    if not isinstance(asked, str) or asked not in index.hardware:
        raise EnrollmentError(f"no releases for hardware {str(asked)[:64]!r}: choose one of "
                              f"{', '.join(sorted(index.hardware)) or 'none'}")
    return asked


@blueprint.post("/controllers")
def enroll_controller() -> tuple[Response, int]:
    """A DDI controller: its TargetToken is in this answer and nowhere else (the registry keeps a
    hash). `credentials` is where a client certificate joins the token once mutual TLS issues one."""
    body = request.get_json(silent=True)
    if not isinstance(body, dict) or not isinstance(body.get("name"), str):
        raise InvalidRequest('send a JSON body {"name": "<controller id>", "hardware": "<hardware id>"}')
    name = body["name"]
    if not CONTROLLER_ID.fullmatch(name):
        raise InvalidRequest(f"controller name {name[:64]!r} is not valid: 1-64 letters, digits, '.', '_', ':' or '-', "
                             "starting with a letter or digit")
    hardware = enrolment_hardware(services().index.get(), body.get("hardware"))
    token = secrets.token_hex(16)
    DdiStore(services().registry).enroll(name, hardware, token)
    config = services().config
    base = config.public_url or request.host_url.rstrip("/")
    return jsonify(controller_id=name, hardware=hardware, tenant=config.ddi_tenant, base_url=base,
                   ddi_url=f"{base}/{config.ddi_tenant}/controller/v1/{name}", poll_s=config.ddi_poll_s,
                   credentials={"target_token": token}), 201


@blueprint.get("/controllers")
def list_controllers() -> Response:
    found = DdiStore(services().registry).controllers()
    return jsonify(tenant=services().config.ddi_tenant, controllers=found, count=len(found))
