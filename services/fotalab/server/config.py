"""Server settings: one dataclass, read from the environment only at the entry point."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ServerConfig:
    releases_dir: Path = Path("/releases")
    default_release: str = "2.0.0"     # what a device is offered when nothing else is assigned
    bind: str = "0.0.0.0:8000"
    workers: int = 2
    threads: int = 8

    @classmethod
    def from_env(cls) -> "ServerConfig":
        d = cls()
        env = os.environ
        return cls(releases_dir=Path(env.get("FOTA_RELEASES_DIR", d.releases_dir)),
                   default_release=env.get("FOTA_DEFAULT_RELEASE", d.default_release),
                   bind=env.get("FOTA_SERVER_BIND", d.bind),
                   workers=int(env.get("FOTA_SERVER_WORKERS", d.workers)),
                   threads=int(env.get("FOTA_SERVER_THREADS", d.threads)))
