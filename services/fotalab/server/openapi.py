"""The OpenAPI 3.1 description of the server, served at /api/v1/openapi.json.

Written by hand next to the routes; a unit test checks that every route of the app is
described here and nothing else, so the two cannot drift apart.
"""
from __future__ import annotations

from typing import Any

from ..protocol import Event, RolloutStatus
from .rollouts import ON_FAILURE, Action, Actor

JSON = "application/json"


def _ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict, description: str) -> dict:
    return {"description": description, "content": {JSON: {"schema": schema}}}


ERROR = _json(_ref("Error"), "error, with a message saying what was wrong and what to do")
DEVICE_ID = {"name": "device_id", "in": "path", "required": True, "schema": {"type": "string", "maxLength": 128}}
SECURED = [{"bearer": []}]
ROLLOUT_ID = {"name": "rollout_id", "in": "path", "required": True, "schema": {"type": "integer"}}


def _query(name: str, description: str, *, required: bool = False, type_: str = "string") -> dict:
    return {"name": name, "in": "query", "required": required, "description": description, "schema": {"type": type_}}


# the fleet table's page (fleetview.View): what GET /api/v1/dashboard and the stream take
VIEW = [_query("offset", "first device of the page, 0 or more (default 0)", type_="integer"),
        _query("limit", "devices per page, 1 to 500 (default 50)", type_="integer"),
        _query("state", "only devices in this reported state"),
        _query("group", "only devices of this group"),
        _query("online", "1: only online devices, 0: only offline ones"),
        _query("sort", "device, state, version or last_seen (default device)"),
        _query("desc", "1: descending order"),
        _query("device", "also send this device's row and events (its page is open)")]


def _artifact_get(summary: str, parameter: dict) -> dict:
    return {"get": {
        "summary": summary, "parameters": [
            parameter,
            {"name": "Range", "in": "header", "schema": {"type": "string"},
             "description": "one range: bytes=START-[END]"},
            {"name": "If-Range", "in": "header", "schema": {"type": "string"},
             "description": "the ETag of the partial copy; the range applies only if it still matches"},
            {"name": "If-None-Match", "in": "header", "schema": {"type": "string"}}],
        "responses": {
            "200": {"description": "the whole artifact; ETag is its SHA-256",
                    "content": {"application/octet-stream": {}}},
            "206": {"description": "the requested range, with Content-Range",
                    "content": {"application/octet-stream": {}}},
            "304": {"description": "If-None-Match matched"},
            "404": ERROR, "412": ERROR,
            "416": _json(_ref("Error"), "a multi-range, malformed or unsatisfiable range")}}}


def openapi_document() -> dict[str, Any]:
    device_item = {"type": "object", "properties": {
        "device_id": {"type": "string"}, "hardware": {"type": ["string", "null"]},
        "state": {"type": ["string", "null"]}, "version": {"type": ["string", "null"]},
        "slot": {"type": ["string", "null"]}, "image_sha256": {"type": ["string", "null"]},
        "progress": {"type": ["number", "null"]}, "reason": {"type": ["string", "null"]},
        "state_ts": {"type": "number", "description": "the device's clock at its last state report"},
        "online": {"type": "boolean"}, "first_seen": {"type": "number"}, "last_seen": {"type": "number"},
        "assigned_version": {"type": ["string", "null"]},
        "report": {"type": ["object", "null"], "description": "the last state report as sent"}}}
    return {
        "openapi": "3.1.0",
        "info": {"title": "fota-lab update server", "version": "1",
                 "description": "Signed releases, content-addressed artifacts with Range support, the device "
                                "registry fed by MQTT, and per-device release assignments. Requests that change "
                                "state need 'Authorization: Bearer <FOTA_API_TOKEN>'."},
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Error": {"type": "object", "required": ["error", "status"],
                          "properties": {"error": {"type": "string"}, "status": {"type": "integer"}}},
                "Device": device_item,
                "Assignment": {"type": "object", "properties": {
                    "version": {"type": "string"},
                    "source": {"enum": ["device", "default"],
                               "description": "assigned to this device, or the server's default release"}}},
                "Offer": {"type": "object", "required": ["update"], "properties": {
                    "update": {"type": "boolean"}, "reason": {"type": "string"}, "version": {"type": "string"},
                    "manifest": {"type": "string", "description": "the signed manifest document"},
                    "artifact": {"type": "string", "description": "URL path of the artifact to download"},
                    "artifact_sha256": {"type": "string"}, "artifact_length": {"type": "integer"},
                    "artifact_kind": {"enum": ["delta", "image"]}, "base_sha256": {"type": ["string", "null"]},
                    "assigned": {"type": "string"}, "assignment": {"enum": ["device", "default"]}}},
                "NewRollout": {"type": "object", "required": ["release"], "properties": {
                    "release": {"type": "string"},
                    "selection": {"description": '{"all": true} (default), {"hardware": "<id>"}, '
                                                 '{"group": "<name>"} or {"devices": ["<id>", ...]} '
                                                 '(in phase order)', "type": "object"},
                    "phases": {"type": "array", "items": {"type": "string"},
                               "description": 'cumulative: "1" a canary of 1 device, "50%" half; '
                                              'default ["1", "100%"]'},
                    "policy": {"type": "object", "properties": {
                        "success_ratio": {"type": "number", "description": "committed share of a phase to go on (1)"},
                        "max_failure_ratio": {"type": "number", "description":
                                              "failures / devices offered above which the gate trips (0)"},
                        "on_failure": {"enum": list(ON_FAILURE)},
                        "max_retries": {"type": "integer", "description": "transient failures retried per device (3)"},
                        "backoff_s": {"type": "number", "description": "first retry delay, doubled each time (10)"},
                        "rehint_s": {"type": "number", "description": "hint again after this silence (30)"}}}}},
                "Rollout": {"type": "object", "properties": {
                    "id": {"type": "integer"}, "release": {"type": "string"}, "selection": {"type": "object"},
                    "status": {"enum": list(RolloutStatus)}, "reason": {"type": "string"},
                    "phase": {"type": "integer"}, "phases": {"type": "array", "items": {"type": "object"}},
                    "quarantined": {"type": "array", "items": {"type": "string"},
                                    "description": "devices on which the release rolled back: never offered again"},
                    "devices": {"type": "array", "items": {"type": "object"}}}},
                "Decision": {"type": "object", "description": "one entry of a rollout's log", "properties": {
                    "id": {"type": "integer"}, "rollout_id": {"type": "integer"},
                    "at": {"type": "number", "description": "server clock"},
                    "actor": {"enum": list(Actor)},
                    "action": {"enum": list(Action)},
                    "status": {"type": "string", "description": "the rollout's status after the decision"},
                    "phase": {"type": "integer"}, "reason": {"type": "string"}}},
                "Snapshot": {"type": "object", "description": "the dashboard's view of the fleet", "properties": {
                    "at": {"type": "number"},
                    "counts": {"type": "object", "description": "the whole fleet: total, online, downloading, "
                                                                "by_state"},
                    "page": {"type": "object", "description": "the view asked for, how many devices match it "
                                                              "(total) and the page's device ids in order (ids)"},
                    "devices": {"type": "array", "items": _ref("Device"),
                                "description": "the page's devices (and the open device's), each with "
                                               "last_result {outcome, version, reason} or null"},
                    "rollouts": {"type": "array", "items": {"type": "object"},
                                 "description": "the newest rollouts, without per-device runs (device_count), "
                                                "with created_at and updated_at"},
                    "decisions": {"type": "array", "items": _ref("Decision")}}},
                "Event": {"type": "object", "properties": {
                    "id": {"type": "integer"}, "ts": {"type": "number"}, "event": {"type": "string"},
                    "received_at": {"type": "number"}, "payload": {"type": "object"}}}}},
        "paths": {
            "/healthz": {"get": {"summary": "liveness", "responses": {"200": _json({"type": "object"}, "alive")}}},
            "/readyz": {"get": {"summary": "readiness: the registry database and the MQTT broker answer",
                                "responses": {"200": _json({"type": "object"}, "ready"),
                                              "503": _json({"type": "object"}, "not ready, with the failing check")}}},
            "/metrics": {"get": {"summary": "Prometheus metrics (text format)",
                                 "responses": {"200": {"description": "metrics", "content": {"text/plain": {}}}}}},
            "/artifacts/{sha256}": _artifact_get(
                "an artifact by its SHA-256 (immutable)",
                {"name": "sha256", "in": "path", "required": True,
                 "schema": {"type": "string", "pattern": "^[0-9a-f]{64}$"}}),
            "/updates/{name}": _artifact_get(
                "an artifact by an indexed name (the seed's URLs, e.g. v1_to_v2.delta, v2.bin, v2.sig)",
                {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}),
            "/hash/{name}": {"get": {
                "summary": "the seed's hash file, e.g. v2.sha256: '<sha256>  <name>'",
                "parameters": [{"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}],
                "responses": {"200": {"description": "sha256sum line", "content": {"text/plain": {}}},
                              "404": ERROR}}},
            "/": {"get": {"summary": "the live fleet dashboard (HTML; its assets under /static/)",
                          "responses": {"200": {"description": "the page", "content": {"text/html": {}}}}}},
            "/api/v1/dashboard": {"get": {
                "summary": "the fleet as the dashboard shows it, one page of its table: what the stream sends "
                           "first; poll it when the stream is not available",
                "parameters": VIEW,
                "responses": {"200": _json(_ref("Snapshot"), "snapshot"), "400": ERROR}}},
            "/api/v1/dashboard/charts": {"get": {
                "summary": "chart data: bytes per update (delta against full image), a rollout's commits over "
                           "time with its decisions, recoveries after power cuts",
                "parameters": [_query("hours", "time window, default 24, at most 168", type_="number"),
                               _query("rollout", "rollout id (default: the newest)", type_="integer")],
                "responses": {"200": _json({"type": "object"}, "bandwidth, rollout and recoveries"),
                              "400": ERROR, "404": ERROR}}},
            "/api/v1/stream": {"get": {
                "summary": "Server-Sent Events: a 'snapshot' event (as GET /api/v1/dashboard, for the same "
                           "page), then 'changes' events about once a second with the counts and only the page's "
                           "rows that changed; the stream ends after a few minutes and EventSource reconnects",
                "parameters": VIEW,
                "responses": {"200": {"description": "the event stream", "content": {"text/event-stream": {}}},
                              "400": ERROR,
                              "503": _json(_ref("Error"), "this worker serves its maximum of streams: "
                                                          "retry after Retry-After seconds, or poll")}}},
            "/api/v1/openapi.json": {"get": {"summary": "this document",
                                             "responses": {"200": _json({"type": "object"}, "OpenAPI 3.1")}}},
            "/api/v1/releases": {"get": {
                "summary": "signed releases and their artifacts",
                "parameters": [_query("hardware", "only this hardware id")],
                "responses": {"200": _json({"type": "object"}, "releases, key id and the default release")}}},
            "/api/v1/manifest": {"get": {
                "summary": "what a device should install: the signed manifest of its assigned release and the "
                           "best artifact for its running image, or no update",
                "parameters": [_query("device", "device id", required=True),
                               _query("hardware", "hardware id", required=True),
                               _query("version", "running version", required=True),
                               _query("image", "SHA-256 of the running image (selects a delta)")],
                "responses": {"200": _json(_ref("Offer"), "an update or none, with the reason"),
                              "400": ERROR, "404": ERROR}}},
            "/api/v1/devices": {"get": {
                "summary": "every device the server heard of over MQTT",
                "parameters": [_query("state", "only devices in this state"),
                               _query("online", "true or false")],
                "responses": {"200": _json({"type": "object", "properties": {
                    "devices": {"type": "array", "items": _ref("Device")}, "count": {"type": "integer"}}},
                    "devices"), "400": ERROR}}},
            "/api/v1/devices/{device_id}": {"get": {
                "summary": "one device with its effective assignment", "parameters": [DEVICE_ID],
                "responses": {"200": _json(_ref("Device"), "the device"), "400": ERROR, "404": ERROR}}},
            "/api/v1/devices/{device_id}/history": {"get": {
                "summary": "the device's events, oldest first, append-only",
                "parameters": [DEVICE_ID, _query("after", "event id to continue after", type_="integer"),
                               _query("limit", "1-1000, default 100", type_="integer")],
                "responses": {"200": _json({"type": "object", "properties": {
                    "events": {"type": "array", "items": _ref("Event")},
                    "next_after": {"type": ["integer", "null"]}}}, "events"), "400": ERROR, "404": ERROR}}},
            "/api/v1/devices/{device_id}/assignment": {
                "get": {"summary": "the release this device is offered", "parameters": [DEVICE_ID],
                        "responses": {"200": _json(_ref("Assignment"), "assignment"), "400": ERROR}},
                "put": {"summary": "assign a release to this device (overrides the default)", "security": SECURED,
                        "parameters": [DEVICE_ID],
                        "requestBody": {"required": True, "content": {JSON: {"schema": {
                            "type": "object", "required": ["version"],
                            "properties": {"version": {"type": "string"}}}}}},
                        "responses": {"200": _json(_ref("Assignment"), "assigned"), "400": ERROR, "401": ERROR,
                                      "422": ERROR}},
                "delete": {"summary": "back to the server's default release", "security": SECURED,
                           "parameters": [DEVICE_ID],
                           "responses": {"204": {"description": "removed (or there was none)"}, "401": ERROR}}},
            "/api/v1/devices/{device_id}/certificate": {"post": {
                "summary": "record that the operator revoked or reissued the device's TLS certificate (its history)",
                "security": SECURED, "parameters": [DEVICE_ID],
                "requestBody": {"required": True, "content": {JSON: {"schema": {
                    "type": "object", "required": ["event", "serial"], "properties": {
                        "event": {"enum": [Event.CERTIFICATE_REVOKED.value, Event.CERTIFICATE_REISSUED.value]},
                        "serial": {"type": "string", "description": "the certificate's serial, hex"}}}}}},
                "responses": {"201": _json({"type": "object"}, "recorded"), "400": ERROR, "401": ERROR,
                              "403": ERROR}}},
            "/api/v1/devices/{device_id}/trigger": {"post": {
                "summary": "send the device the update hint {\"cmd\": \"update\"} over MQTT (within a second)",
                "security": SECURED, "parameters": [DEVICE_ID],
                "responses": {"202": _json({"type": "object"}, "queued for the server's MQTT client"),
                              "401": ERROR, "404": ERROR}}},
            "/api/v1/controllers": {
                "get": {"summary": "enrolled DDI controllers (hawkBit's Direct Device Integration API, docs/ddi.md) "
                                   "with their state and configData attributes; never their tokens",
                        "responses": {"200": _json({"type": "object", "properties": {
                            "tenant": {"type": "string"}, "count": {"type": "integer"},
                            "controllers": {"type": "array", "items": {"type": "object"}}}}, "controllers")}},
                "post": {"summary": "enrol a DDI controller; the answer holds its TargetToken, shown this once",
                         "security": SECURED,
                         "requestBody": {"required": True, "content": {JSON: {"schema": {
                             "type": "object", "required": ["name"], "properties": {
                                 "name": {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$",
                                          "description": "the controllerId, and its device id"},
                                 "hardware": {"type": "string", "description": "a hardware id with releases "
                                                                               "(default: the only one)"}}}}}},
                         "responses": {"201": _json({"type": "object", "properties": {
                             "controller_id": {"type": "string"}, "hardware": {"type": "string"},
                             "tenant": {"type": "string"}, "base_url": {"type": "string"},
                             "ddi_url": {"type": "string"}, "poll_s": {"type": "integer"},
                             "credentials": {"type": "object", "properties": {"target_token": {"type": "string"}}}}},
                             "enrolled"), "400": ERROR, "401": ERROR, "409": ERROR, "422": ERROR}}},
            "/api/v1/rollouts": {
                "get": {"summary": "every rollout, oldest first",
                        "responses": {"200": _json({"type": "object", "properties": {
                            "rollouts": {"type": "array", "items": _ref("Rollout")}}}, "rollouts")}},
                "post": {"summary": "start a staged rollout (one active rollout at a time)", "security": SECURED,
                         "requestBody": {"required": True, "content": {JSON: {"schema": _ref("NewRollout")}}},
                         "responses": {"201": _json(_ref("Rollout"), "created and running"), "400": ERROR,
                                       "401": ERROR, "409": ERROR, "422": ERROR}}},
            "/api/v1/rollouts/{rollout_id}": {"get": {
                "summary": "one rollout: status, phases, every device's progress",
                "parameters": [ROLLOUT_ID],
                "responses": {"200": _json(_ref("Rollout"), "the rollout"), "404": ERROR}}},
            "/api/v1/rollouts/{rollout_id}/log": {"get": {
                "summary": "the rollout's decisions, oldest first: created, phases advanced, gates tripped, "
                           "operator actions, completion",
                "parameters": [ROLLOUT_ID],
                "responses": {"200": _json({"type": "object", "properties": {
                    "rollout_id": {"type": "integer"}, "decisions": {"type": "array", "items": _ref("Decision")}}},
                    "the log"), "404": ERROR}}},
            **{f"/api/v1/rollouts/{{rollout_id}}/{verb}": {"post": {
                "summary": summary, "security": SECURED, "parameters": [ROLLOUT_ID],
                "responses": {"200": _json(_ref("Rollout"), "the changed rollout"), "401": ERROR, "404": ERROR,
                              "409": _json(_ref("Error"), "not possible in the rollout's status")}}}
               for verb, summary in (("pause", "stop offering the release to more devices"),
                                     ("resume", "continue a paused rollout, accepting the failures so far"),
                                     ("abort", "end the rollout; devices that did not commit stop being offered "
                                               "the release"))}}}
