"""The update server's Flask application factory: operations endpoints, the API and the live
dashboard (dashboard.py). gateway.py puts it behind the artifact downloads (downloads.py).

Every error is JSON {"error": <what was wrong and what to do>, "status": <code>}; an
unexpected exception is logged with its traceback and answered without it.
"""
from __future__ import annotations

import logging
import socket
import sqlite3

from flask import Flask, Response, abort, jsonify, request
from werkzeug.exceptions import HTTPException

from . import metrics
from .api import Services, api_blueprint
from .artifacts import LiveIndex
from .config import ServerConfig
from .dashboard import dashboard_blueprint
from .live import LiveHub
from .registry import Registry

log = logging.getLogger("fotalab.server")


def broker_problem(config: ServerConfig, timeout_s: float = 1.0) -> str | None:
    try:
        socket.create_connection((config.mqtt_host, config.mqtt_port), timeout=timeout_s).close()
        return None
    except OSError as exc:
        return f"MQTT broker {config.mqtt_host}:{config.mqtt_port} unreachable: {exc}"


def create_app(config: ServerConfig) -> Flask:
    """The Flask app; the data dir must be prepared (main.prepare) and the token set."""
    if not config.api_token:
        raise ValueError("ServerConfig.api_token is empty: main.prepare() loads or generates it")
    app = Flask("fotalab.server")
    app.json.sort_keys = False
    registry = Registry(config.database)
    services = Services(config, LiveIndex(config.releases_dir), registry,
                        LiveHub(registry, limit=config.stream_limit, poll_s=config.live_poll_s))
    app.extensions["fotalab"] = services
    app.register_blueprint(api_blueprint(services))
    app.register_blueprint(dashboard_blueprint(app, services))

    @app.before_request
    def label_route():
        """The route label of the request log and metrics (logs.RequestLog reads the ASGI scope)."""
        scope = request.environ.get("asgi.scope")
        if scope is not None:
            scope["fotalab.route"] = request.endpoint or "unmatched"

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException):
        response = jsonify(error=exc.description or exc.name, status=exc.code)
        for name, value in exc.get_headers():
            if name.lower() != "content-type":
                response.headers[name] = value
        return response, exc.code

    @app.errorhandler(Exception)
    def unexpected(exc: Exception):
        log.exception("unhandled error in %s %s", request.method, request.path)
        return jsonify(error="internal error: the server log has the details", status=500), 500

    @app.get("/healthz")
    def healthz():
        index = services.index.get()
        return jsonify(status="ok", releases=len(index.releases), key_id=index.key_id)

    @app.get("/readyz")
    def readyz():
        checks: dict[str, object] = {}
        problems = []
        try:
            checks["database"] = {"ok": True, "devices": services.registry.ping()}
        except sqlite3.Error as exc:
            problems.append(f"registry database {config.database}: {exc}")
            checks["database"] = {"ok": False, "error": problems[-1]}
        if config.mqtt_host:
            problem = broker_problem(config)
            checks["broker"] = {"ok": problem is None, **({"error": problem} if problem else {})}
            problems += [problem] if problem else []
            try:
                checks["ingester"] = services.registry.ingester()
            except sqlite3.Error:
                checks["ingester"] = None
        else:
            checks["broker"] = {"ok": True, "note": "FOTA_MQTT_HOST is empty: no MQTT ingestion"}
        skipped = services.index.get().skipped
        if skipped:
            checks["release_store"] = {"skipped_artifacts": skipped}
        return jsonify(ready=not problems, checks=checks, problems=problems), 200 if not problems else 503

    @app.get("/metrics")
    def prometheus_metrics():
        return Response(metrics.render(services.registry.counts), mimetype=metrics.CONTENT_TYPE)

    @app.get("/hash/<name>")
    def hash_by_name(name: str):
        found = services.index.get().by_hash_name(name)
        if found is None:
            abort(404, f"no artifact for {name[:80]!r}: ask for <artifact stem>.sha256, e.g. v2.sha256")
        return Response(f"{found.sha256}  {found.names[-1]}\n", mimetype="text/plain")

    return app
