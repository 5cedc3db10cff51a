"""Device settings: one dataclass, read from the environment only at the entry point."""
from __future__ import annotations

import socket
from dataclasses import dataclass
from pathlib import Path

from ..envconfig import Env
from ..protocol import ResetReason
from ..tlsfiles import TlsFiles, mqtt_port, server_url
from .flash import FaultPlan

# Variables renamed, current name -> the old one users may still set.
RENAMED = {"FOTA_RADIO_KBPS": "FOTA_LINK_KBPS"}   # the device's radio, not the link proxy (FOTA_LINK_*)


def provisioned_password(path: Path) -> str:
    """The password the lab's provisioner made for this device, if it made one."""
    return path.read_text().strip() if path.exists() else ""


@dataclass(frozen=True)
class DeviceConfig:
    device_id: str
    hardware: str = "fotalab-m4"
    group: str = ""                    # a rollout can select devices by it (e.g. "lab", "field")
    flash_dir: Path = Path("/data")
    factory_dir: Path = Path("/releases/factory")
    mqtt_host: str = "mosquitto"
    mqtt_port: int = 1883
    mqtt_username: str = ""
    mqtt_password: str = ""
    server_url: str = "http://server:8000"
    tls: TlsFiles | None = None        # FOTA_TLS_CA/CERT/KEY: MQTT over TLS and HTTPS, as this certificate's identity
    boot_limit: int = 3                # trial boots the firmware may fail before the bootloader reverts
    power_cut_limit: int = 10          # trial boots cut by power loss before it reverts all the same
    watchdog_s: float = 15.0           # no kick for this long resets the firmware
    reset_delay_s: float = 1.0         # pause after a crash before the next boot
    health_timeout_s: float = 30.0     # trial health check: broker and server must answer within
    trial_soak_s: float = 5.0          # and the firmware must then stay up this long
    chunk_size: int = 64 * 1024
    http_timeout_s: float = 10.0
    radio_kbps: float = 0.0            # the device paces its own reads to this radio speed; 0 = unpaced
    min_rate_bps: float = 32.0         # a transfer slower than this over rate_window_s is retried
    rate_window_s: float = 30.0
    patch_memory_mb: int = 512
    patch_timeout_s: float = 120.0
    flash_writeback: bool = False
    flash_fault: FaultPlan | None = None
    flash_oplog: Path | None = None
    # What the supervisor hands the firmware process it boots, as a reset circuit would:
    reset_reason: str = ResetReason.POWER_ON
    watchdog_fd: int | None = None     # pipe end the firmware kicks
    supervisor_pid: int | None = None  # a power cut in a flash fault takes the supervisor along

    @property
    def alive_file(self) -> Path:
        """Touched on every watchdog kick; outside the flash, it does not survive power-off."""
        return Path(f"/tmp/fota-alive-{self.device_id}")

    @property
    def factory_image(self) -> Path:
        return self.factory_dir / f"{self.hardware}.img"

    @property
    def trust_anchor(self) -> Path:
        return self.factory_dir / "trust.pem"

    @classmethod
    def from_env(cls, env: Env | None = None) -> DeviceConfig:
        """Every FOTA_* setting of a device, validated (a bad one is a ConfigError naming it)."""
        env = (env or Env()).renaming(RENAMED)
        d = cls(device_id="")
        device_id = env.text("FOTA_DEVICE_ID", socket.gethostname())
        username = env.text("FOTA_MQTT_USERNAME", device_id)
        tls = TlsFiles.from_env(env)
        password_file = env.optional_path("FOTA_MQTT_PASSWORD_FILE") or \
            env.path("FOTA_CREDENTIALS_DIR", "/credentials") / username / "password"
        return cls(
            device_id=device_id,
            hardware=env.text("FOTA_HARDWARE", d.hardware),
            group=env.text("FOTA_DEVICE_GROUP", d.group),
            flash_dir=env.path("FOTA_FLASH_DIR", d.flash_dir),
            factory_dir=env.path("FOTA_FACTORY_DIR", d.factory_dir),
            mqtt_host=env.text("FOTA_MQTT_HOST", d.mqtt_host),
            mqtt_port=mqtt_port(env, tls),
            mqtt_username=username,
            mqtt_password=env.secret("FOTA_MQTT_PASSWORD") or provisioned_password(password_file),
            server_url=server_url(env, "FOTA_SERVER_URL", d.server_url),
            tls=tls,
            boot_limit=env.integer("FOTA_BOOT_LIMIT", d.boot_limit, minimum=1),
            power_cut_limit=env.integer("FOTA_POWER_CUT_LIMIT", d.power_cut_limit, minimum=1),
            watchdog_s=env.number("FOTA_WATCHDOG_S", d.watchdog_s, minimum=0.1),
            reset_delay_s=env.number("FOTA_RESET_DELAY_S", d.reset_delay_s, minimum=0),
            health_timeout_s=env.number("FOTA_HEALTH_TIMEOUT_S", d.health_timeout_s, minimum=0),
            trial_soak_s=env.number("FOTA_TRIAL_SOAK_S", d.trial_soak_s, minimum=0),
            chunk_size=env.integer("FOTA_CHUNK_SIZE", d.chunk_size, minimum=256),
            http_timeout_s=env.number("FOTA_HTTP_TIMEOUT_S", d.http_timeout_s, minimum=0.1),
            radio_kbps=env.number("FOTA_RADIO_KBPS", d.radio_kbps, minimum=0),
            min_rate_bps=env.number("FOTA_MIN_RATE_BPS", d.min_rate_bps, minimum=0),
            rate_window_s=env.number("FOTA_RATE_WINDOW_S", d.rate_window_s, minimum=1),
            patch_memory_mb=env.integer("FOTA_PATCH_MEMORY_MB", d.patch_memory_mb, minimum=16),
            patch_timeout_s=env.number("FOTA_PATCH_TIMEOUT_S", d.patch_timeout_s, minimum=1),
            flash_writeback=env.flag("FOTA_FLASH_WRITEBACK", d.flash_writeback),
            flash_fault=env.parsed("FOTA_FLASH_FAULT", FaultPlan.parse, "a flash fault MODE@N"),
            flash_oplog=env.optional_path("FOTA_FLASH_OPLOG"),
            reset_reason=env.text("FOTA_RESET_REASON", d.reset_reason),
            watchdog_fd=env.parsed("FOTA_WATCHDOG_FD", int, "a file descriptor number"),
            supervisor_pid=env.parsed("FOTA_SUPERVISOR_PID", int, "a process id"),
        )
