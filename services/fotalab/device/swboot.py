"""The SWUpdate device's bootloader: A/B slots chosen by a GRUB environment block, boot counting
and fallback, in the way SWUpdate expects its bootloader to behave (docs/swupdate.md).

The environment block lives on the flash at grub/grubenv (SWUpdate's -B grub reads and writes it
at /boot/grub/grubenv, a link to it). On every power-on or reset:

    upgrade_available=1 (the slot is on trial): bootcount += 1; past bootlimit: fall back to the
        other slot, upgrade_available=0, bootcount=0, ustate=3 (FAILED), which SWUpdate reports.
        A power-on (not a reset by the firmware's doing: the supervisor knows the reset cause, as
        the lab's own bootloader reads its reset-cause register) gives back the attempt charged
        to the boot the power cut short and counts a power cut instead (powercuts); past
        FOTA_POWER_CUT_LIMIT (10) it falls back all the same
    the chosen slot must verify (signature by the release key, secure boot); a slot on trial
        that does not falls back at once; a confirmed one that does not boots the other slot
    ustate=7 left by a cut during an install: the named slot was not switched yet, it boots

The firmware, once its trial passed, confirms: upgrade_available=0, bootcount=0, ustate=2
(TESTING), which SWUpdate's suricatta reports as success and then resets to 0.

Every write of the block is synced (a temporary file, fsync, rename, directory fsync), and the
bootloader keeps its own copy of the last block it wrote (grub/grubenv.bootloader): when a cut
leaves grubenv unreadable (SWUpdate 2022.12 writes it without fsync), the copy is restored.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ..formats.image import HEADER_SIZE, ImageError, ImageHeader, parse_header, verify_image
from ..formats.signing import SignatureError, Verifier
from ..formats.swu import SLOTS, EnvKey, GrubEnvError, UState, other_slot, parse_grubenv, render_grubenv

ENV_DIR = "grub"
ENV_FILE = "grubenv"
ENV_COPY = "grubenv.bootloader"
TRUST = "trust.pem"
SWU_CERT = "swupdate-signer.crt"
TRAILER = 10                          # key id (8) + signature length (2), formats.image's trailer
POWER_CUTS = "powercuts"              # the bootloader's own variable: trial boots cut short by power loss


def slot_path(flash: Path, slot: str) -> Path:
    return flash / f"slot-{slot}.img"


def write_synced(path: Path, data: bytes) -> None:
    """Whole-file update that survives a cut: temporary file, fsync, rename, directory fsync."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dirfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dirfd)
    finally:
        os.close(dirfd)


class GrubEnv:
    """The environment block on the flash, and the bootloader's copy of it."""

    def __init__(self, flash: Path) -> None:
        self.dir = flash / ENV_DIR
        self.path = self.dir / ENV_FILE

    def read(self) -> dict[str, str] | None:
        try:
            return parse_grubenv(self.path.read_bytes())
        except (OSError, GrubEnvError):
            return None

    def peek(self) -> tuple[dict[str, str], str]:
        """The environment the next boot starts from (grubenv, else the bootloader's copy, else
        GRUB's default entry), and a note when it is not grubenv; writes nothing."""
        env = self.read()
        if env is not None:
            return env, ""
        try:
            return (parse_grubenv((self.dir / ENV_COPY).read_bytes()),
                    "grubenv unreadable (torn by a cut?): restored the bootloader's copy")
        except (OSError, GrubEnvError):
            return ({EnvKey.SLOT: SLOTS[0], EnvKey.USTATE: UState.OK},
                    "grubenv unreadable and no copy: booting the default entry (slot a), as GRUB would")

    def read_or_restore(self) -> tuple[dict[str, str], str]:
        env, note = self.peek()
        if note:
            self.write(env)
        return env, note

    def write(self, env: dict[str, str]) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        block = render_grubenv(env)
        write_synced(self.path, block)
        write_synced(self.dir / ENV_COPY, block)


@dataclass(frozen=True)
class SlotImage:
    header: ImageHeader | None
    error: str = ""


def check_slot(flash: Path, slot: str, verifier: Verifier) -> SlotImage:
    """The slot's image, verified. A slot file may be longer than its image (raw writes do not
    truncate), so the image is cut at the length its header and trailer say."""
    try:
        raw = slot_path(flash, slot).read_bytes()
        header = parse_header(raw)
        end = HEADER_SIZE + header.payload_length
        signature_length = int.from_bytes(raw[end + 8:end + TRAILER], "little")
        return SlotImage(verify_image(raw[:end + TRAILER + signature_length], verifier))
    except (OSError, ImageError, SignatureError) as exc:
        return SlotImage(None, str(exc) or type(exc).__name__)


@dataclass(frozen=True)
class BootDecision:
    slot: str | None              # None: nothing bootable (halt)
    trial: bool
    env: dict[str, str]
    message: str


def decide(env: dict[str, str], check, limit: int, power_on: bool = False, power_cut_limit: int = 10) -> BootDecision:
    """One boot's decision from the environment (pure but for `check(slot) -> SlotImage`);
    `power_on`: this boot follows a power cut, not a reset by the firmware's doing."""
    env = dict(env)
    slot = env.get(EnvKey.SLOT, SLOTS[0])
    slot = slot if slot in SLOTS else SLOTS[0]
    notes = []

    def fall_back(reason: str) -> None:
        nonlocal slot
        notes.append(f"slot {slot} {reason}: falling back to slot {other_slot(slot)}, ustate=3")
        slot = other_slot(slot)
        env.update({EnvKey.SLOT: slot, EnvKey.UPGRADE_AVAILABLE: "0", EnvKey.BOOTCOUNT: "0",
                    EnvKey.USTATE: UState.FAILED})
        env.pop(POWER_CUTS, None)

    if env.get(EnvKey.UPGRADE_AVAILABLE) == "1":
        count = int(env.get(EnvKey.BOOTCOUNT, "0") or 0)
        cuts = int(env.get(POWER_CUTS, "0") or 0)
        if power_on and count > 0:          # the last trial boot was cut short: not the firmware's failure
            count, cuts = count - 1, cuts + 1
            env[POWER_CUTS] = str(cuts)
        count += 1
        if count > limit:
            fall_back(f"failed {limit} trial boots")
        elif cuts >= power_cut_limit:
            fall_back(f"had {cuts} trial boots cut by power loss")
        else:
            env[EnvKey.BOOTCOUNT] = str(count)
            cut = f" ({cuts} cut by power loss)" if cuts else ""
            notes.append(f"slot {slot} on trial, boot {count} of {limit}{cut}")
    checked = check(slot)
    if checked.error and env.get(EnvKey.UPGRADE_AVAILABLE) == "1":
        fall_back(f"does not verify ({checked.error})")
        checked = check(slot)
    if checked.error:
        other = check(other_slot(slot))
        if other.error:
            return BootDecision(None, False, env, f"no bootable slot: {slot}: {checked.error}; "
                                                  f"{other_slot(slot)}: {other.error}")
        notes.append(f"slot {slot} does not verify ({checked.error}): booting slot {other_slot(slot)}")
        slot = other_slot(slot)
        env[EnvKey.SLOT] = slot
        checked = other
    if env.get(EnvKey.USTATE) == UState.IN_PROGRESS:
        notes.append("an install was cut short (ustate=7): the named slot is intact")
    trial = env.get(EnvKey.UPGRADE_AVAILABLE) == "1"
    notes.append(f"booting slot {slot}: {checked.header.version}{' on trial' if trial else ''}")
    return BootDecision(slot, trial, env, "; ".join(notes))


def provision(flash: Path, factory_image: Path, trust: Path, swu_cert: Path, limit: int) -> bool:
    """First power-on: the factory image in slot a, an empty slot b, the keys, then the
    environment (its presence marks a provisioned flash). Returns whether it provisioned."""
    env = GrubEnv(flash)
    if env.path.exists() or (env.dir / ENV_COPY).exists():
        return False
    write_synced(slot_path(flash, SLOTS[0]), factory_image.read_bytes())
    write_synced(slot_path(flash, SLOTS[1]), b"")
    write_synced(flash / TRUST, trust.read_bytes())
    write_synced(flash / SWU_CERT, swu_cert.read_bytes())
    env.write({EnvKey.SLOT: SLOTS[0], EnvKey.USTATE: UState.OK, EnvKey.UPGRADE_AVAILABLE: "0",
               EnvKey.BOOTCOUNT: "0", EnvKey.BOOTLIMIT: str(limit)})
    return True


def confirm(flash: Path) -> str:
    """The running firmware passed its trial: end the trial, tell SWUpdate (ustate=2)."""
    env = GrubEnv(flash)
    current = env.read() or {}
    if current.get(EnvKey.UPGRADE_AVAILABLE) != "1":
        return ""
    ustate = UState.TESTING if current.get(EnvKey.USTATE) == UState.INSTALLED else current.get(EnvKey.USTATE, "")
    confirmed = {**current, EnvKey.UPGRADE_AVAILABLE: "0", EnvKey.BOOTCOUNT: "0", EnvKey.USTATE: ustate}
    confirmed.pop(POWER_CUTS, None)
    env.write(confirmed)
    return f"trial passed: slot {current.get(EnvKey.SLOT)} confirmed, ustate={ustate}"
