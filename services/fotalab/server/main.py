"""`fota-server`: the update server under gunicorn.

gthread workers: a slow download occupies one thread, not a whole worker, and the worker
keeps heart-beating, so a transfer over a slow link is not killed after the 30 s timeout
that would end it under the default sync workers.
"""
from __future__ import annotations

import sys

from gunicorn.app.base import BaseApplication

from .app import create_app
from .config import ServerConfig


class GunicornServer(BaseApplication):
    def __init__(self, config: ServerConfig) -> None:
        self._config = config
        super().__init__()

    def load_config(self) -> None:
        for key, value in {"bind": self._config.bind, "worker_class": "gthread",
                           "workers": self._config.workers, "threads": self._config.threads,
                           "accesslog": "-", "errorlog": "-", "keepalive": 5, "timeout": 30,
                           "graceful_timeout": 5}.items():
            self.cfg.set(key, value)

    def load(self):
        return create_app(self._config)


def main(argv: list[str] | None = None) -> int:
    GunicornServer(ServerConfig.from_env()).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
