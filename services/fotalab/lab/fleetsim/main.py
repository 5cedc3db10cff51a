"""`fota-fleetsim`: run N virtual devices beside the lab, or look at a running simulator.

    fota-fleetsim run [--devices N]   power on N virtual devices (sim-00001...) and run them until stopped
                                      (over FOTA_SIM_PROCESSES processes: two per core by default)
    fota-fleetsim status              print the running simulator's status file (JSON)
    fota-fleetsim alive               exit 0 if the simulator wrote its status lately (compose healthcheck)

Settings are FOTA_SIM_* (and the device's FOTA_* it shares), see FleetSimConfig and docs/fleetsim.md.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import resource
import sys
import time

from ...envconfig import ConfigError
from . import shards
from .config import FleetSimConfig


def raise_file_limit() -> int:
    """One socket per virtual device: take the hard limit of open files."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fota-fleetsim", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", nargs="?", default="run", choices=("run", "status", "alive"))
    parser.add_argument("--devices", type=int, help="virtual devices (default: FOTA_SIM_DEVICES)")
    args = parser.parse_args(argv)
    shards.configure_logging()
    try:
        config = FleetSimConfig.from_env()
    except ConfigError as exc:
        print(f"fota-fleetsim: {exc}", file=sys.stderr)
        return 2
    if args.command == "status":
        try:
            print(config.status_file.read_text())
        except FileNotFoundError:
            print(f"fota-fleetsim: no status at {config.status_file}: is the simulator running?", file=sys.stderr)
            return 1
        return 0
    if args.command == "alive":
        try:
            return 0 if time.time() - config.status_file.stat().st_mtime < shards.ALIVE_WITHIN_S else 1
        except FileNotFoundError:
            return 1
    if args.devices is not None:
        config = dataclasses.replace(config, devices=args.devices)
    files = raise_file_limit()
    if files < config.devices + 256:
        logging.warning("open files limited to %d: fewer than one socket per virtual device (%d)",
                        files, config.devices)
    return shards.run(config)


if __name__ == "__main__":
    sys.exit(main())
