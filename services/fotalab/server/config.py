"""Server settings: one dataclass, read from the environment only at the entry point."""
from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from ..envsecret import SecretFileError, read_secret


class ConfigError(ValueError):
    """A setting that cannot be used; the message names the variable and what it accepts."""


@dataclass(frozen=True)
class ServerConfig:
    releases_dir: Path = Path("/releases")
    data_dir: Path = Path("/var/lib/fotalab")     # the registry database and the generated API token
    default_release: str = "2.0.0"     # what a device is offered when nothing else is assigned
    bind: str = "0.0.0.0:8000"
    workers: int = 2
    threads: int = 32                  # Flask requests at once per worker (API, dashboard); downloads take none
    timeout: int = 30                  # gunicorn worker heartbeat timeout (s); the event loop beats during transfers
    keepalive: int = 5
    mqtt_host: str = ""                # empty: no MQTT ingestion (registry then only holds assignments)
    mqtt_port: int = 1883
    mqtt_username: str = ""
    mqtt_password: str = ""
    mqtt_client_id: str = "fotalab-server"   # one persistent session: the broker queues events while we are down
    api_token: str = ""                # empty: main() loads or generates one in data_dir
    streams: int = 8                   # dashboard event streams per worker, each holding a thread (live.py)
    stream_s: float = 300.0            # a stream ends after this long; the browser reconnects
    live_poll_s: float = 1.0           # how often a worker reads the registry's changes for its streams

    @property
    def database(self) -> Path:
        return self.data_dir / "registry.sqlite3"

    @property
    def stream_limit(self) -> int:
        """Streams per worker, at most half its threads: dashboards never starve the API."""
        return min(self.streams, self.threads // 2)

    @property
    def token_file(self) -> Path:
        return self.data_dir / "api-token"

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> ServerConfig:
        d = cls()

        def secret(name: str) -> str:
            try:
                return read_secret(env, name)
            except SecretFileError as exc:
                raise ConfigError(str(exc)) from None

        def number(name: str, default: int, minimum: int) -> int:
            raw = env.get(name, str(default))
            try:
                value = int(raw)
            except ValueError:
                raise ConfigError(f"{name} must be an integer, got {raw!r}") from None
            if value < minimum:
                raise ConfigError(f"{name} must be at least {minimum}, got {value}")
            return value

        return cls(releases_dir=Path(env.get("FOTA_RELEASES_DIR", d.releases_dir)),
                   data_dir=Path(env.get("FOTA_DATA_DIR", d.data_dir)),
                   default_release=env.get("FOTA_DEFAULT_RELEASE", d.default_release),
                   bind=env.get("FOTA_SERVER_BIND", d.bind),
                   workers=number("FOTA_SERVER_WORKERS", d.workers, 1),
                   threads=number("FOTA_SERVER_THREADS", d.threads, 1),
                   timeout=number("FOTA_SERVER_TIMEOUT", d.timeout, 1),
                   keepalive=number("FOTA_SERVER_KEEPALIVE", d.keepalive, 0),
                   mqtt_host=env.get("FOTA_MQTT_HOST", d.mqtt_host),
                   mqtt_port=number("FOTA_MQTT_PORT", d.mqtt_port, 1),
                   mqtt_username=env.get("FOTA_MQTT_USERNAME", d.mqtt_username),
                   mqtt_password=secret("FOTA_MQTT_PASSWORD"),
                   mqtt_client_id=env.get("FOTA_MQTT_CLIENT_ID", d.mqtt_client_id),
                   api_token=env.get("FOTA_API_TOKEN", d.api_token),
                   streams=number("FOTA_SERVER_STREAMS", d.streams, 0))
