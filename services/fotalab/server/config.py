"""Server settings: one dataclass, read from the environment only at the entry point."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..envconfig import ConfigError, Env
from ..tlsfiles import TlsFiles, mqtt_port


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
    tls: TlsFiles | None = None        # FOTA_TLS_*: HTTPS with this certificate, MQTT over TLS as its identity
    # FOTA_FRONTDOOR_SECRET_FILE (read only with TLS): TLS terminates at the front door, which
    # vouches for the client's certificate with this secret (tlsauth.FrontDoorPeers); gunicorn then
    # serves plain HTTP and the TLS files are for MQTT (and the CRL) only
    frontdoor_secret: str = field(default="", repr=False)
    tls_crl: Path | None = None        # FOTA_TLS_CRL: client certificates on it are refused (re-read as it changes)
    ddi_tenant: str = "DEFAULT"        # hawkBit DDI: the tenant in /{tenant}/controller/v1/... (ddi.py)
    ddi_poll_s: int = 10               # DDI: config.polling.sleep told to every controller
    ddi_gateway_token: str = ""        # DDI: a GatewayToken for the whole tenant; empty: TargetTokens only
    public_url: str = ""               # absolute base of links handed to clients (DDI); empty: the request's host
    # the front door's download log (nginx serves the artifacts there): read into the download metrics
    download_log: Path | None = None

    @property
    def database(self) -> Path:
        return self.data_dir / "registry.sqlite3"

    @property
    def stream_limit(self) -> int:
        """Streams per worker, at most half its threads: dashboards never starve the API."""
        return min(self.streams, self.threads // 2)

    @property
    def ddi_seen_s(self) -> int:
        """How stale a DDI controller's last_seen may get: a poll writes it at most this often (one
        SQLite write per poll would serialise every worker at 1,000 polls a second)."""
        return max(self.ddi_poll_s, 10)

    @property
    def ddi_offline_s(self) -> int:
        """A controller silent this long is offline (three missed polls, and never below ddi_seen_s)."""
        return 3 * self.ddi_seen_s

    @property
    def ddi_sleep(self) -> str:
        """config.polling.sleep as hawkBit writes it: HH:MM:SS."""
        return f"{self.ddi_poll_s // 3600:02d}:{self.ddi_poll_s // 60 % 60:02d}:{self.ddi_poll_s % 60:02d}"

    @property
    def gunicorn_tls(self) -> bool:
        """gunicorn terminates TLS itself: TLS files, and no front door in front that does."""
        return self.tls is not None and not self.frontdoor_secret

    @property
    def token_file(self) -> Path:
        return self.data_dir / "api-token"

    @classmethod
    def from_env(cls, env: Env | None = None) -> ServerConfig:
        """Every FOTA_* setting of the server, validated (a bad one is a ConfigError naming it)."""
        env = env or Env()
        d = cls()
        tls = TlsFiles.from_env(env)
        config = cls(releases_dir=env.path("FOTA_RELEASES_DIR", d.releases_dir),
                     data_dir=env.path("FOTA_DATA_DIR", d.data_dir),
                     default_release=env.text("FOTA_DEFAULT_RELEASE", d.default_release),
                     bind=env.text("FOTA_SERVER_BIND", d.bind),
                     workers=env.integer("FOTA_SERVER_WORKERS", d.workers, minimum=1),
                     threads=env.integer("FOTA_SERVER_THREADS", d.threads, minimum=1),
                     timeout=env.integer("FOTA_SERVER_TIMEOUT", d.timeout, minimum=1),
                     keepalive=env.integer("FOTA_SERVER_KEEPALIVE", d.keepalive, minimum=0),
                     mqtt_host=env.text("FOTA_MQTT_HOST", d.mqtt_host),
                     mqtt_port=mqtt_port(env, tls),
                     mqtt_username=env.text("FOTA_MQTT_USERNAME", d.mqtt_username),
                     mqtt_password=env.secret("FOTA_MQTT_PASSWORD"),
                     mqtt_client_id=env.text("FOTA_MQTT_CLIENT_ID", d.mqtt_client_id),
                     api_token=env.secret("FOTA_API_TOKEN"),
                     tls=tls, tls_crl=env.optional_path("FOTA_TLS_CRL"),
                     streams=env.integer("FOTA_SERVER_STREAMS", d.streams, minimum=0),
                     ddi_tenant=env.text("FOTA_DDI_TENANT", d.ddi_tenant),
                     ddi_poll_s=env.integer("FOTA_DDI_POLL_S", d.ddi_poll_s, minimum=1, maximum=24 * 3600 - 1),
                     ddi_gateway_token=env.secret("FOTA_DDI_GATEWAY_TOKEN"),
                     public_url=env.text("FOTA_PUBLIC_URL", d.public_url).rstrip("/"),
                     download_log=env.optional_path("FOTA_DOWNLOAD_LOG"),
                     # without TLS files (no FOTA_TLS_CA, or FOTA_PLAINTEXT=1) the door vouches for no one
                     frontdoor_secret=env.secret("FOTA_FRONTDOOR_SECRET") if tls else "")
        secret_file = env.raw("FOTA_FRONTDOOR_SECRET_FILE")
        if tls and (secret_file or config.frontdoor_secret) and len(config.frontdoor_secret) < 16:
            raise ConfigError(f"the front door's secret ({secret_file or 'FOTA_FRONTDOOR_SECRET'}) is empty or shorter "
                              "than 16 characters: mount the file fota-provision writes, the one the front door reads")
        return config
