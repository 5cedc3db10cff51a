"""Device settings: one dataclass, read from the environment only at the entry point."""
from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from pathlib import Path

from ..envsecret import read_secret
from .flash import FaultPlan


def provisioned_password(credentials_dir: Path, username: str) -> str:
    """The password the lab's provisioner made for this device, if it made one."""
    path = credentials_dir / f"{username}.password"
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
    boot_limit: int = 3                # trial boots the firmware may fail before the bootloader reverts
    power_cut_limit: int = 10          # trial boots cut by power loss before it reverts all the same
    watchdog_s: float = 15.0           # no kick for this long resets the firmware
    reset_delay_s: float = 1.0         # pause after a crash before the next boot
    health_timeout_s: float = 30.0     # trial health check: broker and server must answer within
    trial_soak_s: float = 5.0          # and the firmware must then stay up this long
    chunk_size: int = 64 * 1024
    http_timeout_s: float = 10.0
    link_kbps: float = 0.0             # simulated link speed; 0 = as fast as the network allows
    min_rate_bps: float = 32.0         # a transfer slower than this over rate_window_s is retried
    rate_window_s: float = 30.0
    patch_memory_mb: int = 512
    patch_timeout_s: float = 120.0
    flash_writeback: bool = False
    flash_fault: FaultPlan | None = None
    flash_oplog: Path | None = None

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
    def from_env(cls, env: os._Environ | dict = os.environ) -> DeviceConfig:
        def get(name: str, default: object) -> str:
            return env.get(f"FOTA_{name}", str(default))
        defaults = cls(device_id="")
        username = get("MQTT_USERNAME", get("DEVICE_ID", socket.gethostname()))
        fault, oplog = env.get("FOTA_FLASH_FAULT"), env.get("FOTA_FLASH_OPLOG")
        return cls(
            device_id=get("DEVICE_ID", socket.gethostname()),
            hardware=get("HARDWARE", defaults.hardware),
            group=get("DEVICE_GROUP", defaults.group),
            flash_dir=Path(get("FLASH_DIR", defaults.flash_dir)),
            factory_dir=Path(get("FACTORY_DIR", defaults.factory_dir)),
            mqtt_host=get("MQTT_HOST", defaults.mqtt_host),
            mqtt_port=int(get("MQTT_PORT", defaults.mqtt_port)),
            mqtt_username=username,
            mqtt_password=read_secret(env, "FOTA_MQTT_PASSWORD") or provisioned_password(
                Path(get("CREDENTIALS_DIR", "/credentials")), username),
            server_url=get("SERVER_URL", defaults.server_url),
            boot_limit=int(get("BOOT_LIMIT", defaults.boot_limit)),
            power_cut_limit=int(get("POWER_CUT_LIMIT", defaults.power_cut_limit)),
            watchdog_s=float(get("WATCHDOG_S", defaults.watchdog_s)),
            reset_delay_s=float(get("RESET_DELAY_S", defaults.reset_delay_s)),
            health_timeout_s=float(get("HEALTH_TIMEOUT_S", defaults.health_timeout_s)),
            trial_soak_s=float(get("TRIAL_SOAK_S", defaults.trial_soak_s)),
            chunk_size=int(get("CHUNK_SIZE", defaults.chunk_size)),
            http_timeout_s=float(get("HTTP_TIMEOUT_S", defaults.http_timeout_s)),
            link_kbps=float(get("LINK_KBPS", defaults.link_kbps)),
            min_rate_bps=float(get("MIN_RATE_BPS", defaults.min_rate_bps)),
            rate_window_s=float(get("RATE_WINDOW_S", defaults.rate_window_s)),
            patch_memory_mb=int(get("PATCH_MEMORY_MB", defaults.patch_memory_mb)),
            patch_timeout_s=float(get("PATCH_TIMEOUT_S", defaults.patch_timeout_s)),
            flash_writeback=get("FLASH_WRITEBACK", "0") not in ("0", "", "false", "no"),
            flash_fault=FaultPlan.parse(fault) if fault else None,
            flash_oplog=Path(oplog) if oplog else None,
        )
