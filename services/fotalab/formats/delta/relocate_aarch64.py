"""AArch64 relocation: B / BL, ADRP with the ADD / LDR / STR that completes its address, ADR,
and 64-bit absolute pointers."""

from __future__ import annotations

import re
import struct

from .relocate_base import Field, Relocator

# B/BL (000101/100101) and ADRP (1xx10000), matched on the most significant byte.
_TOP_BYTE = re.compile(rb"[\x14-\x17\x94-\x97\x90\xb0\xd0\xf0]")
_ADR_TOP_BYTE = re.compile(rb"[\x10\x30\x50\x70]")  # ADR: 0xx10000
_PAIR_WINDOW = 16  # instructions searched after an ADRP for its ADD/LDR/STR
PROLOGUE = re.compile(rb"(?=\xfd\x7b[\x00-\xff]\xa9)")  # STP x29, x30, [sp, #-n]!

KIND_BRANCH, KIND_ADRP, KIND_POINTER, KIND_LO12, KIND_ADR = 0, 1, 2, 3, 4


def _lo12_kind(word: int) -> int:
    """1 + log2(scale) for ADD/LDR/STR with a 12-bit unsigned immediate, 0 otherwise."""
    if (word & 0xFFC00000) == 0x91000000:  # ADD Xd, Xn, #imm12
        return 1
    top = word & 0xFFC00000
    if top in (0xF9400000, 0xF9000000):  # LDR/STR Xt, [Xn, #imm12*8]
        return 4
    if top in (0xB9400000, 0xB9000000):  # LDR/STR Wt, [Xn, #imm12*4]
        return 3
    if top in (0x39400000, 0x39000000):  # LDRB/STRB
        return 1
    return 0


def _adr_imm(word: int) -> int:
    """The signed 21-bit immediate of ADR / ADRP (bytes for ADR, pages for ADRP)."""
    imm = ((word >> 29) & 3) | (((word >> 5) & 0x7FFFF) << 2)
    return imm - (1 << 21) if imm & (1 << 20) else imm


def _with_adr_imm(word: int, imm: int) -> int:
    """ADR / ADRP ``word`` with its 21-bit immediate replaced by ``imm`` (in range)."""
    imm &= (1 << 21) - 1
    return (word & 0x9F00001F) | ((imm & 3) << 29) | ((imm >> 2) << 5)


def _branch_offset(word: int) -> int:
    """The byte offset of B / BL (signed 26-bit word count)."""
    imm = word & 0x3FFFFFF
    return (imm - (1 << 26) if imm & 0x2000000 else imm) * 4


class Aarch64Relocator(Relocator):
    """Kinds: 0 B/BL, 1 ADRP, 2 64-bit pointer, 3 ADD/LDR/STR low 12 bits of an ADRP pair,
    4 ADR."""

    arch = "aarch64"
    pointer_size = 8
    pointer_format = "<Q"
    prologue = PROLOGUE

    def fields(self, start: int, end: int) -> list[Field]:
        old = self.old
        n = self.n
        unpack = struct.unpack_from
        out = []
        adrps = []
        scan_from = max(0, start - _PAIR_WINDOW * 4 - 4)
        for match in _TOP_BYTE.finditer(old, scan_from + 3, min(n, end + 3)):
            pos = match.start() - 3
            if pos & 3:
                continue
            word = unpack("<I", old, pos)[0]
            opcode = word >> 26
            if opcode == 0x05 or opcode == 0x25:
                if pos + 4 > start and pos < end:
                    out.append((pos, KIND_BRANCH, 0))
            elif (word & 0x9F000000) == 0x90000000:
                adrps.append((pos, word))
        consumers: dict[int, int] = {}
        for pos, word in adrps:
            page = ((pos + self.pbase) & ~0xFFF) + (_adr_imm(word) << 12) - self.pbase
            register = word & 31
            first = None
            next_pos = pos + 4
            stop = min(n - 3, pos + 4 + _PAIR_WINDOW * 4)
            while next_pos < stop:
                next_word = unpack("<I", old, next_pos)[0]
                lo12_kind = _lo12_kind(next_word)
                if lo12_kind and ((next_word >> 5) & 31) == register:
                    target = page + (((next_word >> 10) & 0xFFF) << (lo12_kind - 1))
                    if first is None:
                        first = target
                    consumers[next_pos] = target  # later ADRPs overwrite: the nearest one wins
                    if (next_word & 31) == register and (next_word & 0x00400000 or lo12_kind == 1):
                        break  # the pair's register is overwritten (ADD or load into it)
                elif (next_word & 0x9F000000) == 0x90000000 and (next_word & 31) == register:
                    break
                next_pos += 4
            if pos + 4 > start and pos < end:
                out.append((pos, KIND_ADRP, page if first is None else first))
        for pos, target in consumers.items():
            if pos + 4 > start and pos < end:
                out.append((pos, KIND_LO12, target))
        for match in _ADR_TOP_BYTE.finditer(old, max(0, start - 3) + 3, min(n, end + 3)):
            pos = match.start() - 3
            if pos & 3 or pos + 4 > n:
                continue
            word = unpack("<I", old, pos)[0]
            if (word & 0x9F000000) == 0x10000000 and pos + 4 > start and pos < end:
                out.append((pos, KIND_ADR, 0))
        out += [(pos, KIND_POINTER, 0) for pos in self._data_pointers(start, end, 8)]
        out.sort()
        return out

    def value(self, pos: int, kind: int, target: int, shift: int) -> bytes | None:
        if kind == KIND_POINTER:
            return self._pointer_value(pos)
        word = struct.unpack_from("<I", self.old, pos)[0]
        if kind in (KIND_BRANCH, KIND_ADR):
            target = self.target(pos, kind, target)
        new_target = self._new_target(target)
        if new_target is None:
            return None
        if kind == KIND_BRANCH:
            distance = new_target - (pos + shift)
            if distance & 3 or not -(1 << 27) <= distance < (1 << 27):
                return None
            return struct.pack("<I", (word & 0xFC000000) | ((distance >> 2) & 0x3FFFFFF))
        if kind == KIND_ADR:
            distance = new_target - (pos + shift)
            if not -(1 << 20) <= distance < (1 << 20):
                return None
            return struct.pack("<I", _with_adr_imm(word, distance))
        if kind == KIND_ADRP:
            pages = ((new_target + self.pbase) >> 12) - ((pos + shift + self.pbase) >> 12)
            if not -(1 << 20) <= pages < (1 << 20):
                return None
            return struct.pack("<I", _with_adr_imm(word, pages))
        scale = _lo12_kind(word) - 1  # KIND_LO12
        lo12 = (new_target + self.pbase) & 0xFFF
        if lo12 & ((1 << scale) - 1):
            return None
        return struct.pack("<I", (word & 0xFFC003FF) | ((lo12 >> scale) << 10))

    def target(self, pos: int, kind: int, target: int) -> int:
        if kind == KIND_POINTER:
            return self._pointer_target(pos)
        word = struct.unpack_from("<I", self.old, pos)[0]
        if kind == KIND_BRANCH:
            return pos + _branch_offset(word)
        if kind == KIND_ADR:
            return pos + _adr_imm(word)
        return target
