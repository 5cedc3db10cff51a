"""`fota-device`: the device's power supply and reset circuit, its bootloader, and an inspector.

    fota-device run      supervisor (container PID 1): boots the firmware in a child process,
                         restarts it on reboot, crash or watchdog timeout, as a reset would
    fota-device boot     one boot: the bootloader step, then the firmware of the chosen slot
    fota-device inspect  print the flash state (boot record copies, slots, journal) as JSON
    fota-device alive    exit 0 if the firmware kicked its watchdog lately (container healthcheck)

`docker kill` kills the supervisor and child together: a power cut, not a reset.

The supervisor is a power supply, not a second firmware: at module level this file imports only
os, select, signal, sys, time, envconfig and protocol (`python -X importtime -m fotalab.device.main`
shows it), so `run` costs a bare interpreter (10 MiB RSS in a device container) instead of one that holds the
whole stack (cryptography, paho, requests: about 40 MiB). The other commands import the device's
modules when they run. The firmware's settings are validated by the `boot` it starts
(DeviceConfig); a refused setting stops the supervisor with the same status 2.
"""
from __future__ import annotations

import os
import select
import signal
import sys
import time
from collections import namedtuple

from ..envconfig import ConfigError, Env
from ..protocol import ResetReason

HALT_EXIT = 4
CONFIG_EXIT = 2      # what `boot` returns for a setting DeviceConfig refuses
REBOOT_EXIT = 3      # firmware.REBOOT_EXIT, not imported from there: firmware loads the whole stack
ALIVE_WITHIN_S = 5.0


class SupervisorConfig(namedtuple("SupervisorConfig", "device_id watchdog_s reset_delay_s boot_jitter_s")):
    """The supervisor's settings: DeviceConfig's watchdog, reset delay and alive file, read with the
    same names and defaults without importing the firmware's (ssl, dataclasses); and the jitter."""
    __slots__ = ()

    @property
    def alive_file(self) -> str:
        """DeviceConfig.alive_file: touched on every watchdog kick."""
        return f"/tmp/fota-alive-{self.device_id}"

    @property
    def powered_file(self) -> str:
        """Created at the container's first power-on: later power-ons (docker start) skip the jitter."""
        return f"/tmp/fota-powered-{self.device_id}"

    @classmethod
    def from_env(cls, env: Env | None = None) -> SupervisorConfig:
        env = env or Env()
        return cls(device_id=env.text("FOTA_DEVICE_ID", os.uname().nodename),
                   watchdog_s=env.number("FOTA_WATCHDOG_S", 15.0, minimum=0.1),
                   reset_delay_s=env.number("FOTA_RESET_DELAY_S", 1.0, minimum=0),
                   # a random wait before a new container's first boot, up to this many seconds, so
                   # a fleet started at once does not reach the broker and the server at once
                   boot_jitter_s=env.number("FOTA_BOOT_JITTER_S", 0.0, minimum=0))


def log(level: str, message: str) -> None:
    """A line as logging's format in `main` writes it (the supervisor does not load logging)."""
    now = time.time()
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(now))
    print(f"{stamp},{int(now % 1 * 1000):03d} fotalab.device {level} {message}", flush=True)


def touch(path: str) -> None:
    try:
        os.utime(path)
    except FileNotFoundError:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o666))


def first_power_on(config: SupervisorConfig) -> None:
    """A new container waits a random part of the boot jitter; a restarted one (docker start) does not."""
    if config.boot_jitter_s <= 0 or os.path.exists(config.powered_file):
        return
    wait = config.boot_jitter_s * int.from_bytes(os.urandom(4), "big") / 2**32
    log("INFO", f"first power-on: boot in {wait:.1f} s (FOTA_BOOT_JITTER_S {config.boot_jitter_s:g})")
    time.sleep(wait)
    touch(config.powered_file)


def supervise(config: SupervisorConfig) -> int:
    child = 0

    def shutdown(signum, frame) -> None:
        if child:
            try:
                os.kill(child, signal.SIGKILL)
            except ProcessLookupError:
                pass
        sys.exit(0)
    signal.signal(signal.SIGTERM, shutdown)
    signal.signal(signal.SIGINT, shutdown)

    first_power_on(config)
    reason: str = ResetReason.POWER_ON
    while True:
        read_end, write_end = os.pipe()
        os.set_inheritable(write_end, True)     # the only descriptor the firmware gets besides stdio
        # The firmware's "hardware": its watchdog pipe, the reset-cause register, the power rail.
        env = {**os.environ, "FOTA_WATCHDOG_FD": str(write_end), "FOTA_RESET_REASON": reason,
               "FOTA_SUPERVISOR_PID": str(os.getpid())}
        child = os.posix_spawn(sys.executable, [sys.executable, "-m", "fotalab.device.main", "boot"], env,
                               setsigdef=(signal.SIGPIPE, signal.SIGXFSZ))
        os.close(write_end)
        reason = watch(child, read_end, config.watchdog_s, config.alive_file)
        end_orphans()
        child = 0
        os.close(read_end)
        if reason == ResetReason.HALT:
            log("CRITICAL", "device halted: no bootable image; power-cycle after repair")
            signal.pause()
        if reason == f"{ResetReason.CRASH} (exit {CONFIG_EXIT})":
            return CONFIG_EXIT      # the boot said which setting; as `run` did before booting anything
        log("WARNING", f"reset: {reason}")
        if not reason.startswith(ResetReason.SOFTWARE_REBOOT):
            time.sleep(config.reset_delay_s)


def watch(child: int, kicks: int, watchdog_s: float, alive_file: str) -> str:
    """Wait for the child (a pid) to exit or to miss the watchdog; returns the reset reason."""
    said = b""
    while True:
        ready, _, _ = select.select([kicks], [], [], watchdog_s)
        if not ready:
            os.kill(child, signal.SIGKILL)
            os.waitpid(child, 0)
            return f"{ResetReason.WATCHDOG}: no kick for {watchdog_s:.0f} s"
        if data := os.read(kicks, 4096):
            said = (said + data)[-4096:]
            touch(alive_file)
        else:   # the child closed its end: it exited
            code = os.waitstatus_to_exitcode(os.waitpid(child, 0)[1])
            if code == REBOOT_EXIT:
                reason = said.rpartition(b"\nreason:")[2].split(b"\n")[0].decode(errors="replace")
                return f"{ResetReason.SOFTWARE_REBOOT} ({reason})" if reason else ResetReason.SOFTWARE_REBOOT
            if code == HALT_EXIT:
                return ResetReason.HALT
            return f"{ResetReason.CRASH} (exit {code})"


def children() -> list[int]:
    """This process's children, from /proc (empty where the kernel does not list them)."""
    found: list[int] = []
    tasks = f"/proc/{os.getpid()}/task"
    try:
        threads = os.listdir(tasks)
    except OSError:
        return found
    for thread in threads:
        try:
            with open(f"{tasks}/{thread}/children") as file:
                found += [int(pid) for pid in file.read().split()]
        except OSError:
            pass
    return found


def end_orphans() -> None:
    """Once the firmware process is gone, end what it started and left behind (a delta patcher, say),
    as a reset of the hardware would, and reap it. The supervisor is PID 1 of its container, so the
    firmware's orphans become its children: unreaped, they would stay zombies as long as the device
    runs. What is not dead yet when this looks is reaped at the next reset."""
    for pid in children():
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


# ---------------------------------------------------------------- the other commands: the whole stack
def open_flash(config):
    from .flash import Flash, power_off_process
    return Flash(config.flash_dir, writeback=config.flash_writeback, fault=config.flash_fault,
                 oplog=config.flash_oplog, power_off=lambda: power_off_process(config.supervisor_pid))


def boot_once(config) -> int:
    import logging

    from .bootloader import boot
    from .firmware import run
    log = logging.getLogger("fotalab.device")
    flash = open_flash(config)
    plan, verifier = boot(flash, factory_image=config.factory_image, trust_anchor=config.trust_anchor,
                          limit=config.boot_limit, reset_reason=config.reset_reason,
                          power_cut_limit=config.power_cut_limit)
    log.info("bootloader: %s", plan.message)
    if plan.boot is None:
        log.critical("BRICKED: %s", plan.message)
        return HALT_EXIT
    return run(config, flash, plan, verifier)


def inspect(config) -> dict:
    """The device's flash as its own bootloader sees it (read-only: nothing is stored)."""
    import dataclasses

    from ..formats.signing import key_id
    from . import journal as jr
    from .bootctl import SLOTS, BootControl
    from .bootloader import check_slot, plan_boot
    from .flash import Flash
    from .trust import ANCHOR, load_verifier
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


def alive(config) -> int:
    try:
        return 0 if time.time() - config.alive_file.stat().st_mtime < ALIVE_WITHIN_S else 1
    except FileNotFoundError:
        return 1


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv in ([], ["run"]):        # the supervisor: no argparse, logging or DeviceConfig either
        try:
            config = SupervisorConfig.from_env()
        except ConfigError as exc:
            print(f"fota-device: {exc}", file=sys.stderr)
            return 2
        return supervise(config)
    return command(argv)


def command(argv: list[str]) -> int:
    import argparse
    import json
    import logging

    from .config import DeviceConfig
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
    return main([])


if __name__ == "__main__":
    sys.exit(main())
