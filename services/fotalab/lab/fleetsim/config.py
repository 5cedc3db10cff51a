"""The fleet simulator's settings: one dataclass, read from the environment at the entry point."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ...envconfig import Env
from ..provision import SIM_SECRET, sim_device_id

PATCH_MODES = ("cached", "inprocess")


@dataclass(frozen=True)
class FleetSimConfig:
    devices: int = 100
    first: int = 1                      # number of the first virtual device: sim-00001
    hardware: str = "fotalab-m4"
    group: str = "sim"                  # the group the virtual devices report (rollouts select it)
    flash_dir: Path = Path("/fleetsim")    # one directory per device under it (a tmpfs or a volume)
    factory_dir: Path = Path("/releases/factory")
    mqtt_host: str = "mosquitto"
    mqtt_port: int = 1883
    secret: str = field(default="", repr=False)      # the provisioner's fleetsim.secret (passwords derive from it)
    server_url: str = "http://server:8000"
    processes: int = 0                  # processes sharing the devices (0: two per core, per 1,000 devices at most)
    workers: int = 1                    # threads doing engine work (flash, verification, HTTP) in each process
    connects: int = 32                  # MQTT handshakes under way at once in each process
    gil_switch_ms: float = 0.5          # sys.setswitchinterval: how soon a busy engine thread yields to the loop
    power_on_rate: float = 200.0        # devices powered on per second at start (a boot storm has a ramp)
    keepalive_s: int = 60
    boot_limit: int = 3
    power_cut_limit: int = 10
    trial_soak_s: float = 5.0
    health_timeout_s: float = 30.0
    watchdog_s: float = 15.0
    reset_delay_s: float = 1.0
    chunk_size: int = 64 * 1024
    http_timeout_s: float = 10.0
    flash_writeback: bool = True        # unsynced writes live in the process: a cut loses them
    patch: str = "cached"               # "cached": one apply per (base, delta) pair; "inprocess": every time
    cut_share: float = 0.0              # share of devices whose power is cut once in the middle of an update
    cut_every_s: float = 0.0            # besides: cut a random powered device this often (0: never)
    off_s: float = 2.0                  # a cut device stays off for a random time up to this
    seed: int = 1
    status_file: Path = Path("/tmp/fotalab-fleetsim.json")

    def device_id(self, index: int) -> str:
        return sim_device_id(self.first + index)

    @classmethod
    def from_env(cls, env: Env | None = None) -> FleetSimConfig:
        """Every FOTA_SIM_* setting (and the device's FOTA_* ones it shares), validated."""
        env = env or Env()
        d = cls()
        secret = env.secret("FOTA_SIM_SECRET")
        if not secret:
            path = env.path("FOTA_SIM_CREDENTIALS_DIR", "/fleetsim-credentials") / SIM_SECRET
            secret = path.read_text().strip() if path.exists() else ""
        return cls(
            devices=env.integer("FOTA_SIM_DEVICES", d.devices, minimum=0, maximum=99_999),
            first=env.integer("FOTA_SIM_FIRST", d.first, minimum=1, maximum=99_999),
            hardware=env.text("FOTA_HARDWARE", d.hardware),
            group=env.text("FOTA_SIM_GROUP", d.group),
            flash_dir=env.path("FOTA_SIM_FLASH_DIR", d.flash_dir),
            factory_dir=env.path("FOTA_FACTORY_DIR", d.factory_dir),
            mqtt_host=env.text("FOTA_MQTT_HOST", d.mqtt_host),
            mqtt_port=env.integer("FOTA_MQTT_PORT", d.mqtt_port, minimum=1, maximum=65535),
            secret=secret,
            server_url=env.text("FOTA_SERVER_URL", d.server_url),
            processes=env.integer("FOTA_SIM_PROCESSES", d.processes, minimum=0, maximum=64),
            workers=env.integer("FOTA_SIM_WORKERS", d.workers, minimum=1, maximum=256),
            connects=env.integer("FOTA_SIM_CONNECTS", d.connects, minimum=1, maximum=10_000),
            gil_switch_ms=env.number("FOTA_SIM_GIL_SWITCH_MS", d.gil_switch_ms, minimum=0.05, maximum=100),
            power_on_rate=env.number("FOTA_SIM_POWER_ON_RATE", d.power_on_rate, minimum=1),
            keepalive_s=env.integer("FOTA_SIM_KEEPALIVE_S", d.keepalive_s, minimum=5, maximum=3600),
            boot_limit=env.integer("FOTA_BOOT_LIMIT", d.boot_limit, minimum=1),
            power_cut_limit=env.integer("FOTA_POWER_CUT_LIMIT", d.power_cut_limit, minimum=1),
            trial_soak_s=env.number("FOTA_TRIAL_SOAK_S", d.trial_soak_s, minimum=0),
            health_timeout_s=env.number("FOTA_HEALTH_TIMEOUT_S", d.health_timeout_s, minimum=0),
            watchdog_s=env.number("FOTA_WATCHDOG_S", d.watchdog_s, minimum=0.1),
            reset_delay_s=env.number("FOTA_RESET_DELAY_S", d.reset_delay_s, minimum=0),
            chunk_size=env.integer("FOTA_CHUNK_SIZE", d.chunk_size, minimum=256),
            http_timeout_s=env.number("FOTA_HTTP_TIMEOUT_S", d.http_timeout_s, minimum=0.1),
            flash_writeback=env.flag("FOTA_FLASH_WRITEBACK", d.flash_writeback),
            patch=env.choice("FOTA_SIM_PATCH", d.patch, PATCH_MODES),
            cut_share=env.number("FOTA_SIM_CUT_SHARE", d.cut_share, minimum=0, maximum=1),
            cut_every_s=env.number("FOTA_SIM_CUT_EVERY_S", d.cut_every_s, minimum=0),
            off_s=env.number("FOTA_SIM_OFF_S", d.off_s, minimum=0),
            seed=env.integer("FOTA_SIM_SEED", d.seed),
            status_file=env.path("FOTA_SIM_STATUS_FILE", d.status_file),
        )
