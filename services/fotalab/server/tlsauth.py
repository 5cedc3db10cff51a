"""HTTPS with client certificates: who is asking, taken from the certificate, never from the query.

TLS terminates in gunicorn itself (gunicorn_app.py): its ssl settings with the lab CA, client
certificates optional at the handshake (a browser on the dashboard has none; devices, the CLI
and the server's own tools present theirs), checked against the CRL the server started with.
gunicorn's ASGI worker does not put the peer certificate in the ASGI scope, so `PeerProtocol`
(its protocol with one method more) copies the verified certificate's CN and serial there.

Or TLS terminates at the front door (nginx, frontdoor/: FOTA_FRONTDOOR_SECRET_FILE set): gunicorn
serves plain HTTP, and `FrontDoorPeers`, outermost, takes the peer from the headers the door
sets on every request it proxies (the verified certificate's CN and serial, X-Forwarded-Proto),
but only when the request also carries the door's secret; otherwise it ignores them, so a client
that reaches gunicorn directly and sets them itself is nobody. Below it all is as with gunicorn's
TLS.

`ClientCertificates`, the outer ASGI layer, refuses (403) a certificate revoked since the
server started: it re-reads the CRL when the file changes, at most once a second, so a
revocation takes effect within seconds on new and on kept-alive connections alike. It records
the identity in the scope for Flask (`client_identity`).

Rules (`identity_problem`, before every Flask request when TLS is on): the manifest is only
for a client certificate (the device's identity comes from it); a device's certificate may
only name itself (a `device` query parameter, a device or controller id in the path; the DDI
base resource, answered in front of Flask by ddi_polls.py, is checked in ClientCertificates);
another identity is 403. A device's certificate never reaches the API's write endpoints.
The bearer token is only accepted over TLS (auth.token_problem's caller checks the scheme).
"""
from __future__ import annotations

import hmac
import json
import threading
import time
from pathlib import Path
from urllib.parse import unquote

from cryptography import x509
from flask import Request, request

from ..tlsfiles import file_stamp, peer_identity, peer_serial
from .downloads import ASGIApp, Receive, Scope, Send
from .errors import ServerError

PEER = "fotalab.peer"             # scope: (identity, serial) of the verified client certificate
IDENTITY = "fotalab.identity"     # scope: the identity, once checked against the CRL
# operators' tools, not devices (lab/pki.py issues them)
SERVICE_IDENTITIES = frozenset({"fota-server", "fota-cli", "fota-tools", "fota-health"})
DEVICE_VIEW_ARGS = ("device_id", "controller_id")
DEVICE_QUERY = "device"
WRITE_PREFIX = "/api/"
DDI_PATH = ("controller", "v1")          # hawkBit DDI: /<tenant>/controller/v1/<controller id>/...
CERTIFICATE_ENDPOINTS = frozenset({"api.manifest"})     # only a device asks these, and only with its certificate
# what the front door sets on every request it proxies (frontdoor/nginxconf.py), whatever the client sent
DOOR_SECRET = b"x-fota-frontdoor"
DOOR_IDENTITY = b"x-fota-client-identity"
DOOR_SERIAL = b"x-fota-client-serial"
FORWARDED_PROTO = b"x-forwarded-proto"
DOOR_HEADERS = frozenset({DOOR_SECRET, DOOR_IDENTITY, DOOR_SERIAL})


class Forbidden(ServerError):
    """The request's certificate does not allow it (another device's identity, a revoked one)."""
    status = 403


def peer_of(peercert: dict | None) -> tuple[str, int] | None:
    identity, serial = peer_identity(peercert), peer_serial(peercert)
    return (identity, serial) if identity and serial is not None else None


try:    # gunicorn's asyncio worker; without it (unit tests) only the ASGI and Flask parts are used
    from gunicorn.asgi.protocol import ASGIProtocol

    class PeerProtocol(ASGIProtocol):
        """gunicorn's ASGI protocol, plus the verified client certificate in every HTTP scope."""

        def _build_http_scope(self, request, sockname, peername):
            scope = super()._build_http_scope(request, sockname, peername)
            ssl_object = self.transport.get_extra_info("ssl_object") if self.transport else None
            if ssl_object is not None:
                scope[PEER] = peer_of(ssl_object.getpeercert())
            return scope
except ImportError:    # pragma: no cover
    PeerProtocol = None


class Revocations:
    """The serials of a CRL file, re-read when the file changes (checked at most every `every_s`)."""

    def __init__(self, path: Path | None, every_s: float = 1.0) -> None:
        self._path, self._every = path, every_s
        self._serials: frozenset[int] = frozenset()
        self._stamp: tuple[int, int, int] | None = None
        self._checked = 0.0
        self._lock = threading.Lock()

    def revoked(self, serial: int) -> bool:
        if self._path is None:
            return False
        now = time.monotonic()
        if now - self._checked >= self._every:
            with self._lock:
                self._checked = now
                self._reload()
        return serial in self._serials

    def _reload(self) -> None:
        stamp = file_stamp(self._path)
        if stamp is None or stamp == self._stamp:
            return                      # absent (keep the last good list), or unchanged
        try:
            crl = x509.load_pem_x509_crl(self._path.read_bytes())
        except (OSError, ValueError):
            return                      # half-written or damaged: keep the last good list, try again
        self._serials = frozenset(entry.serial_number for entry in crl)
        self._stamp = stamp


class FrontDoorPeers:
    """Outermost ASGI layer behind the front door: the peer and scheme the door vouches for (with
    `secret`) go into the scope, as PeerProtocol puts a TLS socket's; the door's headers never go
    further (the secret stays out of Flask, its logs and its errors)."""

    def __init__(self, app: ASGIApp, secret: str) -> None:
        self._app, self._secret = app, secret.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            scope = vouched(scope, self._secret)
        await self._app(scope, receive, send)


def vouched(scope: Scope, secret: bytes) -> Scope:
    """`scope` without the door's headers; with the peer (identity, serial) and scheme they name
    if they carry `secret` (each header once); otherwise with no peer, and http whatever a
    scheme header said (gunicorn itself serves plain HTTP here)."""
    door: dict[bytes, list[bytes]] = {}
    kept = []
    for name, value in scope.get("headers", ()):
        if name.lower() in DOOR_HEADERS:
            door.setdefault(name.lower(), []).append(value)
        else:
            kept.append((name, value))
    scope = {**scope, "headers": kept, "scheme": "http"}      # what gunicorn itself speaks behind the door
    scope.pop(PEER, None)
    shown = door.get(DOOR_SECRET, [])
    if len(shown) != 1 or not hmac.compare_digest(shown[0], secret) or \
            any(len(values) > 1 for values in door.values()):
        return scope
    if [value for name, value in kept if name.lower() == FORWARDED_PROTO] == [b"https"]:
        scope["scheme"] = "https"
    identity, serial = door.get(DOOR_IDENTITY, [b""])[0], door.get(DOOR_SERIAL, [b""])[0]
    try:
        scope[PEER] = (identity.decode(), int(serial, 16)) if identity and serial else None
    except (UnicodeDecodeError, ValueError):
        scope[PEER] = None
    return scope


class ClientCertificates:
    """Outermost ASGI layer (behind the front door, right under FrontDoorPeers): a revoked client
    certificate gets 403; a good one's identity goes into the scope for the layers below (IDENTITY)."""

    def __init__(self, app: ASGIApp, crl: Path | None) -> None:
        self._app, self._revocations = app, Revocations(crl)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        peer = scope.get(PEER) if scope["type"] == "http" else None
        if peer:
            identity, serial = peer
            if self._revocations.revoked(serial):
                return await refuse(send, f"the certificate of {identity} (serial {serial:x}) is revoked: the "
                                    "operator re-provisions it with `fota device reprovision`", close=True)
            scope[IDENTITY] = identity
            claimed = ddi_controller(scope.get("path", ""))
            if claimed is not None and identity not in SERVICE_IDENTITIES and claimed != identity:
                # DDI polls are answered in front of Flask (ddi_polls.py): the rule is enforced here too
                return await refuse(send, f"this certificate is {identity}'s: it may not ask as {claimed[:80]!r}")
        await self._app(scope, receive, send)


def ddi_controller(path: str) -> str | None:
    """The controller id a hawkBit DDI path names (/<tenant>/controller/v1/<controller id>/...), or None."""
    parts = path.split("/")
    if len(parts) >= 5 and parts[2:4] == list(DDI_PATH) and parts[4]:
        return unquote(parts[4])
    return None


async def refuse(send: Send, message: str, *, close: bool = False) -> None:
    """A 403 with the server's error body, from the ASGI layer."""
    body = json.dumps({"error": message, "status": Forbidden.status}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": Forbidden.status,
                "headers": headers + ([(b"connection", b"close")] if close else [])})
    await send({"type": "http.response.body", "body": body})


def client_identity(request: Request) -> str | None:
    """The identity of the request's verified, unrevoked client certificate, or None."""
    scope = request.environ.get("asgi.scope") or {}
    return scope.get(IDENTITY)


def identity_problem(request: Request) -> str | None:
    """Why a device's certificate may not make this request (403), or None."""
    identity = client_identity(request)
    if identity is None and request.endpoint in CERTIFICATE_ENDPOINTS:
        return ("a device asks for its manifest with its certificate: set FOTA_TLS_CERT and FOTA_TLS_KEY to "
                "the device's cert.pem and key.pem (from fota-provision)")
    if identity is None or identity in SERVICE_IDENTITIES:
        return None
    if request.path.startswith(WRITE_PREFIX) and request.method not in ("GET", "HEAD", "OPTIONS"):
        return f"a device's certificate ({identity}) may not use the API's write endpoints: operators use `fota`"
    claimed = [str(v) for k, v in (request.view_args or {}).items() if k in DEVICE_VIEW_ARGS]
    claimed += request.args.getlist(DEVICE_QUERY)
    for name in claimed:
        if name != identity:
            return f"this certificate is {identity}'s: it may not ask as {name[:80]!r}"
    return None


def require_own_identity() -> None:
    """Flask before_request hook (app.py, when TLS is on): identity_problem as a 403."""
    problem = identity_problem(request)
    if problem:
        raise Forbidden(problem)


def token_needs_tls(request: Request) -> str | None:
    """Why a bearer token may not be used on this request: it did not come over TLS."""
    if request.scheme != "https":
        return "this server accepts the API token only over TLS: use its https:// address (the lab CA verifies it)"
    return None
