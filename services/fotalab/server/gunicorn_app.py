"""gunicorn embedded: gthread workers, JSON logs, the ingest elector in every worker.

gthread workers: a download occupies one thread, not a whole worker, and the worker's main
thread keeps heart-beating, so a transfer over a slow link that lasts longer than the worker
timeout is not killed (the default sync workers would kill it, and close every connection).
Keep-alive connections wait in the worker's poller, not in a thread.

The app is created once in the master (preload): every worker serves the same checked release
index, including workers started later. Nothing it holds is bound to a process: registry
connections open per thread on first use, metric values follow the pid.
"""
from __future__ import annotations

from concurrent import futures

from gunicorn.app.base import BaseApplication
from gunicorn.workers.gthread import ThreadWorker
from prometheus_client import multiprocess

from .app import create_app
from .config import ServerConfig
from .ingest import start_ingestion
from .live import close_all
from .logs import JsonLogger
from .registry import Registry


class SlowLinkThreadWorker(ThreadWorker):
    """gthread, with the lingering close of a finished connection moved off the main loop.

    gunicorn 27's gthread closes a non-keep-alive connection on its main thread with
    util.close_graceful: shut down writing, then read until the client closes, up to 2 s. A
    client on a slow link is still reading the response's tail out of the socket buffers then,
    so each such close blocks the main loop, which stops heart-beating: with a few slow
    downloads ending together the master kills the worker and every transfer in it (WORKER
    TIMEOUT; tests/integration/test_server_http.py shows it). Here those closes run in a
    thread pool of their own. On a stop signal the dashboards' streams end at once (live.py);
    everything else is gthread's.
    """

    def handle_exit(self, sig, frame) -> None:
        """SIGTERM (stop, restart): end the dashboards' event streams now, or the graceful stop
        would wait for them until the master kills the worker."""
        close_all()
        super().handle_exit(sig, frame)

    def handle_quit(self, sig, frame) -> None:
        close_all()
        super().handle_quit(sig, frame)

    def init_process(self) -> None:
        self._closer = futures.ThreadPoolExecutor(max_workers=self.cfg.threads, thread_name_prefix="close")
        super().init_process()

    def finish_request(self, conn, fs) -> None:
        close = conn.close

        def close_off_the_main_loop(graceful: bool = False) -> None:
            if graceful:
                self._closer.submit(close, True)
            else:
                close()
        conn.close = close_off_the_main_loop
        super().finish_request(conn, fs)


class GunicornServer(BaseApplication):
    def __init__(self, config: ServerConfig) -> None:
        self._config = config
        super().__init__()

    def load_config(self) -> None:
        config = self._config
        settings = {"bind": config.bind, "worker_class": SlowLinkThreadWorker, "workers": config.workers,
                    "threads": config.threads, "timeout": config.timeout, "keepalive": config.keepalive,
                    "graceful_timeout": 5, "errorlog": "-", "logger_class": JsonLogger, "preload_app": True,
                    # no gunicornc socket: every server on a host would share ~/.gunicorn/gunicorn.ctl
                    "control_socket_disable": True,
                    "post_worker_init": self._post_worker_init, "child_exit": self._child_exit}
        for key, value in settings.items():
            self.cfg.set(key, value)

    def load(self):
        return create_app(self._config)

    def _post_worker_init(self, worker) -> None:
        """Every worker competes for the ingest lock (ingest.py says why there)."""
        if self._config.mqtt_host:
            start_ingestion(self._config, Registry(self._config.database))

    @staticmethod
    def _child_exit(server, worker) -> None:
        """In the master: a dead worker's live gauges (downloads in flight) stop counting."""
        multiprocess.mark_process_dead(worker.pid)
