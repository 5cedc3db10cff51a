"""Front door settings: one dataclass, read from the environment only at the entry point."""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from ..envconfig import ConfigError, Env
from ..tlsfiles import TlsFiles

# what the secret may hold: it is written into nginx's configuration inside double quotes, where
# `$` would start a variable and `"` or `\` would change the string
SECRET = re.compile(r"[A-Za-z0-9._~+/=-]{16,}")
SECRET_HELP = ("the file holds the secret the front door shows the server with every proxied request "
               "(16 or more of A-Z a-z 0-9 . _ ~ + / = -; fota-provision writes one); the server reads the same file")


@dataclass(frozen=True)
class FrontDoorConfig:
    listen: str = "0.0.0.0:8000"       # where devices, the dashboard and the API reach the lab
    upstream: str = "server:8000"      # the update server (gunicorn) behind it: everything but artifacts
    releases_dir: Path = Path("/releases")   # the signer's store: artifacts/<sha256> is served from here
    # one JSON line per artifact download it serves; the server reads it for its download metrics
    download_log: Path = Path("/var/log/fotalab-frontdoor/downloads.log")
    run_dir: Path = Path("/tmp/fotalab-frontdoor")   # nginx's pid file, its configuration and temp files
    # how often the upstream's name is looked up again: nginx reloads when its address changed (a
    # server container restarted by a chaos run may come back at another address), or the CRL did
    recheck_s: float = 5.0
    workers: int = 0                   # nginx worker processes; 0: one per core
    connections: int = 4096            # connections per worker (devices hold one each while they download)
    # FOTA_TLS_CA/CERT/KEY: HTTPS with this certificate; client certificates verified against the CA
    tls: TlsFiles | None = None
    tls_crl: Path | None = None        # FOTA_TLS_CRL: certificates on it are refused (nginx reloads as it changes)
    # FOTA_FRONTDOOR_SECRET_FILE (read only with TLS): sent to the server with every proxied request,
    # so that it believes the client identity the door verified (and nobody else who sets the headers)
    secret: str = field(default="", repr=False)

    @classmethod
    def from_env(cls, env: Env | None = None) -> FrontDoorConfig:
        env = env or Env()
        d = cls()
        tls = TlsFiles.from_env(env)
        config = cls(listen=env.text("FOTA_FRONTDOOR_LISTEN", d.listen),
                     upstream=env.text("FOTA_FRONTDOOR_UPSTREAM", d.upstream),
                     releases_dir=env.path("FOTA_RELEASES_DIR", d.releases_dir),
                     download_log=env.path("FOTA_DOWNLOAD_LOG", d.download_log),
                     run_dir=env.path("FOTA_FRONTDOOR_RUN_DIR", d.run_dir),
                     recheck_s=env.number("FOTA_FRONTDOOR_RECHECK_S", d.recheck_s, minimum=0.1, maximum=3600),
                     workers=env.integer("FOTA_FRONTDOOR_WORKERS", d.workers, minimum=0, maximum=64),
                     connections=env.integer("FOTA_FRONTDOOR_CONNECTIONS", d.connections, minimum=64,
                                             maximum=65536),
                     # without TLS (no FOTA_TLS_CA, or FOTA_PLAINTEXT=1) there is no CRL to check, and
                     # the door vouches for no one
                     tls=tls, tls_crl=env.optional_path("FOTA_TLS_CRL") if tls else None,
                     secret=env.secret("FOTA_FRONTDOOR_SECRET") if tls else "")
        for name, value in (("FOTA_FRONTDOOR_LISTEN", config.listen), ("FOTA_FRONTDOOR_UPSTREAM", config.upstream)):
            host, _, port = value.rpartition(":")
            if not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ConfigError(f"{name}={value!r} is not HOST:PORT; use e.g. 0.0.0.0:8000 or server:8000")
        config.check_tls(env.raw("FOTA_FRONTDOOR_SECRET_FILE"))
        return config

    def check_tls(self, secret_file: str | None) -> None:
        """HTTPS needs the door's own certificate, and a secret to vouch for clients with."""
        source = f"FOTA_FRONTDOOR_SECRET_FILE={secret_file}" if secret_file else "FOTA_FRONTDOOR_SECRET"
        if self.tls and not (self.tls.cert and self.tls.key):
            raise ConfigError("with FOTA_TLS_CA the front door serves HTTPS: set FOTA_TLS_CERT and FOTA_TLS_KEY "
                              "to its certificate (cert.pem, with the lab's server names) and key.pem")
        if self.tls and not self.secret:
            problem = f"{source} is empty" if secret_file else "FOTA_FRONTDOOR_SECRET_FILE is not set"
            raise ConfigError(f"{problem}: with TLS the front door passes the verified client identity on to the "
                              "server, and needs its secret; " + SECRET_HELP)
        if self.secret and not SECRET.fullmatch(self.secret):
            raise ConfigError(f"the front door's secret ({source}) is not usable: " + SECRET_HELP)
