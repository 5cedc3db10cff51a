"""gunicorn embedded: its asyncio (ASGI) worker on uvloop, JSON logs, the ingest elector in
every worker.

The worker serves gateway.py's app: downloads on the event loop, which keeps heart-beating
however long a transfer over a slow link lasts, Flask in a thread pool of `threads` per
worker. The app is created once in the master (preload): every worker serves the same checked
release index, including workers started later. Nothing it holds is bound to a process:
registry connections open per thread on first use, metric values follow the pid, a2wsgi
starts its threads on first use.
"""
from __future__ import annotations

import ctypes
import ssl

from gunicorn.app.base import BaseApplication
from gunicorn.workers import gasgi
from gunicorn.workers.gasgi import ASGIWorker
from prometheus_client import multiprocess

from .app import create_app
from .config import ServerConfig
from .downloadlog import DownloadLog, kinds
from .gateway import asgi_app
from .ingest import Elector, start_ingestion
from .live import close_all
from .logs import JsonLogger
from .registry import Registry
from .tlsauth import FrontDoorPeers, PeerProtocol

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3        # glibc <malloc.h>


def keep_block_memory(keep: int = 64 << 20, mmap_above: int = 4 << 20) -> None:
    """Let glibc's heap keep up to `keep` bytes of freed memory, and serve blocks up to
    `mmap_above` from it. Every download block (downloads.CHUNK) is a fresh 1 MiB bytes
    object; with glibc's adaptive defaults the heap gives that memory back and faults it in
    again on every request (docs/server.md has the measured cost). Called in the master, so
    every worker inherits it; a no-op on a C library without mallopt.
    """
    mallopt = getattr(ctypes.CDLL(None), "mallopt", None)
    if mallopt is not None:
        mallopt(M_TRIM_THRESHOLD, keep)
        mallopt(M_MMAP_THRESHOLD, mmap_above)


class FotaWorker(ASGIWorker):
    """gunicorn's ASGI worker; a stop also ends the dashboards' event streams at once, or the
    graceful stop would wait for them (they run in Flask threads) until the master kills it."""

    def handle_exit_signal(self) -> None:
        close_all()
        super().handle_exit_signal()

    def handle_quit_signal(self) -> None:
        close_all()
        super().handle_quit_signal()


class GunicornServer(BaseApplication):
    def __init__(self, config: ServerConfig) -> None:
        self._config = config
        super().__init__()

    def load_config(self) -> None:
        config = self._config
        # threads are a2wsgi's (gateway.py): gunicorn's ASGI worker would warn about its own setting
        settings = {"bind": config.bind, "worker_class": FotaWorker, "workers": config.workers,
                    "timeout": config.timeout, "keepalive": config.keepalive, "asgi_loop": "uvloop",
                    "asgi_lifespan": "off", "graceful_timeout": 5, "errorlog": "-", "logger_class": JsonLogger,
                    "preload_app": True,
                    # no gunicornc socket: every server on a host would share ~/.gunicorn/gunicorn.ctl
                    "control_socket_disable": True,
                    "post_worker_init": self._post_worker_init, "child_exit": self._child_exit}
        if config.gunicorn_tls:
            settings.update(self._tls_settings())
        if config.frontdoor_secret:
            # plain HTTP to the front door, whose word tlsauth.FrontDoorPeers checks by its secret: gunicorn
            # must not believe an X-Forwarded-Proto by the peer's address (by default from 127.0.0.1)
            settings["forwarded_allow_ips"] = ""
        for key, value in settings.items():
            self.cfg.set(key, value)

    def _tls_settings(self) -> dict:
        """HTTPS in gunicorn itself: our certificate, the lab CA for clients' certificates, which are
        optional at the handshake (a browser on the dashboard has none) and checked against the
        CRL; tlsauth.py decides per request. The worker's protocol puts the peer in the scope."""
        tls, crl = self._config.tls, self._config.tls_crl
        tls.check()
        gasgi.ASGIProtocol = PeerProtocol      # the one name gasgi's worker builds its protocol from
        return {"certfile": str(tls.cert), "keyfile": str(tls.key), "ca_certs": str(tls.ca),
                "cert_reqs": ssl.CERT_OPTIONAL,
                "ssl_context": lambda conf, default: tls.server_context(crl=crl, require_client=False)}

    def load(self):
        keep_block_memory()
        app = asgi_app(create_app(self._config), self._config.threads)
        # the front door's TLS: the client certificate it verified, as gunicorn's own TLS would give it
        return FrontDoorPeers(app, self._config.frontdoor_secret) if self._config.frontdoor_secret else app

    def _post_worker_init(self, worker) -> None:
        """Every worker competes for the ingest lock (ingest.py says why there), and for the
        download log's: one worker reads the front door's log (downloadlog.py)."""
        config = self._config
        if config.mqtt_host:
            start_ingestion(config, Registry(config.database))
        if config.download_log:
            reader = DownloadLog(config.download_log, config.data_dir / "metrics" / "download-log.offset",
                                 kinds(config.releases_dir / "index.json"))
            Elector(config.data_dir / "download-log.lock", reader.follow, name="download-log").start()

    @staticmethod
    def _child_exit(server, worker) -> None:
        """In the master: a dead worker's live gauges (downloads in flight) stop counting."""
        multiprocess.mark_process_dead(worker.pid)
