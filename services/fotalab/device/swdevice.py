"""`fota-swdevice`: a device whose update agent is Debian's real SWUpdate (docs/swupdate.md).

    fota-swdevice run       supervisor (container PID 1): mounts the flash (lazyfs), then, as the
                            bootloader, boots the slot the GRUB environment names, counting trial
                            boots and falling back; runs the slot's firmware; resets on a crash or
                            when SWUpdate's post-update command asks for a reboot
    fota-swdevice firmware  what runs in a slot (started by the supervisor): behaves as its signed
                            image says (good, or crashing at boot); a good one on trial confirms
                            after FOTA_TRIAL_SOAK_S, then becomes SWUpdate's suricatta (hawkBit DDI)
    fota-swdevice reboot    SWUpdate's post-update command: sync the flash, ask for a reset
    fota-swdevice inspect   the flash as the bootloader sees it, as JSON
    fota-swdevice alive     exit 0 while a firmware runs (container healthcheck)

`docker kill` kills everything, lazyfs and what it held included: a power cut.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from ..envconfig import ConfigError, Env
from ..formats.image import Behaviour
from ..formats.signing import Verifier
from ..formats.swu import GRUBENV_PATH, HARDWARE_REVISION, SELECTION, SLOTS, EnvKey, UState, other_slot
from ..protocol import ResetReason
from ..tlsfiles import TlsFiles, server_url
from . import swboot

CRASH_EXIT = 70
log = logging.getLogger("fotalab.swdevice")


@dataclass(frozen=True)
class SwDeviceConfig:
    device_id: str
    hardware: str = "swupdate-arm64"
    flash_dir: Path = Path("/data")            # the flash as SWUpdate and the bootloader see it
    flash_backing: Path | None = None          # the volume under lazyfs; unset: no lazyfs (writes kept)
    flash_expire_s: float = 30.0               # lazyfs flushes data held longer (Linux's dirty_expire)
    factory_dir: Path = Path("/releases/factory")
    ddi_url: str = "http://link:8000"          # the hawkBit DDI server SWUpdate's suricatta polls
    tls: TlsFiles | None = None                # FOTA_TLS_*: the lab CA verifies the server, the certificate is ours
    ddi_tenant: str = "DEFAULT"
    ddi_target_token: str = ""                 # the controller's TargetToken (`fota controllers add`); "": none
    ddi_poll_s: int = 10
    ddi_retries: int = 5                       # suricatta -r: resume an interrupted download this often
    ddi_retry_wait_s: int = 2                  # suricatta -w
    boot_limit: int = 3
    power_cut_limit: int = 10                  # trial boots cut by power loss before it falls back all the same
    trial_soak_s: float = 2.0
    reset_delay_s: float = 1.0
    swupdate: str = "swupdate"
    swupdate_loglevel: int = 5
    grubenv_link: Path = Path(GRUBENV_PATH).parent
    supervisor_pid: int | None = None          # the reboot command signals it

    @property
    def settings_file(self) -> Path:
        """swupdate's configuration file (-f), written at each boot: what its command line cannot say."""
        return Path(f"/tmp/fota-swupdate-{self.device_id}.cfg")

    @property
    def running_file(self) -> Path:
        """Which firmware runs, outside the flash (gone with the power)."""
        return Path(f"/tmp/fota-swdevice-{self.device_id}.running")

    @classmethod
    def from_env(cls, env: Env | None = None) -> SwDeviceConfig:
        env = env or Env()
        d = cls(device_id="")
        return cls(
            device_id=env.text("FOTA_DEVICE_ID", socket.gethostname()),
            hardware=env.text("FOTA_HARDWARE", d.hardware),
            flash_dir=env.path("FOTA_FLASH_DIR", d.flash_dir),
            flash_backing=env.optional_path("FOTA_FLASH_BACKING"),
            flash_expire_s=env.number("FOTA_FLASH_EXPIRE_S", d.flash_expire_s, minimum=0),
            factory_dir=env.path("FOTA_FACTORY_DIR", d.factory_dir),
            ddi_url=server_url(env, "FOTA_DDI_URL", d.ddi_url),
            tls=TlsFiles.from_env(env),
            ddi_tenant=env.text("FOTA_DDI_TENANT", d.ddi_tenant),
            ddi_target_token=env.secret("FOTA_DDI_TARGET_TOKEN"),
            ddi_poll_s=env.integer("FOTA_DDI_POLL_S", d.ddi_poll_s, minimum=1),
            ddi_retries=env.integer("FOTA_DDI_RETRIES", d.ddi_retries, minimum=0),
            ddi_retry_wait_s=env.integer("FOTA_DDI_RETRY_WAIT_S", d.ddi_retry_wait_s, minimum=0),
            boot_limit=env.integer("FOTA_BOOT_LIMIT", d.boot_limit, minimum=1),
            power_cut_limit=env.integer("FOTA_POWER_CUT_LIMIT", d.power_cut_limit, minimum=1),
            trial_soak_s=env.number("FOTA_TRIAL_SOAK_S", d.trial_soak_s, minimum=0),
            reset_delay_s=env.number("FOTA_RESET_DELAY_S", d.reset_delay_s, minimum=0),
            swupdate=env.text("FOTA_SWUPDATE", d.swupdate),
            swupdate_loglevel=env.integer("FOTA_SWUPDATE_LOGLEVEL", d.swupdate_loglevel, minimum=0, maximum=6),
            grubenv_link=env.path("FOTA_GRUBENV_LINK", d.grubenv_link),
            supervisor_pid=env.parsed("FOTA_SUPERVISOR_PID", int, "a process id"),
        )


# ---------------------------------------------------------------- the flash
def mount_flash(config: SwDeviceConfig) -> subprocess.Popen | None:
    """lazyfs over the backing volume, when there is one; returns its process."""
    if config.flash_backing is None:
        config.flash_dir.mkdir(parents=True, exist_ok=True)
        return None
    fs = subprocess.Popen([sys.executable, "-m", "fotalab.device.lazyfs", str(config.flash_backing),
                           str(config.flash_dir), "--expire", str(config.flash_expire_s)])
    deadline = time.monotonic() + 20
    while not os.path.ismount(config.flash_dir):
        if fs.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"fota-swdevice: lazyfs did not mount {config.flash_dir} (exit {fs.poll()}); it needs "
                             "/dev/fuse and CAP_SYS_ADMIN (compose: devices /dev/fuse, cap_add SYS_ADMIN)")
        time.sleep(0.05)
    log.info("flash: lazyfs over %s at %s (unsynced writes die with the power)", config.flash_backing,
             config.flash_dir)
    return fs


def link_grubenv(config: SwDeviceConfig) -> None:
    """SWUpdate's -B grub reads /boot/grub/grubenv: make that directory the flash's grub/."""
    target = config.flash_dir / swboot.ENV_DIR
    target.mkdir(parents=True, exist_ok=True)
    link = config.grubenv_link
    if link.is_symlink() and Path(os.readlink(link)) == target:
        return
    link.parent.mkdir(parents=True, exist_ok=True)
    if link.is_symlink() or link.exists():
        if link.is_dir() and not link.is_symlink():
            raise SystemExit(f"fota-swdevice: {link} is a directory; it must be free for the link to the flash")
        link.unlink()
    link.symlink_to(target)


def verifier(config: SwDeviceConfig) -> Verifier:
    return Verifier((config.flash_dir / swboot.TRUST).read_bytes())


# ---------------------------------------------------------------- supervisor: power, reset, bootloader
def bootloader(config: SwDeviceConfig, power_on: bool = False) -> swboot.BootDecision:
    """The boot after a reset; `power_on`: the power came back (the reset cause the supervisor
    knows), so a trial boot it cut short is not charged to the firmware."""
    env = swboot.GrubEnv(config.flash_dir)
    if swboot.provision(config.flash_dir, config.factory_dir / f"{config.hardware}.img",
                        config.factory_dir / "trust.pem", config.factory_dir / swboot.SWU_CERT, config.boot_limit):
        log.info("bootloader: first power-on: factory image programmed into slot a")
    current, note = env.read_or_restore()
    if note:
        log.warning("bootloader: %s", note)
    keys = verifier(config)
    decision = swboot.decide(current, lambda slot: swboot.check_slot(config.flash_dir, slot, keys),
                             config.boot_limit, power_on=power_on, power_cut_limit=config.power_cut_limit)
    if decision.env != current:
        env.write(decision.env)
    return decision


def supervise(config: SwDeviceConfig) -> int:
    fs = mount_flash(config)
    link_grubenv(config)
    config.running_file.unlink(missing_ok=True)       # RAM does not survive a power cut (a container's /tmp does)
    child: subprocess.Popen | None = None
    reboot = {"asked": False}

    def on_reboot(signum, frame) -> None:
        reboot["asked"] = True
        if child and child.poll() is None:
            os.killpg(child.pid, signal.SIGKILL)
    signal.signal(signal.SIGUSR1, on_reboot)
    reason: str = ResetReason.POWER_ON
    while True:
        decision = bootloader(config, power_on=reason == ResetReason.POWER_ON)
        log.info("bootloader (%s): %s", reason, decision.message)
        if decision.slot is None:
            log.critical("device halted: %s", decision.message)
            signal.pause()
            continue
        reboot["asked"] = False
        env = {**os.environ, "FOTA_SUPERVISOR_PID": str(os.getpid())}
        child = subprocess.Popen([sys.executable, "-m", "fotalab.device.swdevice", "firmware", decision.slot,
                                  "--trial" if decision.trial else "--confirmed"], env=env, start_new_session=True)
        code = child.wait()
        try:
            os.killpg(child.pid, signal.SIGKILL)      # a reset stops whatever the firmware started
        except ProcessLookupError:
            pass
        config.running_file.unlink(missing_ok=True)
        if fs is not None and fs.poll() is not None:
            raise SystemExit("fota-swdevice: lazyfs died: the flash is gone")
        if reboot["asked"]:
            reason = ResetReason.SOFTWARE_REBOOT
        else:
            reason = f"{ResetReason.CRASH} (exit {code})"
            time.sleep(config.reset_delay_s)
        log.warning("reset: %s", reason)


# ---------------------------------------------------------------- firmware
def swupdate_settings(config: SwDeviceConfig) -> str:
    """swupdate's configuration (libconfig): suricatta's TLS files, which have no command-line
    options (the command line's settings override the rest), and the globals section swupdate
    refuses to start without, empty."""
    if config.tls is None:
        return ""
    files = {"cafile": config.tls.ca, "sslcert": config.tls.cert, "sslkey": config.tls.key}
    lines = [f'    {name} = "{path}";' for name, path in files.items() if path is not None]
    return "globals :\n{\n};\nsuricatta :\n{\n" + "\n".join(lines) + "\n};\n"


def swupdate_command(config: SwDeviceConfig, slot: str) -> list[str]:
    suricatta = (f"-t {config.ddi_tenant} -u {config.ddi_url} -i {config.device_id} -p {config.ddi_poll_s} "
                 f"-r {config.ddi_retries} -w {config.ddi_retry_wait_s}"
                 + (f" -k {config.ddi_target_token}" if config.ddi_target_token else ""))
    settings = ["-f", str(config.settings_file)] if config.tls else []
    return [config.swupdate, *settings, "-B", "grub", "-l", str(config.swupdate_loglevel),
            "-H", f"{config.hardware}:{HARDWARE_REVISION}", "-k", str(config.flash_dir / swboot.SWU_CERT),
            "-e", f"{SELECTION},copy-{other_slot(slot)}",
            "-p", f"{sys.executable} -m fotalab.device.swdevice reboot", "-u", suricatta]


def firmware(config: SwDeviceConfig, slot: str, trial: bool) -> int:
    image = swboot.check_slot(config.flash_dir, slot, verifier(config))
    if image.header is None:
        log.error("firmware: slot %s does not verify: %s", slot, image.error)
        return CRASH_EXIT
    header = image.header
    log.info("firmware %s (slot %s%s): %s", header.version, slot, ", trial" if trial else "", header.behaviour.label)
    if header.behaviour == Behaviour.CRASH_AT_BOOT:
        log.error("firmware %s: crashing at boot", header.version)
        return CRASH_EXIT
    if header.behaviour != Behaviour.GOOD:
        log.error("firmware %s: behaviour %s is not simulated on SWUpdate devices: crashing",
                  header.version, header.behaviour.label)
        return CRASH_EXIT
    config.running_file.write_text(json.dumps({"slot": slot, "version": header.version, "trial": trial}))
    if trial:
        time.sleep(config.trial_soak_s)               # the self-test: stay up this long
        log.info("firmware %s: %s", header.version, swboot.confirm(config.flash_dir))
        config.running_file.write_text(json.dumps({"slot": slot, "version": header.version, "trial": False}))
    if config.tls:
        config.settings_file.write_text(swupdate_settings(config))
    command = swupdate_command(config, slot)
    log.info("firmware %s: starting SWUpdate: %s", header.version, " ".join(command))
    sys.stdout.flush()
    os.execvp(command[0], command)
    return CRASH_EXIT                                  # not reached


def reboot(config: SwDeviceConfig) -> int:
    """SWUpdate's post-update command: commit what the flash holds (a journal commit), then ask
    the supervisor for a reset, as `reboot` syncs filesystems before it resets."""
    fd = os.open(config.flash_dir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    if config.supervisor_pid is None:
        print("fota-swdevice reboot: no supervisor to reset (FOTA_SUPERVISOR_PID unset)", file=sys.stderr)
        return 1
    print("fota-swdevice reboot: flash synced, resetting")
    os.kill(config.supervisor_pid, signal.SIGUSR1)
    return 0


def inspect(config: SwDeviceConfig) -> dict:
    """The flash as the bootloader reads it: the environment, both slots verified, what the next
    power-on would boot (`bootable`: some slot would; `next_boot` says which and why), and the
    firmware running now."""
    grub = swboot.GrubEnv(config.flash_dir)
    env = grub.read()
    keys = verifier(config) if (config.flash_dir / swboot.TRUST).exists() else None
    slots, checked = {}, {}
    for slot in SLOTS:
        checked[slot] = swboot.check_slot(config.flash_dir, slot, keys) if keys else swboot.SlotImage(
            None, "not provisioned")
        slots[slot] = {"version": checked[slot].header.version if checked[slot].header else None,
                       "error": checked[slot].error}
    running = json.loads(config.running_file.read_text()) if config.running_file.exists() else None
    start, note = grub.peek()
    decision = swboot.decide(start, checked.__getitem__, config.boot_limit, power_on=True,
                             power_cut_limit=config.power_cut_limit)
    named = start.get(EnvKey.SLOT, SLOTS[0])
    return {"device": config.device_id, "env": env, "slots": slots, "running": running,
            "booted_slot": env.get(EnvKey.SLOT) if env else None,
            "bootable": decision.slot is not None,
            "next_boot": "; ".join(filter(None, [note, decision.message])),
            "boot": {"slot": named, "version": slots.get(named, {}).get("version"),
                     "trial": start.get(EnvKey.UPGRADE_AVAILABLE) == "1",
                     "ustate": start.get(EnvKey.USTATE, UState.OK)}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fota-swdevice", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", nargs="?", default="run", choices=("run", "firmware", "reboot", "inspect", "alive"))
    parser.add_argument("slot", nargs="?", choices=SLOTS)
    parser.add_argument("--trial", action="store_true")
    parser.add_argument("--confirmed", dest="trial", action="store_false")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        config = SwDeviceConfig.from_env()
    except ConfigError as exc:
        print(f"fota-swdevice: {exc}", file=sys.stderr)
        return 2
    if args.command == "firmware":
        return firmware(config, args.slot or SLOTS[0], args.trial)
    if args.command == "reboot":
        return reboot(config)
    if args.command == "inspect":
        print(json.dumps(inspect(config), indent=2))
        return 0
    if args.command == "alive":
        return 0 if config.running_file.exists() else 1
    return supervise(config)


if __name__ == "__main__":
    sys.exit(main())
