"""The server as gunicorn runs it: one ASGI app, artifact downloads on the event loop and the
Flask app in a pool of threads.

Downloads are the hot path, so gunicorn's asyncio worker on uvloop answers them on the loop
itself (downloads.py): no thread and no hand-off between threads per request, however slow
the link. Everything else goes to Flask unchanged through a2wsgi (the maintained
WSGI-to-ASGI bridge: a thread pool, request bodies streamed in, responses streamed out).
docs/server.md ("Why an ASGI worker for a Flask app") has the measurements behind the choice.

Layers, outside in: with TLS, ClientCertificates (tlsauth.py: a revoked certificate gets 403,
the peer's identity goes into the scope), RequestLog (logs.py: the JSON request line and request metrics),
Downloads (downloads.py), DdiPolls (ddi_polls.py: the DDI base resource, the other hot path),
StreamWatch (below), a2wsgi's WSGIMiddleware around Flask.
"""
from __future__ import annotations

import asyncio

from a2wsgi import WSGIMiddleware
from flask import Flask

from .dashboard import STREAM_PATH
from .ddi_polls import DdiPolls
from .downloads import ASGIApp, Downloads, Receive, Scope, Send, until_disconnected
from .live import HANGUP, Hangup
from .logs import RequestLog
from .services import EXTENSION
from .tlsauth import ClientCertificates


class StreamWatch:
    """Tells a dashboard stream, running in a Flask thread, that its client went away.

    Through a2wsgi, a write to a closed connection is dropped without an error, so the stream
    would hold its thread and its place (live.py caps them) until it times out. For GET
    STREAM_PATH, which has no request body to read, a task here waits for the client's
    disconnect and sets the live.Hangup the stream tied itself to.
    """

    def __init__(self, app: ASGIApp) -> None:
        self._app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != STREAM_PATH or scope["method"] != "GET":
            return await self._app(scope, receive, send)
        hangup = scope[HANGUP] = Hangup()

        async def watch() -> None:
            await until_disconnected(receive)
            hangup.set()

        async def no_body() -> dict:
            return {"type": "http.request", "body": b"", "more_body": False}

        watcher = asyncio.ensure_future(watch())
        try:
            await self._app(scope, no_body, send)
        finally:
            watcher.cancel()


def asgi_app(flask: Flask, threads: int) -> ASGIApp:
    """What gunicorn serves (gunicorn_app.py): `flask` (create_app) behind the downloads, run
    in `threads` threads per worker."""
    index, config = flask.extensions[EXTENSION].index, flask.extensions[EXTENSION].config
    found = flask.extensions[EXTENSION]
    app = RequestLog(Downloads(DdiPolls(StreamWatch(WSGIMiddleware(flask, workers=threads)), found), index))
    # HTTPS: outermost, a certificate revoked since the start is refused before anything else runs
    return ClientCertificates(app, config.tls_crl) if config.tls else app
