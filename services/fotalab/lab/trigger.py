"""`fota-trigger` (and the seed's scripts/mqtt_trigger.py): ask devices to check for an update.

The command is only a hint: each device asks the server for its signed assignment and
installs nothing that is not signed and meant for it.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

from ..envconfig import ConfigError, Env
from ..protocol import Command
from ..tlsfiles import TlsFiles, mqtt_port
from .fleetwatch import FleetWatcher
from .provision import SERVER


@dataclass(frozen=True)
class TriggerConfig:
    """Where fota-trigger sends commands, as whom; its flags default to these."""
    mqtt_host: str = "localhost"
    mqtt_port: int = 1883
    mqtt_username: str = SERVER
    mqtt_password: str = ""
    password_file: Path = Path(f"/credentials/{SERVER}/password")
    tls: TlsFiles | None = None        # FOTA_TLS_*: over TLS, as the certificate's identity (no password)

    @classmethod
    def from_env(cls, env: Env | None = None) -> TriggerConfig:
        env = env or Env()
        d = cls()
        tls = TlsFiles.from_env(env)
        return cls(mqtt_host=env.text("FOTA_MQTT_HOST", d.mqtt_host), mqtt_port=mqtt_port(env, tls),
                   mqtt_username=env.text("FOTA_MQTT_USERNAME", d.mqtt_username),
                   mqtt_password=env.text("FOTA_MQTT_PASSWORD", ""),
                   password_file=env.path("FOTA_MQTT_PASSWORD_FILE", d.password_file),
                   tls=tls)


def main(argv: list[str] | None = None) -> int:
    try:
        config = TriggerConfig.from_env()
    except ConfigError as exc:
        print(f"fota-trigger: {exc}", file=sys.stderr)
        return 2
    parser = argparse.ArgumentParser(prog="fota-trigger", description=__doc__)
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("devices", nargs="*", default=[], help="device ids, e.g. device-1")
    target.add_argument("--all", action="store_true", help="every device of the fleet")
    parser.add_argument("--host", default=config.mqtt_host)
    parser.add_argument("--port", type=int, default=config.mqtt_port)
    parser.add_argument("--command", default=Command.UPDATE.value, choices=[c.value for c in Command])
    parser.add_argument("--username", default=config.mqtt_username,
                        help="MQTT identity allowed to send commands (default: the server's)")
    parser.add_argument("--password-file", type=Path,
                        default=config.password_file,
                        help="file holding that identity's password (inside the lab: /credentials/...)")
    args = parser.parse_args(argv)
    if not args.all and not args.devices:
        parser.error("name at least one device (e.g. device-1) or use --all")
    password = "" if config.tls else config.mqtt_password or (
        args.password_file.read_text().strip() if args.password_file.exists() else "")
    try:
        watcher = FleetWatcher(args.host, args.port, username="" if config.tls else args.username,
                               password=password, tls=config.tls)
    except (OSError, ConnectionRefusedError) as exc:
        print(f"fota-trigger: cannot reach the MQTT broker at {args.host}:{args.port} ({exc}); "
              "is the lab up (docker compose ps)?", file=sys.stderr)
        return 1
    with watcher:
        watcher.command(None if args.all else args.devices, {"cmd": args.command})
    print(f"sent {args.command!r} to {'all devices' if args.all else ', '.join(args.devices)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
