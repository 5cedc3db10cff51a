"""`fota-server`: the update server under gunicorn.

The master prepares what must exist once before workers fork: the data dir, the registry
schema, the API token, and an empty directory for the workers' metrics.
"""
from __future__ import annotations

import os
import sqlite3
import sys
from dataclasses import replace

from ..envconfig import ConfigError
from .auth import load_or_create_token
from .config import ServerConfig
from .registry import Registry

METRICS_ENV = "PROMETHEUS_MULTIPROC_DIR"     # prometheus_client reads it when server.metrics is imported


def prepare(config: ServerConfig) -> ServerConfig:
    """Create the data dir and schema; resolve the API token (printed once, when generated)."""
    if not (config.releases_dir / "index.json").is_file():
        raise ConfigError(f"no release index at {config.releases_dir}/index.json: run the signer first "
                          "(fota-signer) or point FOTA_RELEASES_DIR at its output")
    config.data_dir.mkdir(parents=True, exist_ok=True)
    if not os.access(config.data_dir, os.W_OK):
        raise ConfigError(f"data dir {config.data_dir} is not writable: mount a volume there or set FOTA_DATA_DIR")
    registry = Registry(config.database)
    registry.migrate()
    registry.forget_ingester()
    registry.close()
    if config.api_token:
        return config
    token, created = load_or_create_token(config.token_file)
    if created:
        print(f"fota-server: generated API token (shown once; stored in {config.token_file}, "
              f"or set FOTA_API_TOKEN): {token}", file=sys.stderr, flush=True)
    return replace(config, api_token=token)


def fresh_metrics_dir(config: ServerConfig) -> None:
    """Empty <data dir>/metrics (the workers' values, where the download log was read to) and
    point prometheus_client's multiprocess mode at it."""
    directory = config.data_dir / "metrics"
    directory.mkdir(parents=True, exist_ok=True)
    for stale in directory.iterdir():
        stale.unlink()
    os.environ[METRICS_ENV] = str(directory)


def main(argv: list[str] | None = None) -> int:
    try:
        config = prepare(ServerConfig.from_env())
        fresh_metrics_dir(config)
    except (ConfigError, OSError, RuntimeError, sqlite3.Error) as exc:
        print(f"fota-server: cannot start: {exc}", file=sys.stderr)
        return 2
    from .gunicorn_app import GunicornServer  # only now: prometheus_client reads METRICS_ENV at import
    GunicornServer(config).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
