"""The API token: a bearer token for every request that changes state.

FOTA_API_TOKEN sets it. Without it the server generates one on its first start, keeps it in
the data volume (mode 0600) and prints it once, at that start; later starts read it back,
so the token survives restarts and is not written to the logs again.
"""
from __future__ import annotations

import hmac
import os
import secrets
from pathlib import Path

from flask import Request


def load_or_create_token(path: Path) -> tuple[str, bool]:
    """(token, created): the stored token, or a new one written atomically with mode 0600."""
    try:
        return path.read_text().strip(), False
    except FileNotFoundError:
        pass
    token = secrets.token_urlsafe(32)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(token + "\n")
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, path)
    return token, True


def token_problem(request: Request, expected: str) -> str | None:
    """Why the request is not authorised, or None if it carries the right bearer token."""
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if not header:
        return "this request changes state: send 'Authorization: Bearer <token>' (FOTA_API_TOKEN)"
    if scheme.lower() != "bearer" or not token.strip():
        return "malformed Authorization header: expected 'Bearer <token>'"
    if not hmac.compare_digest(token.strip().encode(), expected.encode()):
        return "wrong API token: use the server's FOTA_API_TOKEN (or the generated one in its data dir)"
    return None
