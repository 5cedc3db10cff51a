"""Thumb-2 (ARM Cortex-M) relocation: BL / B.W calls and absolute pointers in literal pools,
vector and pointer tables."""

from __future__ import annotations

import re
import struct

from .relocate_base import Field, Relocator

# Thumb-2 BL / B.W (T4): hw1 = 11110 S imm10, hw2 = 1 x J1 1 J2 imm11 (x=1: BL, x=0: B.W).
_BL = re.compile(rb"(?=[\x00-\xff][\xf0-\xf7][\x00-\xff][\x90-\x9f\xb0-\xbf\xd0-\xdf\xf0-\xff])")
PROLOGUE = re.compile(rb"(?=[\x00-\xff]\xb5|\x2d\xe9)")  # PUSH {..., lr} / PUSH.W

KIND_CALL, KIND_POINTER = 0, 1


def bl_match(old: bytes, pos: int) -> bool:
    """Whether the 4 bytes at ``pos`` are a BL / B.W instruction."""
    if pos < 0 or pos + 4 > len(old):
        return False
    return (old[pos + 1] & 0xF8) == 0xF0 and (old[pos + 3] & 0xD0) in (0x90, 0xD0)


def bl_decode(old: bytes, pos: int) -> int:
    """Branch offset of the BL / B.W at ``pos`` (relative to pos + 4)."""
    hw1 = old[pos] | old[pos + 1] << 8
    hw2 = old[pos + 2] | old[pos + 3] << 8
    s = (hw1 >> 10) & 1
    i1 = 1 ^ ((hw2 >> 13) & 1) ^ s
    i2 = 1 ^ ((hw2 >> 11) & 1) ^ s
    off = (s << 24) | (i1 << 23) | (i2 << 22) | ((hw1 & 0x3FF) << 12) | ((hw2 & 0x7FF) << 1)
    if s:
        off -= 1 << 25
    return off


def bl_encode(old: bytes, pos: int, off: int) -> bytes | None:
    """The BL / B.W at ``pos`` with branch offset ``off`` (None: not encodable)."""
    if off & 1 or not -(1 << 24) <= off < (1 << 24):
        return None
    hw1 = old[pos] | old[pos + 1] << 8
    hw2 = old[pos + 2] | old[pos + 3] << 8
    v = off & ((1 << 25) - 1)
    s = v >> 24
    i1 = (v >> 23) & 1
    i2 = (v >> 22) & 1
    j1 = 1 ^ i1 ^ s
    j2 = 1 ^ i2 ^ s
    hw1 = (hw1 & 0xF800) | (s << 10) | ((v >> 12) & 0x3FF)
    hw2 = (hw2 & 0xD000) | (j1 << 13) | (j2 << 11) | ((v >> 1) & 0x7FF)
    return struct.pack("<HH", hw1, hw2)


class ThumbRelocator(Relocator):
    """Kinds: 0 BL / B.W, 1 32-bit pointer (odd ones to code, in pointer mode 1 only those)."""

    arch = "thumb"
    code_alignment = 2
    prologue = PROLOGUE

    def inside_call(self, pos: int) -> bool:
        old = self.old
        return bl_match(old, pos - 2) or bl_match(old, pos) or bl_match(old, pos + 2)

    @staticmethod
    def code_pointer(value: int) -> int | None:
        return value - 1 if value & 1 else None  # Thumb code pointers carry bit 0

    def fields(self, start: int, end: int) -> list[Field]:
        old = self.old
        calls = set()
        for match in _BL.finditer(old, max(0, start - 7), min(self.n, end + 7)):
            pos = match.start()
            if pos & 1 or pos + 4 > self.n:
                continue
            calls.add(pos)
        out = []
        for pos in sorted(calls):
            if (pos - 2) in calls or (pos + 2) in calls:
                continue  # ambiguous overlapping candidates: leave alone
            if pos + 4 > start and pos < end:
                out.append((pos, KIND_CALL, 0))
        if self.base is not None:
            odd_only = self.ptrmode == 1
            for pos, value in self._pointer_candidates(start, end, 4):
                if self._is_pointer(value, bool(value & 1 or not odd_only)) and not self.inside_call(pos):
                    out.append((pos, KIND_POINTER, 0))
            out.sort()
        return out

    def value(self, pos: int, kind: int, target: int, shift: int) -> bytes | None:
        if kind == KIND_CALL:
            new_target = self._new_target(pos + 4 + bl_decode(self.old, pos))
            if new_target is None:
                return None
            return bl_encode(self.old, pos, new_target - (pos + shift + 4))
        return self._pointer_value(pos)

    def target(self, pos: int, kind: int, target: int) -> int:
        if kind == KIND_CALL:
            return pos + 4 + bl_decode(self.old, pos)
        return self._pointer_target(pos)
