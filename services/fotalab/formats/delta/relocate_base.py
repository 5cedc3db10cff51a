"""What every instruction set's relocator shares: the prediction of where an old address
moved, the scan for absolute pointers, and the rewriting of a region of the old image.

A relocator rewrites the old image's addresses (PC-relative calls and branches, absolute
pointers) to where they are predicted to be in the new image, so that moved code differs
only where it really changed. Subclasses (``relocate_thumb``, ``relocate_aarch64``,
``relocate_xtensa``) find the fields of their instruction set and encode new values for them.
"""

from __future__ import annotations

import re
import struct
import sys
from array import array
from collections.abc import Iterator
from typing import ClassVar

from .bytewise import old_slice
from .movemap import MoveMap, OutsideMap

# A field: (position in the old image, kind of field, target the scan already worked out).
Field = tuple[int, int, int]


def old_region(old: bytes, relocator: Relocator | None, start: int, end: int, shift: int) -> bytes:
    """The bytes a match's diff is taken against: old[start:end] (zeros outside the image),
    relocated for a region that lands at start + shift when the encoding relocates."""
    if relocator is not None:
        return relocator.region(start, end, shift)
    return old_slice(old, start, end)


class Relocator:
    """Rewrites the old image's addresses to where they are predicted to be in the new one.

    Field detection is context-free (depends only on a few bytes around each position), so a
    region gives the same result whether it is processed whole or in chunks, on the signer
    and on the device alike.
    """

    arch: ClassVar[str]
    pointer_size: ClassVar[int] = 4  # bytes of an absolute pointer
    pointer_format: ClassVar[str] = "<I"
    code_alignment: ClassVar[int] = 4  # functions (and so prologues) start at multiples of this
    prologue: ClassVar[re.Pattern[bytes]]  # bytes that open a function

    def __init__(self, old: bytes, base: int | None, move_map: MoveMap, ptrmode: int = 2,
                 outside: OutsideMap | None = None) -> None:
        self.old = old
        # ptrmode 0: no absolute pointers; 1: only code-like ones (Thumb: odd, AArch64:
        # 4-aligned); 2: every aligned word whose value lands in the image. Pointers into
        # the outside map's range are taken whatever the mode (when there is a base).
        self.base = base if ptrmode else None
        self.pbase = base or 0  # load address: ADRP page arithmetic uses absolute addresses
        self.ptrmode = ptrmode
        self.move_map = move_map
        self.outside = outside
        self.n = len(old)

    # ---- what each instruction set provides
    def fields(self, start: int, end: int) -> list[Field]:
        """(pos, kind, target) of the fields whose bytes overlap [start, end); kind 0 is a call."""
        raise NotImplementedError

    def value(self, pos: int, kind: int, target: int, shift: int) -> bytes | None:
        """New bytes of the field at ``pos`` once its region lands at ``pos + shift`` (None:
        leave the field alone)."""
        raise NotImplementedError

    def target(self, pos: int, kind: int, target: int) -> int:
        """Old offset a field refers to (what ``_target_shift`` is asked about)."""
        raise NotImplementedError

    def inside_call(self, pos: int) -> bool:
        """Whether a pointer-like word at ``pos`` may be part of a call instruction instead."""
        return False

    @staticmethod
    def code_pointer(value: int) -> int | None:
        """The address a pointer-sized word would point to as a code pointer (None: it cannot
        be one)."""
        return value

    # ---- image-wide scans for the signer's guesses (see archdetect)
    def call_targets(self) -> Iterator[int]:
        """Target of every call the relocator would rewrite, in image order."""
        return (self.target(pos, kind, target) for pos, kind, target in self.fields(0, self.n) if kind == 0)

    def scored_call_targets(self) -> Iterator[int]:
        """Targets of the calls that ``archdetect.arch_score`` counts."""
        return self.call_targets()

    # ---- shared
    def _target_shift(self, target: int) -> int | None:
        """Predicted move of old offset ``target`` (None: leave the field alone)."""
        if 0 <= target <= self.n:
            return self.move_map.shift(target)
        if self.outside is not None:
            return self.outside.shift(target)
        return None

    def _new_target(self, target: int) -> int | None:
        """Where old offset ``target`` is predicted to be in the new image (None: unknown)."""
        move = self._target_shift(target)
        return None if move is None else target + move

    def _pointer_target(self, pos: int) -> int:
        """Old offset the absolute pointer at ``pos`` refers to."""
        return struct.unpack_from(self.pointer_format, self.old, pos)[0] - self.base

    def _pointer_value(self, pos: int) -> bytes:
        """The absolute pointer at ``pos`` moved with its target (the scan made sure the target
        has a predicted move)."""
        pointer = struct.unpack_from(self.pointer_format, self.old, pos)[0]
        moved = (pointer + self._target_shift(pointer - self.base)) & ((1 << (8 * self.pointer_size)) - 1)
        return struct.pack(self.pointer_format, moved)

    def _is_pointer(self, value: int, mode_ok: bool) -> bool:
        target = value - self.base
        if 0 <= target <= self.n:
            return mode_ok
        return self.outside is not None and self.outside.shift(target) is not None

    def _pointer_candidates(self, start: int, end: int, step: int) -> list[tuple[int, int]]:
        """(pos, value) of the step-aligned words overlapping [start, end) whose value lies in
        the image or in the outside map's range (array scan: C speed for the bulk)."""
        first = (max(0, start - step + 1) + step - 1) & -step
        stop = min(end, self.n - step + 1)
        if stop <= first:
            return []
        stop = first + ((stop - first + step - 1) // step) * step
        words = array("I" if step == 4 else "Q", self.old[first:stop])
        if sys.byteorder != "little":
            words.byteswap()
        low, high = self.base, self.base + self.n
        if self.outside is not None and self.outside.starts:
            outside_low, outside_high = self.base + self.outside.starts[0], self.base + self.outside.end
        else:
            outside_low, outside_high = 1, 0
        return [(first + i * step, value) for i, value in enumerate(words)
                if low <= value <= high or outside_low <= value < outside_high]

    def _data_pointers(self, start: int, end: int, width: int) -> list[int]:
        """Positions of `width`-byte words overlapping [start, end) that hold pointers (in
        pointer mode 1 only to word-aligned targets); none while the load address is unknown."""
        if self.base is None:
            return []
        aligned_only = self.ptrmode == 1
        return [pos for pos, value in self._pointer_candidates(start, end, width)
                if self._is_pointer(value, not (value & 3 and aligned_only))]

    def region(self, start: int, end: int, shift: int) -> bytes:
        """old'[start:end]: old with addresses predicted for a region that lands at
        start + shift."""
        raw = old_slice(self.old, start, end)
        if end <= 0 or start >= self.n:
            return raw
        fields = self.fields(start, end)
        if not fields:
            return raw
        buf = bytearray(raw)
        for pos, kind, target in fields:
            encoded = self.value(pos, kind, target, shift)
            if encoded is None:
                continue
            if pos >= start and pos + len(encoded) <= end:
                buf[pos - start:pos - start + len(encoded)] = encoded
                continue
            low = max(pos, start)
            high = min(pos + len(encoded), end)
            if low < high:
                buf[low - start:high - start] = encoded[low - pos:high - pos]
        return bytes(buf)
