"""The live fleet dashboard: its page at /, and the read-only endpoints it runs on.

The page (static/index.html, dashboard.js, charts.js, dashboard.css) is served by this server
and needs nothing from the internet: workshops often have none. It reads the fleet from
GET /api/v1/stream (Server-Sent Events, live.py), or polls GET /api/v1/dashboard when the
stream is not available, and the charts from GET /api/v1/dashboard/charts. Actions go through
the token-protected API (api.py), with the token the user pastes into the page.
The fleet comes as counts and one page of the table (fleetview.View in the query string of
each of these: offset, limit, state, group, online, sort, desc, device), never as the whole
fleet: at 10,000 devices the whole fleet was 6.7 MB per snapshot and 10 s or more to draw
(docs/server.md, "Dashboard at 10,000 devices").
"""
from __future__ import annotations

from flask import Blueprint, Response, current_app, jsonify, request, send_from_directory

from . import charts
from .errors import InvalidRequest
from .fleetview import View, snapshot
from .live import HANGUP, Stream
from .services import services

MAX_HOURS = 7 * 24
BUSY_RETRY_S = 30               # when a worker's streams are all taken
STREAM_PATH = "/api/v1/stream"

blueprint = Blueprint("dashboard", __name__)


@blueprint.get("/")
def index() -> Response:
    return send_from_directory(current_app.static_folder, "index.html", max_age=0)


@blueprint.get("/api/v1/dashboard")
def dashboard_snapshot() -> Response:
    """What the stream sends first, for the view in the query string (fleetview.View): polling."""
    return jsonify(snapshot(services().registry, View.from_args(request.args)))



@blueprint.get("/api/v1/dashboard/charts")
def dashboard_charts() -> Response:
    try:
        hours = float(request.args.get("hours", 24))
        rollout_id = int(request.args["rollout"]) if request.args.get("rollout") else None
    except ValueError:
        raise InvalidRequest("query parameters: hours is a number of hours (e.g. 24), rollout a rollout id") from None
    if not 0 < hours <= MAX_HOURS:
        raise InvalidRequest(f"hours must be more than 0 and at most {MAX_HOURS} (a week), got {hours:g}")
    if rollout_id is not None:
        services().known_rollout(rollout_id)
    return jsonify(charts.charts(services().registry, services().index.get(), hours=hours, rollout_id=rollout_id))


@blueprint.get(STREAM_PATH)
def stream() -> Response | tuple[Response, int]:
    """The snapshot, then the registry's changes (live.py); 503 with Retry-After when this worker
    serves its maximum of streams: a busy answer the page knows, not an error."""
    view = View.from_args(request.args)      # a bad query is a 400 before a place is taken
    hub = services().live
    subscription = hub.subscribe(view)
    if subscription is None:
        why = ("this server worker is stopping" if hub.closing else
               f"this server worker already serves {hub.limit} live dashboard streams "
               "(FOTA_SERVER_STREAMS, at most half its threads)")
        response = jsonify(error=f"{why}: retry in {BUSY_RETRY_S} s, or poll GET /api/v1/dashboard",
                           status=503, retry_ms=BUSY_RETRY_S * 1000)
        response.headers["Retry-After"] = str(BUSY_RETRY_S)
        return response, 503
    try:
        first = snapshot(services().registry, view)
    except BaseException:
        hub.unsubscribe(subscription)
        raise
    hangup = (request.environ.get("asgi.scope") or {}).get(HANGUP)
    if hangup is not None:
        hangup.tie(subscription)
    body = Stream(hub, subscription, first, stream_s=services().config.stream_s)
    return Response(body, mimetype="text/event-stream",
                    headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
