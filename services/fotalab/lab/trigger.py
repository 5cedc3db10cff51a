"""`fota-trigger` (and the seed's scripts/mqtt_trigger.py): ask devices to check for an update.

The command is only a hint: each device asks the server for its signed assignment and
installs nothing that is not signed and meant for it.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from .fleetwatch import FleetWatcher
from .provision import SERVER


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fota-trigger", description=__doc__)
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("devices", nargs="*", default=[], help="device ids, e.g. device-1")
    target.add_argument("--all", action="store_true", help="every device of the fleet")
    parser.add_argument("--host", default=os.environ.get("FOTA_MQTT_HOST", "localhost"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("FOTA_MQTT_PORT", "1883")))
    parser.add_argument("--command", default="update", choices=("update", "check", "report"))
    parser.add_argument("--username", default=os.environ.get("FOTA_MQTT_USERNAME", SERVER),
                        help="MQTT identity allowed to send commands (default: the server's)")
    parser.add_argument("--password-file", type=Path,
                        default=Path(os.environ.get("FOTA_MQTT_PASSWORD_FILE", f"/credentials/{SERVER}.password")),
                        help="file holding that identity's password (inside the lab: /credentials/...)")
    args = parser.parse_args(argv)
    if not args.all and not args.devices:
        parser.error("name at least one device (e.g. device-1) or use --all")
    password = os.environ.get("FOTA_MQTT_PASSWORD") or (
        args.password_file.read_text().strip() if args.password_file.exists() else "")
    try:
        watcher = FleetWatcher(args.host, args.port, username=args.username, password=password)
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
