"""Front door settings: one dataclass, read from the environment only at the entry point."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..envconfig import ConfigError, Env


@dataclass(frozen=True)
class FrontDoorConfig:
    listen: str = "0.0.0.0:8000"       # where devices, the dashboard and the API reach the lab
    upstream: str = "server:8000"      # the update server (gunicorn) behind it: everything but artifacts
    releases_dir: Path = Path("/releases")   # the signer's store: artifacts/<sha256> is served from here
    # one JSON line per artifact download it serves; the server reads it for its download metrics
    download_log: Path = Path("/var/log/fotalab-frontdoor/downloads.log")
    run_dir: Path = Path("/tmp/fotalab-frontdoor")   # nginx's pid file, its configuration and temp files
    # how often the upstream's name is looked up again: nginx reloads when its address changed (a
    # server container restarted by a chaos run may come back at another address)
    recheck_s: float = 5.0
    workers: int = 0                   # nginx worker processes; 0: one per core
    connections: int = 4096            # connections per worker (devices hold one each while they download)

    @classmethod
    def from_env(cls, env: Env | None = None) -> FrontDoorConfig:
        env = env or Env()
        d = cls()
        config = cls(listen=env.text("FOTA_FRONTDOOR_LISTEN", d.listen),
                     upstream=env.text("FOTA_FRONTDOOR_UPSTREAM", d.upstream),
                     releases_dir=env.path("FOTA_RELEASES_DIR", d.releases_dir),
                     download_log=env.path("FOTA_DOWNLOAD_LOG", d.download_log),
                     run_dir=env.path("FOTA_FRONTDOOR_RUN_DIR", d.run_dir),
                     recheck_s=env.number("FOTA_FRONTDOOR_RECHECK_S", d.recheck_s, minimum=0.1, maximum=3600),
                     workers=env.integer("FOTA_FRONTDOOR_WORKERS", d.workers, minimum=0, maximum=64),
                     connections=env.integer("FOTA_FRONTDOOR_CONNECTIONS", d.connections, minimum=64,
                                             maximum=65536))
        for name, value in (("FOTA_FRONTDOOR_LISTEN", config.listen), ("FOTA_FRONTDOOR_UPSTREAM", config.upstream)):
            host, _, port = value.rpartition(":")
            if not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ConfigError(f"{name}={value!r} is not HOST:PORT; use e.g. 0.0.0.0:8000 or server:8000")
        return config
