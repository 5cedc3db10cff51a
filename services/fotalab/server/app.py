"""The update server's Flask application factory."""
from __future__ import annotations

from flask import Flask, Response, abort, jsonify, request
from werkzeug.exceptions import HTTPException

from ..image import parse_version
from .artifacts import ReleaseIndex, send_artifact
from .config import ServerConfig


def create_app(config: ServerConfig) -> Flask:
    app = Flask("fotalab.server")
    index = ReleaseIndex(config.releases_dir)

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException):
        return jsonify(error=exc.description or exc.name, status=exc.code), exc.code

    @app.errorhandler(Exception)
    def unexpected(exc: Exception):
        app.logger.exception("unhandled error")
        return jsonify(error="internal error: see the server log", status=500), 500

    @app.get("/healthz")
    def healthz():
        return jsonify(status="ok", releases=len(index.releases), key_id=index.key_id)

    @app.get("/artifacts/<sha256>")
    def artifact(sha256: str):
        found = index.by_sha.get(sha256)
        if found is None:
            abort(404, f"no artifact with SHA-256 {sha256}: list them at /api/v1/releases")
        return send_artifact(request, found)

    @app.get("/updates/<name>")
    def update_by_name(name: str):
        found = index.by_name.get(name)
        if found is None:
            abort(404, f"no artifact named {name!r}: list them at /api/v1/releases")
        return send_artifact(request, found)

    @app.get("/hash/<name>")
    def hash_by_name(name: str):
        found = index.by_hash_name(name)
        if found is None:
            abort(404, f"no artifact for {name!r}: ask for <artifact stem>.sha256, e.g. v2.sha256")
        return Response(f"{found.sha256}  {found.names[-1]}\n", mimetype="text/plain")

    @app.get("/api/v1/releases")
    def releases():
        return jsonify(releases=[{**r, "artifacts": [
            {"sha256": sha, "names": list(index.by_sha[sha].names), "length": index.by_sha[sha].length,
             "url": f"/artifacts/{sha}"} for sha in [r["image"], *(d["sha256"] for d in r["deltas"])]]}
            for r in index.releases], key_id=index.key_id)

    @app.get("/api/v1/manifest")
    def manifest():
        hardware = request.args.get("hardware", "")
        version = request.args.get("version", "")
        if not any(r["hardware"] == hardware for r in index.releases):
            abort(404, f"no releases for hardware {hardware!r}: check the device's FOTA_HARDWARE")
        try:
            running = parse_version(version)
        except ValueError as exc:
            abort(400, f"query parameter version: {exc}")
        target = index.release(hardware, config.default_release)
        if target is None or parse_version(target["version"]) <= running:
            return jsonify(update=False)
        delta = next((d for d in target["deltas"] if d["base_sha256"] == request.args.get("image")), None)
        artifact = f"/artifacts/{delta['sha256'] if delta else target['image']}"
        return jsonify(update=True, version=target["version"], artifact=artifact,
                       manifest=index.manifest_document(target).decode())

    return app
