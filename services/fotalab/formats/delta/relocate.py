"""The relocator of each instruction set a relocating encoding names (see
``container.ENCODING_ARCH``)."""

from __future__ import annotations

from .movemap import MoveMap, OutsideMap
from .relocate_aarch64 import Aarch64Relocator
from .relocate_base import Relocator
from .relocate_thumb import ThumbRelocator
from .relocate_xtensa import XtensaRelocator

RELOCATORS: dict[str, type[Relocator]] = {
    "thumb": ThumbRelocator,
    "aarch64": Aarch64Relocator,
    "xtensa": XtensaRelocator,
}


def make_relocator(arch: str, old: bytes, base: int | None, move_map: MoveMap, ptrmode: int = 2,
                   outside: OutsideMap | None = None) -> Relocator:
    """A relocator of ``old`` for instruction set ``arch`` (see ``Relocator``)."""
    return RELOCATORS[arch](old, base, move_map, ptrmode, outside)
