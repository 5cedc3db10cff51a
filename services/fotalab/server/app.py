"""The update server's Flask application factory: operations endpoints, the API and the live
dashboard (dashboard.py). gateway.py puts it behind the artifact downloads (downloads.py).

Every error is JSON {"error": <what was wrong and what to do>, "status": <code>}: a
ServerError (errors.py) with the status of its class, an HTTPException (no route, wrong
method) with its own; an unexpected exception is logged with its traceback and answered
without it.
"""
from __future__ import annotations

import logging
import socket
import sqlite3
from collections.abc import Iterable

from flask import Flask, Response, jsonify, request
from werkzeug.exceptions import HTTPException

from . import api, dashboard, ddi, metrics
from .artifacts import LiveIndex
from .config import ServerConfig
from .errors import NotFound, ServerError
from .live import LiveHub
from .registry import Registry
from .services import EXTENSION, Services, services
from .tlsauth import require_own_identity

log = logging.getLogger("fotalab.server")


def broker_problem(config: ServerConfig, timeout_s: float = 1.0) -> str | None:
    try:
        socket.create_connection((config.mqtt_host, config.mqtt_port), timeout=timeout_s).close()
        return None
    except OSError as exc:
        return f"MQTT broker {config.mqtt_host}:{config.mqtt_port} unreachable: {exc}"


def label_route() -> None:
    """The route label of the request log and metrics (logs.RequestLog reads the ASGI scope)."""
    scope = request.environ.get("asgi.scope")
    if scope is not None:
        scope["fotalab.route"] = request.endpoint or "unmatched"


def error_response(message: str, status: int, headers: Iterable[tuple[str, str]] = ()) -> tuple[Response, int]:
    response = jsonify(error=message, status=status)
    for name, value in headers:
        if name.lower() != "content-type":
            response.headers[name] = value
    return response, status


def server_error(exc: ServerError) -> tuple[Response, int]:
    return error_response(str(exc), exc.status, exc.headers().items())


def http_error(exc: HTTPException) -> tuple[Response, int]:
    return error_response(exc.description or exc.name, exc.code, exc.get_headers())


def unexpected(exc: Exception) -> tuple[Response, int]:
    log.exception("unhandled error in %s %s", request.method, request.path)
    return error_response("internal error: the server log has the details", 500)


def healthz() -> Response:
    index = services().index.get()
    return jsonify(status="ok", releases=len(index.releases), key_id=index.key_id)


def readyz() -> tuple[Response, int]:
    config, registry = services().config, services().registry
    checks: dict[str, object] = {}
    problems = []
    try:
        checks["database"] = {"ok": True, "devices": registry.ping()}
    except sqlite3.Error as exc:
        problems.append(f"registry database {config.database}: {exc}")
        checks["database"] = {"ok": False, "error": problems[-1]}
    if config.mqtt_host:
        problem = broker_problem(config)
        checks["broker"] = {"ok": problem is None, **({"error": problem} if problem else {})}
        problems += [problem] if problem else []
        try:
            checks["ingester"] = registry.ingester()
        except sqlite3.Error:
            checks["ingester"] = None
    else:
        checks["broker"] = {"ok": True, "note": "FOTA_MQTT_HOST is empty: no MQTT ingestion"}
    skipped = services().index.get().skipped
    if skipped:
        checks["release_store"] = {"skipped_artifacts": skipped}
    return jsonify(ready=not problems, checks=checks, problems=problems), 200 if not problems else 503


def prometheus_metrics() -> Response:
    return Response(metrics.render(services().registry.counts), mimetype=metrics.CONTENT_TYPE)


def hash_by_name(name: str) -> Response:
    found = services().index.get().by_hash_name(name)
    if found is None:
        raise NotFound(f"no artifact for {name[:80]!r}: ask for <artifact stem>.sha256, e.g. v2.sha256")
    return Response(f"{found.sha256}  {found.names[-1]}\n", mimetype="text/plain")


def create_app(config: ServerConfig) -> Flask:
    """The Flask app; the data dir must be prepared (main.prepare) and the token set."""
    if not config.api_token:
        raise ValueError("ServerConfig.api_token is empty: main.prepare() loads or generates it")
    app = Flask("fotalab.server")
    app.json.sort_keys = False
    registry = Registry(config.database)
    app.extensions[EXTENSION] = Services(config, LiveIndex(config.releases_dir), registry,
                                         LiveHub(registry, limit=config.stream_limit, poll_s=config.live_poll_s))
    app.register_blueprint(api.blueprint)
    app.register_blueprint(dashboard.blueprint)
    app.register_blueprint(ddi.blueprint)
    app.before_request(label_route)
    # HTTPS, in gunicorn or at the front door: a device's certificate speaks for that device only (tlsauth.py)
    if config.tls or config.frontdoor_secret:
        app.before_request(require_own_identity)
    app.register_error_handler(ServerError, server_error)
    app.register_error_handler(HTTPException, http_error)
    app.register_error_handler(Exception, unexpected)
    for rule, view in (("/healthz", healthz), ("/readyz", readyz), ("/metrics", prometheus_metrics),
                       ("/hash/<name>", hash_by_name)):
        app.get(rule)(view)
    return app
