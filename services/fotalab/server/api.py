"""The JSON API under /api/v1: releases, the device manifest, devices, history, assignments,
triggers and rollouts.

Reads are open; every other method needs the bearer token (auth.py), checked once for the
whole blueprint so that no state-changing endpoint can forget it. The description of every
route is in openapi.py, served at /api/v1/openapi.json.
"""
from __future__ import annotations

import json
from dataclasses import dataclass

from flask import Blueprint, Response, abort, jsonify, request
from werkzeug.datastructures import WWWAuthenticate
from werkzeug.exceptions import Unauthorized

from . import assignment, offer, rollouts
from .artifacts import LiveIndex, ReleaseIndex
from .auth import token_problem
from .config import ServerConfig
from .live import LiveHub
from .openapi import openapi_document
from .registry import Registry

MAX_ID = 128
READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


@dataclass(frozen=True)
class Services:
    config: ServerConfig
    index: LiveIndex
    registry: Registry
    live: LiveHub


def checked_device_id(device_id: str) -> str:
    if not device_id or len(device_id) > MAX_ID or any(c in device_id for c in "/+#") or not device_id.isprintable():
        abort(400, f"device id {device_id[:MAX_ID]!r} is not valid: 1-{MAX_ID} printable characters "
                   "without '/', '+' or '#' (the id in its MQTT topics)")
    return device_id


def release_json(index: ReleaseIndex, release: dict) -> dict:
    shas = [release["image"], *(d["sha256"] for d in release["deltas"])]
    return {**release, "artifacts": [{"sha256": sha, "kind": index.by_sha[sha].kind, "length": index.by_sha[sha].length,
                                      "names": list(index.by_sha[sha].names), "url": index.by_sha[sha].url}
                                     for sha in shas if sha in index.by_sha]}


def api_blueprint(services: Services) -> Blueprint:
    api = Blueprint("api", __name__, url_prefix="/api/v1")
    config, registry = services.config, services.registry

    @api.before_request
    def require_token_for_writes():
        if request.method in READ_METHODS:
            return None
        problem = token_problem(request, config.api_token)
        if problem:
            raise Unauthorized(problem, www_authenticate=WWWAuthenticate("bearer", {"realm": "fotalab"}))
        return None

    @api.get("/openapi.json")
    def openapi():
        return jsonify(openapi_document())

    @api.get("/releases")
    def releases():
        index = services.index.get()
        hardware = request.args.get("hardware")
        return jsonify(key_id=index.key_id, default_release=config.default_release,
                       releases=[release_json(index, r) for r in index.releases
                                 if hardware in (None, r["hardware"])])

    @api.get("/manifest")
    def manifest():
        args = request.args
        missing = [name for name in ("device", "hardware", "version") if not args.get(name)]
        if missing:
            abort(400, f"missing query parameter(s) {', '.join(missing)}: a device asks with "
                       "?device=<id>&hardware=<hardware id>&version=<running version>&image=<running image sha256>")
        device_id = checked_device_id(args["device"])
        target = assignment.assigned(registry, device_id, config.default_release)
        try:
            chosen = offer.select(services.index.get(), hardware=args["hardware"], running_version=args["version"],
                                  running_image=args.get("image", ""), assigned_version=target.version)
        except offer.UnknownHardware:
            abort(404, f"no releases for hardware {args['hardware']!r}: check the device's FOTA_HARDWARE "
                       "(GET /api/v1/releases lists the hardware ids)")
        except ValueError as exc:
            abort(400, f"query parameter version: {exc}")
        return jsonify({**chosen.to_json(), "assignment": target.source})

    @api.get("/devices")
    def devices():
        online = request.args.get("online")
        if online not in (None, "true", "false"):
            abort(400, f"query parameter online must be 'true' or 'false', got {online!r}")
        found = registry.devices(state=request.args.get("state"),
                                 online=None if online is None else online == "true")
        return jsonify(devices=found, count=len(found))

    def known_device(device_id: str) -> dict:
        device = registry.device(checked_device_id(device_id))
        if device is None:
            abort(404, f"no device {device_id!r} has reported to this server: GET /api/v1/devices lists them")
        return device

    @api.get("/devices/<device_id>")
    def device(device_id: str):
        found = known_device(device_id)
        return jsonify({**found, "assignment": assignment.assigned(registry, device_id, config.default_release)
                        .to_json()})

    @api.get("/devices/<device_id>/history")
    def history(device_id: str):
        known_device(device_id)
        try:
            after = int(request.args.get("after", 0))
            limit = int(request.args.get("limit", 100))
        except ValueError:
            abort(400, "query parameters after and limit must be integers")
        if not 1 <= limit <= 1000 or after < 0:
            abort(400, "limit must be 1-1000 and after an event id >= 0")
        events = registry.history(device_id, after=after, limit=limit)
        return jsonify(device_id=device_id, events=events,
                       next_after=events[-1]["id"] if len(events) == limit else None)

    @api.get("/devices/<device_id>/assignment")
    def get_assignment(device_id: str):
        return jsonify(assignment.assigned(registry, checked_device_id(device_id), config.default_release).to_json())

    @api.put("/devices/<device_id>/assignment")
    def put_assignment(device_id: str):
        body = request.get_json(silent=True)
        if not isinstance(body, dict) or not isinstance(body.get("version"), str):
            abort(400, 'send a JSON body {"version": "<release version>"}, e.g. {"version": "2.0.0"}')
        try:
            made = assignment.assign(registry, services.index.get(), checked_device_id(device_id), body["version"])
        except assignment.AssignmentError as exc:
            abort(422, str(exc))
        return jsonify(made.to_json())

    @api.delete("/devices/<device_id>/assignment")
    def delete_assignment(device_id: str):
        registry.clear_assignment(checked_device_id(device_id))
        return Response(status=204)

    @api.post("/devices/<device_id>/trigger")
    def trigger(device_id: str):
        known_device(device_id)
        registry.request_hint(device_id)
        return jsonify(device_id=device_id, sent={"cmd": "update"},
                       assignment=assignment.assigned(registry, device_id, config.default_release).to_json()), 202

    @api.post("/rollouts")
    def create_rollout():
        body = request.get_json(silent=True)
        if not isinstance(body, dict) or not isinstance(body.get("release"), str):
            abort(400, 'send a JSON body {"release": "2.0.0", "selection": {"all": true}, "phases": ["1", "50%"]}')
        try:
            selection, device_ids = select_devices(body.get("selection", {"all": True}))
            check_release(body["release"], device_ids)
            phases = body.get("phases", ["1", "100%"])
            if not isinstance(phases, list) or not all(isinstance(p, (str, int)) for p in phases):
                raise rollouts.RolloutError('phases is a list such as ["1", "50%", "100%"]')
            policy = rollouts.Policy(**body.get("policy", {}))
            planned = rollouts.plan(0, body["release"], selection, device_ids, [str(p) for p in phases], policy)
            created = registry.create_rollout(planned, f"{body['release']} to {len(device_ids)} device(s) "
                                                         f"selected by {json.dumps(selection)}, cumulative "
                                                         f"phases {', '.join(map(str, planned.phases))}")
        except TypeError as exc:
            abort(400, f"policy: {exc}; known fields: {', '.join(rollouts.Policy.__dataclass_fields__)}")
        except rollouts.RolloutError as exc:
            abort(409 if "abort it or let it finish" in str(exc) else 422, str(exc))
        return jsonify(created.to_json()), 201

    def select_devices(selection: object) -> tuple[dict, list[str]]:
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
                raise rollouts.RolloutError(f"unknown device(s) {', '.join(map(str, unknown))}: "
                                            "GET /api/v1/devices lists the known ones")
            return selection, list(dict.fromkeys(selection["devices"]))
        raise rollouts.RolloutError('selection is {"all": true}, {"hardware": "<id>"}, {"group": "<name>"} '
                                    'or {"devices": ["<id>", ...]}')

    def check_release(version: str, device_ids: list[str]) -> None:
        index = services.index.get()
        for hardware in sorted({registry.device(d)["hardware"] or "" for d in device_ids}):
            available = index.versions(hardware or None)
            if version not in available:
                raise rollouts.RolloutError(f"no release {version!r} for hardware {hardware or 'any'!r}: "
                                            f"choose one of {', '.join(available) or 'none'}")

    def known_rollout(rollout_id: int) -> rollouts.Rollout:
        found = registry.rollout(rollout_id)
        if found is None:
            abort(404, f"no rollout {rollout_id}: GET /api/v1/rollouts lists them")
        return found

    @api.get("/rollouts")
    def list_rollouts():
        found = registry.rollouts()
        return jsonify(rollouts=[r.to_json() for r in found], count=len(found))

    @api.get("/rollouts/<int:rollout_id>")
    def get_rollout(rollout_id: int):
        return jsonify(known_rollout(rollout_id).to_json())

    @api.get("/rollouts/<int:rollout_id>/log")
    def rollout_log(rollout_id: int):
        known_rollout(rollout_id)
        return jsonify(rollout_id=rollout_id, decisions=registry.rollout_log(rollout_id=rollout_id))

    def operate(rollout_id: int, change) -> Response:
        for _ in range(20):                        # lost a race with the engine's tick: read again
            current = known_rollout(rollout_id)
            try:
                changed = change(current)
            except rollouts.RolloutError as exc:
                abort(409, str(exc))
            unassign = rollouts.assignments_to_clear(changed) if changed.status == rollouts.ABORTED else []
            saved = registry.save_rollout(changed, unassign=unassign, actor="operator",
                                          decisions=rollouts.decisions(current, changed))
            if saved is not None:
                return jsonify(saved.to_json())
        abort(503, f"rollout {rollout_id} changes too fast to update; try again")

    @api.post("/rollouts/<int:rollout_id>/pause")
    def pause_rollout(rollout_id: int):
        return operate(rollout_id, rollouts.pause)

    @api.post("/rollouts/<int:rollout_id>/resume")
    def resume_rollout(rollout_id: int):
        return operate(rollout_id, rollouts.resume)

    @api.post("/rollouts/<int:rollout_id>/abort")
    def abort_rollout(rollout_id: int):
        return operate(rollout_id, rollouts.abort)

    return api
