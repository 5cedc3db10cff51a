"""`fota-device`: the device's power supply and reset circuit, its bootloader, and an inspector.

    fota-device run      supervisor (container PID 1): boots the firmware in a child process,
                         restarts it on reboot, crash or watchdog timeout, as a reset would
    fota-device boot     one boot: the bootloader step, then the firmware of the chosen slot
    fota-device inspect  print the flash state (boot record copies, slots, journal) as JSON
    fota-device alive    exit 0 if the firmware kicked its watchdog lately (container healthcheck)

`docker kill` kills the supervisor and child together: a power cut, not a reset.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

from ..envconfig import ConfigError
from ..formats.signing import key_id
from ..protocol import ResetReason
from . import journal as jr
from .bootctl import SLOTS, BootControl
from .bootloader import boot, check_slot, plan_boot
from .config import DeviceConfig
from .firmware import REBOOT_EXIT, run
from .flash import Flash, power_off_process
from .trust import ANCHOR, load_verifier

HALT_EXIT = 4
ALIVE_WITHIN_S = 5.0
log = logging.getLogger("fotalab.device")


def open_flash(config: DeviceConfig) -> Flash:
    return Flash(config.flash_dir, writeback=config.flash_writeback, fault=config.flash_fault,
                 oplog=config.flash_oplog, power_off=lambda: power_off_process(config.supervisor_pid))


def boot_once(config: DeviceConfig) -> int:
    flash = open_flash(config)
    plan, verifier = boot(flash, factory_image=config.factory_image, trust_anchor=config.trust_anchor,
                          limit=config.boot_limit, reset_reason=config.reset_reason,
                          power_cut_limit=config.power_cut_limit)
    log.info("bootloader: %s", plan.message)
    if plan.boot is None:
        log.critical("BRICKED: %s", plan.message)
        return HALT_EXIT
    return run(config, flash, plan, verifier)


def supervise(config: DeviceConfig) -> int:
    child: subprocess.Popen | None = None

    def shutdown(signum, frame) -> None:
        if child and child.poll() is None:
            child.kill()
        sys.exit(0)
    signal.signal(signal.SIGTERM, shutdown)
    signal.signal(signal.SIGINT, shutdown)

    reason: str = ResetReason.POWER_ON
    while True:
        read_end, write_end = os.pipe()
        # The firmware's "hardware": its watchdog pipe, the reset-cause register, the power rail.
        env = {**os.environ, "FOTA_WATCHDOG_FD": str(write_end), "FOTA_RESET_REASON": reason,
               "FOTA_SUPERVISOR_PID": str(os.getpid())}
        child = subprocess.Popen([sys.executable, "-m", "fotalab.device.main", "boot"], env=env,
                                 pass_fds=(write_end,))
        os.close(write_end)
        reason = watch(child, read_end, config.watchdog_s, config.alive_file)
        os.close(read_end)
        if reason == ResetReason.HALT:
            log.critical("device halted: no bootable image; power-cycle after repair")
            signal.pause()
        log.warning("reset: %s", reason)
        if not reason.startswith(ResetReason.SOFTWARE_REBOOT):
            time.sleep(config.reset_delay_s)


def watch(child: subprocess.Popen, kicks: int, watchdog_s: float, alive_file: Path) -> str:
    """Wait for the child to exit or to miss the watchdog; returns the reset reason."""
    said = b""
    while True:
        ready, _, _ = select.select([kicks], [], [], watchdog_s)
        if not ready:
            child.kill()
            child.wait()
            return f"{ResetReason.WATCHDOG}: no kick for {watchdog_s:.0f} s"
        if data := os.read(kicks, 4096):
            said = (said + data)[-4096:]
            alive_file.touch()
        else:   # the child closed its end: it exited
            code = child.wait()
            if code == REBOOT_EXIT:
                reason = said.rpartition(b"\nreason:")[2].split(b"\n")[0].decode(errors="replace")
                return f"{ResetReason.SOFTWARE_REBOOT} ({reason})" if reason else ResetReason.SOFTWARE_REBOOT
            if code == HALT_EXIT:
                return ResetReason.HALT
            return f"{ResetReason.CRASH} (exit {code})"


def inspect(config: DeviceConfig) -> dict:
    """The device's flash as its own bootloader sees it (read-only: nothing is stored)."""
    flash = Flash(config.flash_dir)
    control = BootControl(flash)
    anchor = flash.read(ANCHOR)
    state = control.load()
    job = jr.load(flash)
    checks = {slot: check_slot(flash, slot, load_verifier(flash)) for slot in SLOTS} if anchor else {}
    plan = plan_boot(state, checks.__getitem__, limit=config.boot_limit, reset_reason=ResetReason.INSPECT) \
        if state and checks else None
    return {
        "device": config.device_id,
        "boot_copies": [dataclasses.asdict(s) if s else None for s in control.copies()],
        "boot": dataclasses.asdict(state) if state else None,
        "journal": {k: v for k, v in dataclasses.asdict(job).items() if k != "manifest"} if job else None,
        "slots": {slot: {"version": c.version, "sha256": c.sha256, "verified": not c.error, "error": c.error,
                         "security_counter": c.header.security_counter if c.header else None}
                  for slot, c in checks.items()},
        "running": {"slot": state.active, **{"version": checks[state.active].version,
                                             "verified": not checks[state.active].error}} if plan else None,
        "trusted_keys": [key_id(pem) for pem in load_verifier(flash).public_pems] if anchor else [],
        "bootable": bool(plan and plan.boot),
        "next_boot": plan.message if plan else "not provisioned",
    }


def alive(config: DeviceConfig) -> int:
    try:
        return 0 if time.time() - config.alive_file.stat().st_mtime < ALIVE_WITHIN_S else 1
    except FileNotFoundError:
        return 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fota-device", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", nargs="?", default="run", choices=("run", "boot", "inspect", "alive"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stdout,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        config = DeviceConfig.from_env()
    except ConfigError as exc:
        print(f"fota-device: {exc}", file=sys.stderr)
        return 2
    if args.command == "inspect":
        print(json.dumps(inspect(config), indent=2))
        return 0
    if args.command == "alive":
        return alive(config)
    if args.command == "boot":
        return boot_once(config)
    return supervise(config)


if __name__ == "__main__":
    sys.exit(main())
