"""Xtensa (ESP8266/ESP32) relocation: CALL0 / CALL8 (3 bytes at any byte offset) and 32-bit
absolute pointers."""

from __future__ import annotations

import collections
import re
from collections.abc import Iterator

from .movemap import MoveMap, OutsideMap
from .relocate_base import Field, Relocator

_CALL = re.compile(rb"[\x05\x45\x85\xc5\x25\x65\xa5\xe5]")  # CALL0 / CALL8 first byte
# ADDI a1, a1, -n (call0 ABI) / ENTRY a1, n (windowed ABI)
PROLOGUE = re.compile(rb"(?=\x12\xc1[\x80-\xff]|\x36[\x41\x61\x81\xa1\xc1\xe1]\x00)")

KIND_CALL, KIND_POINTER = 0, 1


def call_target(old: bytes, pos: int) -> int:
    """Target of the Xtensa CALLn at pos: (pos & ~3) + 4 + 4 * signed 18-bit offset."""
    word = old[pos] | old[pos + 1] << 8 | old[pos + 2] << 16
    off = word >> 6
    if off & (1 << 17):
        off -= 1 << 18
    return (pos & ~3) + (off << 2) + 4


class XtensaRelocator(Relocator):
    """Kinds: 0 CALL0 / CALL8 to a popular target, 1 32-bit pointer."""

    arch = "xtensa"
    prologue = PROLOGUE

    def __init__(self, old: bytes, base: int | None, move_map: MoveMap, ptrmode: int = 2,
                 outside: OutsideMap | None = None) -> None:
        super().__init__(old, base, move_map, ptrmode, outside)
        self._popular: set[int] | None = None

    def _all_call_targets(self) -> Iterator[int]:
        """Target of every CALL pattern in the image, real call or not."""
        old = self.old
        return (call_target(old, match.start()) for match in _CALL.finditer(old, 0, max(0, self.n - 2)))

    def scored_call_targets(self) -> Iterator[int]:
        # The relocated calls are already filtered to shared targets, which is what the score
        # measures: count every CALL pattern instead.
        return self._all_call_targets()

    def _popular_targets(self) -> set[int]:
        """Targets called from at least two places: only calls to those are relocated (a CALL
        pattern matches 1 byte in 32 of anything; real calls share their targets)."""
        if self._popular is None:
            count = collections.Counter(self._all_call_targets())
            self._popular = {target for target, calls in count.items() if calls >= 2 and 0 <= target < self.n}
        return self._popular

    def fields(self, start: int, end: int) -> list[Field]:
        old, n = self.old, self.n
        popular = self._popular_targets()
        calls = [match.start() for match in _CALL.finditer(old, max(0, start - 4), max(0, min(n - 2, end + 2)))
                 if call_target(old, match.start()) in popular]
        out = []
        for i, pos in enumerate(calls):
            if (i and calls[i - 1] >= pos - 2) or (i + 1 < len(calls) and calls[i + 1] <= pos + 2):
                continue  # overlapping candidates: leave alone
            if pos + 3 > start and pos < end:
                out.append((pos, KIND_CALL, 0))
        out += [(pos, KIND_POINTER, 0) for pos in self._data_pointers(start, end, 4)]
        out.sort()
        return out

    def value(self, pos: int, kind: int, target: int, shift: int) -> bytes | None:
        if kind != KIND_CALL:
            return self._pointer_value(pos)
        new_target = self._new_target(call_target(self.old, pos))
        if new_target is None:
            return None
        distance = new_target - (((pos + shift) & ~3) + 4)
        if distance & 3 or not -(1 << 19) <= distance < (1 << 19):
            return None
        word = (self.old[pos] & 0x3F) | (((distance >> 2) & 0x3FFFF) << 6)
        return bytes((word & 0xFF, (word >> 8) & 0xFF, word >> 16))

    def target(self, pos: int, kind: int, target: int) -> int:
        if kind == KIND_CALL:
            return call_target(self.old, pos)
        return self._pointer_target(pos)
