"""What the signer and an SWUpdate device agree on: the .swu's sw-description, the slot layout,
and the GRUB environment block that SWUpdate and the lab's bootloader share.

A .swu is a cpio archive (formats.cpio): `sw-description` first, its detached CMS signature
`sw-description.sig` second, then the artifacts. sw-description (libconfig syntax) offers two
selections, `stable,copy-a` and `stable,copy-b`: the device runs SWUpdate with
`-e stable,copy-<inactive slot>`, so the image lands in the slot that is not running and the
`bootenv` section points the bootloader at it on trial. A delta .swu carries an rdiff patch
(librsync) that SWUpdate's rdiff_image handler applies with the running slot as its base.

The GRUB environment block (grub-editenv's format, which SWUpdate's `-B grub` reads and writes
at /boot/grub/grubenv): "# GRUB Environment Block\\n", then key=value lines, padded with '#'
to exactly 1024 bytes. Pure: no I/O.
"""
from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

SW_DESCRIPTION = "sw-description"
SIGNATURE = "sw-description.sig"
IMAGE_MEMBER = "firmware.img"
DELTA_MEMBER = "firmware.rdiff"
SELECTION = "stable"
SLOTS = ("a", "b")
HARDWARE_REVISION = "1.0"            # the board revision every lab device reports with -H <hardware>:1.0

GRUBENV_PATH = "/boot/grub/grubenv"  # compiled into Debian's swupdate (strings /usr/bin/swupdate)
GRUBENV_HEADER = b"# GRUB Environment Block\n"
GRUBENV_SIZE = 1024


class EnvKey(StrEnum):
    """Variables in the GRUB environment: SWUpdate's own two, and the boot-counting trio."""
    USTATE = "ustate"                      # SWUpdate's update state (UState below)
    RECOVERY_STATUS = "recovery_status"    # SWUpdate's transaction marker: set while it writes
    SLOT = "slot"                          # the slot the bootloader boots: a or b
    UPGRADE_AVAILABLE = "upgrade_available"  # 1: the slot is on trial, boots are counted
    BOOTCOUNT = "bootcount"
    BOOTLIMIT = "bootlimit"


class UState(StrEnum):
    """SWUpdate's update_state_t as it stores it (include/state.h), as the bootloader sees it."""
    OK = "0"              # nothing pending
    INSTALLED = "1"       # installed, not yet booted and tested
    TESTING = "2"         # booted and tested: suricatta reports success, then resets to 0
    FAILED = "3"          # the bootloader fell back: suricatta reports failure, then resets to 0
    NOT_AVAILABLE = "4"
    ERROR = "5"
    WAIT = "6"
    IN_PROGRESS = "7"     # an install was under way (a cut leaves it; the named slot is intact)


def slot_file(flash_dir: str, slot: str) -> str:
    return f"{flash_dir.rstrip('/')}/slot-{slot}.img"


def other_slot(slot: str) -> str:
    return SLOTS[1 - SLOTS.index(slot)]


@dataclass(frozen=True)
class SwuArtifact:
    member: str
    sha256: str
    delta_base_slot: bool = False     # an rdiff patch against the running slot, not a whole image


def sw_description(*, version: str, hardware: str, artifact: SwuArtifact, flash_dir: str,
                   description: str = "") -> bytes:
    """sw-description (libconfig) for one release: a copy-a and a copy-b selection."""
    def copy(slot: str) -> str:
        target = slot_file(flash_dir, slot)
        if artifact.delta_base_slot:
            image = (f'type = "rdiff_image"; device = "{target}";\n'
                     f'\t\t\t\tproperties: {{ rdiffbase = ["{slot_file(flash_dir, other_slot(slot))}"]; }};')
        else:
            image = f'type = "raw"; device = "{target}";'
        env = {EnvKey.SLOT: slot, EnvKey.UPGRADE_AVAILABLE: "1", EnvKey.BOOTCOUNT: "0"}
        bootenv = ",\n".join(f'\t\t\t\t{{ name = "{k}"; value = "{v}"; }}' for k, v in env.items())
        return (f"\t\tcopy-{slot}: {{\n"
                f"\t\t\timages: ({{\n"
                f'\t\t\t\tfilename = "{artifact.member}"; sha256 = "{artifact.sha256}";\n'
                f"\t\t\t\t{image}\n"
                f"\t\t\t}});\n"
                f"\t\t\tbootenv: (\n{bootenv}\n\t\t\t);\n"
                f"\t\t}};\n")
    # Under the board's name: SWUpdate looks for software.<board from -H>.<selection> first, and
    # hardware-compatibility checks only the revision, so another board finds nothing to install.
    text = (f"software =\n{{\n"
            f'\tversion = "{version}";\n'
            f'\tdescription = "{description or f"fota-lab {hardware} {version}"}";\n'
            f"\t{hardware}: {{\n"
            f'\t\thardware-compatibility: ["{HARDWARE_REVISION}"];\n'
            f"\t{SELECTION}: {{\n{copy('a')}{copy('b')}\t}};\n"
            f"\t}};\n"
            f"}}\n")
    return text.encode()


class GrubEnvError(ValueError):
    """The block is not a GRUB environment block (wrong size, header or syntax)."""


def parse_grubenv(block: bytes) -> dict[str, str]:
    if len(block) != GRUBENV_SIZE:
        raise GrubEnvError(f"GRUB environment block is {len(block)} bytes, not {GRUBENV_SIZE}")
    if not block.startswith(GRUBENV_HEADER):
        raise GrubEnvError("GRUB environment block has no '# GRUB Environment Block' header")
    env = {}
    for line in block[len(GRUBENV_HEADER):].decode(errors="replace").split("\n"):
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        if not sep or not key:
            raise GrubEnvError(f"GRUB environment line {line[:40]!r} is not key=value")
        env[key] = value
    return env


def render_grubenv(env: dict[str, str]) -> bytes:
    body = GRUBENV_HEADER + b"".join(f"{k}={v}\n".encode() for k, v in env.items())
    if len(body) > GRUBENV_SIZE:
        raise GrubEnvError(f"GRUB environment needs {len(body)} bytes, more than {GRUBENV_SIZE}")
    return body.ljust(GRUBENV_SIZE, b"#")
