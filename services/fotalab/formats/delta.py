"""Delta encodings for firmware images.

Every encoding turns ``(old, new)`` into bytes from which ``new`` is rebuilt given ``old``.
Generation (``candidates`` / ``best_delta``) runs on the signer; ``apply_delta`` /
``apply_delta_to`` run on the device and treat their input as hostile: any malformed,
truncated or bit-flipped delta raises :class:`DeltaError`, the output never exceeds the size
declared in the delta nor ``max_output``, and memory stays bounded (decoder dictionaries are
capped by the declared output size, output is produced in chunks of ``CHUNK`` bytes).

Encodings (see docs/deltas.md for the figures):

``bsdiff4``
    The plain BSDIFF40 format of the ``bsdiff4`` package (three bz2 streams). Parsed and applied
    here in Python, never handed to the C patcher, so crafted control values cannot hurt.
``bsdiff-lzma``
    bsdiff's control/diff/extra streams, control re-encoded as varints, each stream compressed
    with raw LZMA2 (tuned literal/position bits) in the versioned ``FOTD`` container.
``thumb-lzma`` / ``aarch64-lzma`` / ``xtensa-lzma``
    As ``bsdiff-lzma`` but the diff is taken against a *relocated* old image: every
    PC-relative call/branch (Thumb-2 BL/B.W; AArch64 BL/B, ADRP+ADD/LDR/STR, ADR; Xtensa
    CALL0/CALL8) and every absolute pointer (literal pools, vector and pointer tables) of the
    old image is rewritten to where its target moved in the new image. The move map is derived
    from the control stream itself (old offset -> shift of the long matches that cover it), so
    it costs no bytes; the load address and a learned map of moves outside the image (RAM
    variables) travel in the header. Moved code then differs only where it really changed,
    the same idea as xz's BCJ filters and detools' data formats.
``full-lzma``
    The whole new image compressed with raw LZMA2 (optionally behind xz's ARM-Thumb BCJ
    filter). ``old`` is ignored.
"""

from __future__ import annotations

import bisect
import bz2
import lzma
import re
import struct
import sys
import zlib
from array import array
from collections.abc import Callable, Iterator
from dataclasses import dataclass

__all__ = [
    "CHUNK",
    "Delta",
    "DeltaError",
    "ENCODINGS",
    "FORMAT_VERSION",
    "MAGIC",
    "apply_delta",
    "apply_delta_to",
    "best_delta",
    "candidates",
    "encode",
]


class DeltaError(ValueError):
    """A delta that cannot be applied; the message says what was wrong and what to do."""


@dataclass(frozen=True)
class Delta:
    encoding: str
    data: bytes

    def __len__(self) -> int:
        return len(self.data)


MAGIC = b"FOTD"
FORMAT_VERSION = 1
_HEADER = 10  # magic (4), format version (1), encoding id (1), CRC-32 of the rest (4)
CHUNK = 1 << 16  # output is produced and written in pieces of at most this many bytes

_ENC_IDS = {"bsdiff-lzma": 1, "thumb-lzma": 2, "aarch64-lzma": 3, "full-lzma": 4, "xtensa-lzma": 5}
_ID_ENCS = {v: k for k, v in _ENC_IDS.items()}
ENCODINGS: tuple[str, ...] = ("bsdiff4", "bsdiff-lzma", "thumb-lzma", "aarch64-lzma", "xtensa-lzma",
                              "full-lzma")
_ARCHS = {"thumb-lzma": "thumb", "aarch64-lzma": "aarch64", "xtensa-lzma": "xtensa"}

_MAX_DICT = 1 << 26  # hard cap of any LZMA2 dictionary a delta may ask for
# Dictionaries the encoder uses: the decoder allocates them, so they bound the device's RAM.
# Measured: 256 KiB loses nothing on the delta streams, 1 MiB costs < 0.2% on an 8 MiB image.
_STREAM_DICT = 1 << 18
_IMAGE_DICT = 1 << 20
_MAX_CTRL_BYTES = 30  # upper bound of one varint-encoded control tuple
_MAX_OUT_STEPS = 1 << 16  # most steps an outside-address map may have
_SAMPLE = 2 << 20  # architecture and load-address guesses look at the first 2 MiB only
_MINSEG_MIN = 12  # shortest match a delta may let into the move map (bounds its size)
_MIN_ARCH_SCORE = 0.2  # below this an image is not treated as code of that architecture
_BCJ_NONE, _BCJ_ARMTHUMB = 0, 1


def _fail(what: str) -> DeltaError:
    return DeltaError(
        f"{what}; the delta is corrupt or was made for another base image "
        "- discard it and download it again, or fall back to the full image"
    )


# --------------------------------------------------------------------------- varints


def _uvarint(n: int) -> bytes:
    if n < 0:
        raise ValueError("uvarint of a negative number")
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _svarint(n: int) -> bytes:
    return _uvarint(_zz(n))


class _Cursor:
    """Bounded reader over a bytes-like object; every overrun is a DeltaError."""

    __slots__ = ("buf", "pos", "end", "what")

    def __init__(self, buf, pos: int = 0, end: int | None = None, what: str = "header") -> None:
        self.buf = buf
        self.pos = pos
        self.end = len(buf) if end is None else end
        self.what = what

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > self.end:
            raise _fail(f"truncated {self.what}")
        b = bytes(self.buf[self.pos:self.pos + n])
        self.pos += n
        return b

    def uvarint(self, limit: int = 1 << 63) -> int:
        shift = 0
        value = 0
        for _ in range(10):
            if self.pos >= self.end:
                raise _fail(f"truncated {self.what}")
            b = self.buf[self.pos]
            self.pos += 1
            value |= (b & 0x7F) << shift
            if not b & 0x80:
                if value > limit:
                    raise _fail(f"value {value} out of range in {self.what}")
                return value
            shift += 7
        raise _fail(f"overlong varint in {self.what}")

    def svarint(self, limit: int = 1 << 62) -> int:
        u = self.uvarint(limit << 1 | 1)
        return (u >> 1) ^ -(u & 1)


# --------------------------------------------------------------------------- byte arithmetic


_mask_cache: dict[int, tuple[int, int]] = {}


def _masks(n: int) -> tuple[int, int]:
    m = _mask_cache.get(n)
    if m is None:
        hi = int.from_bytes(b"\x80" * n, "little")
        lo = int.from_bytes(b"\x7f" * n, "little")
        m = (hi, lo)
        if n in (CHUNK, 4096) or len(_mask_cache) < 8:
            _mask_cache[n] = m
    return m


def _add_bytes(a: bytes, b: bytes) -> bytes:
    """Bytewise (a + b) mod 256 of two equal-length strings (SWAR on Python ints)."""
    n = len(a)
    if n == 0:
        return b""
    hi, lo = _masks(n)
    x = int.from_bytes(a, "little")
    y = int.from_bytes(b, "little")
    return (((x & lo) + (y & lo)) ^ ((x ^ y) & hi)).to_bytes(n, "little")


def _sub_bytes(a: bytes, b: bytes) -> bytes:
    """Bytewise (a - b) mod 256 of two equal-length strings."""
    n = len(a)
    if n == 0:
        return b""
    hi, lo = _masks(n)
    x = int.from_bytes(a, "little")
    y = int.from_bytes(b, "little")
    return (((x | hi) - (y & lo)) ^ ((x ^ y ^ hi) & hi)).to_bytes(n, "little")


def _old_slice(old, a: int, b: int) -> bytes:
    """old[a:b] with bytes outside the image read as zero (bspatch semantics)."""
    n = len(old)
    if a >= 0 and b <= n:
        return bytes(old[a:b])
    lo, hi = max(a, 0), min(b, n)
    if lo >= hi:
        return bytes(b - a)
    return bytes(lo - a) + bytes(old[lo:hi]) + bytes(b - hi)


# --------------------------------------------------------------------------- move map


class _MoveMap:
    """Old offset -> shift (new - old) derived from the long matches of a control stream."""

    __slots__ = ("starts", "shifts")

    def __init__(self, segs: list[tuple[int, int, int]]) -> None:
        """segs: (old start, shift, length) of the long matches. Where matches overlap in the
        old image the longest wins (ties: the earliest start, then the first listed); gaps
        keep the shift of what precedes them."""
        import heapq

        events = []
        for i, (start, shift, length) in enumerate(segs):
            events.append((start, 1, i))
            events.append((start + length, 0, i))
        events.sort()
        heap: list[tuple[int, int, int]] = []
        ended = set()
        starts: list[int] = []
        shifts: list[int] = []
        k = 0
        while k < len(events):
            pos = events[k][0]
            while k < len(events) and events[k][0] == pos:
                _, opening, i = events[k]
                if opening:
                    heapq.heappush(heap, (-segs[i][2], segs[i][0], i))
                else:
                    ended.add(i)
                k += 1
            while heap and heap[0][2] in ended:
                heapq.heappop(heap)
            if heap:
                shift = segs[heap[0][2]][1]
                if not shifts or shifts[-1] != shift:
                    starts.append(pos)
                    shifts.append(shift)
        self.starts = starts
        self.shifts = shifts

    @classmethod
    def from_controls(cls, controls, minseg: int) -> _MoveMap:
        segs = []
        oldpos = newpos = 0
        for x, y, z in controls:
            if x >= minseg:
                segs.append((oldpos, newpos - oldpos, x))
            newpos += x + y
            oldpos += x + z
        return cls(segs)

    def shift(self, t: int) -> int:
        if not self.starts:
            return 0
        i = bisect.bisect_right(self.starts, t) - 1
        return self.shifts[i if i >= 0 else 0]


class _OutMap:
    """Shifts of addresses outside the image (RAM variables, data past the image end), learned
    by the signer from the pair and carried in the header as (start, shift) steps over
    [starts[0], end)."""

    __slots__ = ("starts", "shifts", "end")

    def __init__(self, starts: list[int], shifts: list[int], end: int) -> None:
        self.starts = starts
        self.shifts = shifts
        self.end = end

    def shift(self, t: int) -> int | None:
        if not self.starts or not self.starts[0] <= t < self.end:
            return None
        return self.shifts[bisect.bisect_right(self.starts, t) - 1]

    def to_fields(self) -> list[int]:
        out = [len(self.starts)]
        prev = 0
        for st, sh in zip(self.starts, self.shifts):
            out += [_zz(st - prev), _zz(sh)]
            prev = st
        if self.starts:
            out.append(self.end - prev)
        return out


def _zz(n: int) -> int:
    return n << 1 if n >= 0 else ((-n) << 1) - 1


def _read_outmap(c: _Cursor) -> _OutMap | None:
    k = c.uvarint(_MAX_OUT_STEPS)
    if not k:
        return None
    starts, shifts = [], []
    prev = 0
    for _ in range(k):
        st = prev + c.svarint(1 << 62)
        if starts and st <= starts[-1]:
            raise _fail("address map steps are not increasing")
        starts.append(st)
        shifts.append(c.svarint(1 << 62))
        prev = st
    end = prev + c.uvarint(1 << 62)
    return _OutMap(starts, shifts, end)


# --------------------------------------------------------------------------- relocation filters

# Thumb-2 BL / B.W (T4): hw1 = 11110 S imm10, hw2 = 1 x J1 1 J2 imm11 (x=1: BL, x=0: B.W).
_THUMB_BL = re.compile(rb"(?=[\x00-\xff][\xf0-\xf7][\x00-\xff][\x90-\x9f\xb0-\xbf\xd0-\xdf\xf0-\xff])")
# AArch64 B/BL (000101/100101) and ADRP (1xx10000), matched on the most significant byte.
_A64_TOP = re.compile(rb"[\x14-\x17\x94-\x97\x90\xb0\xd0\xf0]")
_A64_ADR = re.compile(rb"[\x10\x30\x50\x70]")  # ADR: 0xx10000
_A64_PAIR_WINDOW = 16  # instructions searched after an ADRP for its ADD/LDR/STR


def _thumb_bl_match(old, p: int) -> bool:
    if p < 0 or p + 4 > len(old):
        return False
    return (old[p + 1] & 0xF8) == 0xF0 and (old[p + 3] & 0xD0) in (0x90, 0xD0)


def _thumb_bl_decode(old, p: int) -> int:
    hw1 = old[p] | old[p + 1] << 8
    hw2 = old[p + 2] | old[p + 3] << 8
    s = (hw1 >> 10) & 1
    i1 = 1 ^ ((hw2 >> 13) & 1) ^ s
    i2 = 1 ^ ((hw2 >> 11) & 1) ^ s
    off = (s << 24) | (i1 << 23) | (i2 << 22) | ((hw1 & 0x3FF) << 12) | ((hw2 & 0x7FF) << 1)
    if s:
        off -= 1 << 25
    return off


def _thumb_bl_encode(old, p: int, off: int) -> bytes | None:
    if off & 1 or not -(1 << 24) <= off < (1 << 24):
        return None
    hw1 = old[p] | old[p + 1] << 8
    hw2 = old[p + 2] | old[p + 3] << 8
    v = off & ((1 << 25) - 1)
    s = v >> 24
    i1 = (v >> 23) & 1
    i2 = (v >> 22) & 1
    j1 = 1 ^ i1 ^ s
    j2 = 1 ^ i2 ^ s
    hw1 = (hw1 & 0xF800) | (s << 10) | ((v >> 12) & 0x3FF)
    hw2 = (hw2 & 0xD000) | (j1 << 13) | (j2 << 11) | ((v >> 1) & 0x7FF)
    return struct.pack("<HH", hw1, hw2)


class _Relocator:
    """Rewrites the old image's addresses to where they are predicted to be in the new one.

    Field detection is context-free (depends only on a few bytes around each position), so a
    region gives the same result whether it is processed whole or in chunks, on the signer
    and on the device alike.
    """

    def __init__(self, arch: str, old, base: int | None, mm: _MoveMap, ptrmode: int = 2,
                 out: _OutMap | None = None) -> None:
        self.arch = arch
        self.old = old
        # ptrmode 0: no absolute pointers; 1: only code-like ones (Thumb: odd, AArch64:
        # 4-aligned); 2: every aligned word whose value lands in the image. Pointers into
        # the outside map's range are taken whatever the mode (when there is a base).
        self.base = base if ptrmode else None
        self.pbase = base or 0  # load address: ADRP page arithmetic uses absolute addresses
        self.ptrmode = ptrmode
        self.mm = mm
        self.out = out
        self.n = len(old)

    def _tshift(self, t: int) -> int | None:
        """Predicted move of old offset t (None: leave the field alone)."""
        if 0 <= t <= self.n:
            return self.mm.shift(t)
        if self.out is not None:
            return self.out.shift(t)
        return None

    def _is_ptr(self, v: int, mode_ok: bool) -> bool:
        t = v - self.base
        if 0 <= t <= self.n:
            return mode_ok
        return self.out is not None and self.out.shift(t) is not None

    def _ptr_candidates(self, a: int, b: int, step: int):
        """(pos, value) of the step-aligned words overlapping [a, b) whose value lies in the
        image or in the outside map's range (array scan: C speed for the bulk)."""
        q0 = (max(0, a - step + 1) + step - 1) & -step
        q1 = min(b, self.n - step + 1)
        if q1 <= q0:
            return []
        q1 = q0 + ((q1 - q0 + step - 1) // step) * step
        words = array("I" if step == 4 else "Q", self.old[q0:q1])
        if sys.byteorder != "little":
            words.byteswap()
        lo, hi = self.base, self.base + self.n
        if self.out is not None and self.out.starts:
            olo, ohi = self.base + self.out.starts[0], self.base + self.out.end
        else:
            olo, ohi = 1, 0
        return [(q0 + i * step, v) for i, v in enumerate(words) if lo <= v <= hi or olo <= v < ohi]

    def _data_pointers(self, a: int, b: int, width: int) -> list[int]:
        """Positions of `width`-byte words overlapping [a, b) that hold pointers (in pointer
        mode 1 only to word-aligned targets); none while the load address is unknown."""
        if self.base is None:
            return []
        aligned_only = self.ptrmode == 1
        return [q for q, v in self._ptr_candidates(a, b, width) if self._is_ptr(v, not (v & 3 and aligned_only))]

    # ---- Thumb
    def _thumb_fields(self, a: int, b: int):
        """Yield (pos, kind) of fields whose bytes overlap [a, b)."""
        old = self.old
        lo = max(0, a - 7)
        hi = min(self.n, b + 7)
        bl = set()
        for m in _THUMB_BL.finditer(old, lo, hi):
            p = m.start()
            if p & 1 or p + 4 > self.n:
                continue
            bl.add(p)
        out = []
        for p in sorted(bl):
            if (p - 2) in bl or (p + 2) in bl:
                continue  # ambiguous overlapping candidates: leave alone
            if p + 4 > a and p < b:
                out.append((p, 0, 0))
        if self.base is not None:
            odd_only = self.ptrmode == 1
            for q, v in self._ptr_candidates(a, b, 4):
                if self._is_ptr(v, bool(v & 1 or not odd_only)):
                    if not (_thumb_bl_match(old, q - 2) or _thumb_bl_match(old, q)
                            or _thumb_bl_match(old, q + 2)):
                        out.append((q, 1, 0))
            out.sort()
        return out

    def _thumb_value(self, p: int, kind: int, t: int, s_cur: int) -> bytes | None:
        old = self.old
        if kind == 0:
            off = _thumb_bl_decode(old, p)
            t = p + 4 + off
            sh = self._tshift(t)
            if sh is None:
                return None
            return _thumb_bl_encode(old, p, t + sh - (p + s_cur + 4))
        v = struct.unpack_from("<I", old, p)[0]
        v2 = (v + self._tshift(v - self.base)) & 0xFFFFFFFF
        return struct.pack("<I", v2)

    # ---- AArch64
    def _a64_fields(self, a: int, b: int):
        """(pos, kind, target) of fields overlapping [a, b). Kinds: 0 B/BL, 1 ADRP,
        2 64-bit pointer, 3 ADD/LDR/STR low 12 bits of an ADRP pair, 4 ADR."""
        old = self.old
        n = self.n
        unpack = struct.unpack_from
        out = []
        adrps = []
        lo = max(0, a - _A64_PAIR_WINDOW * 4 - 4)
        for m in _A64_TOP.finditer(old, lo + 3, min(n, b + 3)):
            p = m.start() - 3
            if p & 3:
                continue
            w = unpack("<I", old, p)[0]
            op = w >> 26
            if op == 0x05 or op == 0x25:
                if p + 4 > a and p < b:
                    out.append((p, 0, 0))
            elif (w & 0x9F000000) == 0x90000000:
                adrps.append((p, w))
        consumers: dict[int, int] = {}
        for p, w in adrps:
            imm = ((w >> 29) & 3) | (((w >> 5) & 0x7FFFF) << 2)
            if imm & (1 << 20):
                imm -= 1 << 21
            page = ((p + self.pbase) & ~0xFFF) + (imm << 12) - self.pbase
            rd = w & 31
            first = None
            q = p + 4
            stop = min(n - 3, p + 4 + _A64_PAIR_WINDOW * 4)
            while q < stop:
                w2 = unpack("<I", old, q)[0]
                k = _a64_lo12_kind(w2)
                if k and ((w2 >> 5) & 31) == rd:
                    t = page + (((w2 >> 10) & 0xFFF) << (k - 1))
                    if first is None:
                        first = t
                    consumers[q] = t  # later ADRPs overwrite: the nearest one wins
                    if (w2 & 31) == rd and (w2 & 0x00400000 or k == 1):
                        break  # the pair's register is overwritten (ADD or load into it)
                elif (w2 & 0x9F000000) == 0x90000000 and (w2 & 31) == rd:
                    break
                q += 4
            if p + 4 > a and p < b:
                out.append((p, 1, page if first is None else first))
        for q, t in consumers.items():
            if q + 4 > a and q < b:
                out.append((q, 3, t))
        for m in _A64_ADR.finditer(old, max(0, a - 3) + 3, min(n, b + 3)):
            p = m.start() - 3
            if p & 3 or p + 4 > n:
                continue
            w = unpack("<I", old, p)[0]
            if (w & 0x9F000000) == 0x10000000 and p + 4 > a and p < b:
                out.append((p, 4, 0))
        out += [(q, 2, 0) for q in self._data_pointers(a, b, 8)]
        out.sort()
        return out

    def _a64_value(self, p: int, kind: int, t: int, s_cur: int) -> bytes | None:
        old = self.old
        w = struct.unpack_from("<I", old, p)[0]
        if kind == 0:
            imm = w & 0x3FFFFFF
            if imm & 0x2000000:
                imm -= 1 << 26
            t = p + imm * 4
            sh = self._tshift(t)
            if sh is None:
                return None
            d = t + sh - (p + s_cur)
            if d & 3 or not -(1 << 27) <= d < (1 << 27):
                return None
            return struct.pack("<I", (w & 0xFC000000) | ((d >> 2) & 0x3FFFFFF))
        if kind == 1:
            sh = self._tshift(t)
            if sh is None:
                return None
            t2 = t + sh
            pages = ((t2 + self.pbase) >> 12) - ((p + s_cur + self.pbase) >> 12)
            if not -(1 << 20) <= pages < (1 << 20):
                return None
            pages &= (1 << 21) - 1
            return struct.pack("<I", (w & 0x9F00001F) | ((pages & 3) << 29) | ((pages >> 2) << 5))
        if kind == 3:
            sh = self._tshift(t)
            if sh is None:
                return None
            scale = _a64_lo12_kind(w) - 1
            lo12 = (t + sh + self.pbase) & 0xFFF
            if lo12 & ((1 << scale) - 1):
                return None
            return struct.pack("<I", (w & 0xFFC003FF) | ((lo12 >> scale) << 10))
        if kind == 4:
            imm = ((w >> 29) & 3) | (((w >> 5) & 0x7FFFF) << 2)
            if imm & (1 << 20):
                imm -= 1 << 21
            t = p + imm
            sh = self._tshift(t)
            if sh is None:
                return None
            d = t + sh - (p + s_cur)
            if not -(1 << 20) <= d < (1 << 20):
                return None
            d &= (1 << 21) - 1
            return struct.pack("<I", (w & 0x9F00001F) | ((d & 3) << 29) | ((d >> 2) << 5))
        v = struct.unpack_from("<Q", old, p)[0]
        v2 = (v + self._tshift(v - self.base)) & 0xFFFFFFFFFFFFFFFF
        return struct.pack("<Q", v2)

    def target(self, p: int, kind: int, t: int) -> int:
        """Old offset a field refers to (what _tshift is asked about)."""
        old = self.old
        if self.arch == "thumb":
            if kind == 0:
                return p + 4 + _thumb_bl_decode(old, p)
            return struct.unpack_from("<I", old, p)[0] - self.base
        if self.arch == "xtensa":
            if kind == 0:
                return _xt_decode(old, p)
            return struct.unpack_from("<I", old, p)[0] - self.base
        w = struct.unpack_from("<I", old, p)[0]
        if kind == 0:
            imm = w & 0x3FFFFFF
            return p + (imm - (1 << 26) if imm & 0x2000000 else imm) * 4
        if kind == 4:
            imm = ((w >> 29) & 3) | (((w >> 5) & 0x7FFFF) << 2)
            return p + (imm - (1 << 21) if imm & (1 << 20) else imm)
        if kind == 2:
            return struct.unpack_from("<Q", old, p)[0] - self.base
        return t

    def fields(self, a: int, b: int):
        if self.arch == "thumb":
            return self._thumb_fields(a, b)
        if self.arch == "aarch64":
            return self._a64_fields(a, b)
        return self._xt_fields(a, b)

    # ---- Xtensa (ESP8266/ESP32): CALL0/CALL8, 3 bytes at any byte offset, and 32-bit pointers
    def _xt_popular(self) -> set:
        """Targets called from at least two places: only calls to those are relocated (a CALL
        pattern matches 1 byte in 32 of anything; real calls share their targets)."""
        pop = getattr(self, "_xt_pop", None)
        if pop is None:
            import collections

            old, n = self.old, self.n
            count: collections.Counter = collections.Counter()
            for m in _XT_CALL.finditer(old, 0, max(0, n - 2)):
                count[_xt_decode(old, m.start())] += 1
            pop = self._xt_pop = {t for t, c in count.items() if c >= 2 and 0 <= t < n}
        return pop

    def _xt_fields(self, a: int, b: int):
        old, n = self.old, self.n
        pop = self._xt_popular()
        cands = [m.start() for m in _XT_CALL.finditer(old, max(0, a - 4), max(0, min(n - 2, b + 2)))
                 if _xt_decode(old, m.start()) in pop]
        out = []
        for i, p in enumerate(cands):
            if (i and cands[i - 1] >= p - 2) or (i + 1 < len(cands) and cands[i + 1] <= p + 2):
                continue  # overlapping candidates: leave alone
            if p + 3 > a and p < b:
                out.append((p, 0, 0))
        out += [(q, 1, 0) for q in self._data_pointers(a, b, 4)]
        out.sort()
        return out

    def _xt_value(self, p: int, kind: int, t: int, s_cur: int) -> bytes | None:
        old = self.old
        if kind == 0:
            t = _xt_decode(old, p)
            sh = self._tshift(t)
            if sh is None:
                return None
            d = t + sh - (((p + s_cur) & ~3) + 4)
            if d & 3 or not -(1 << 19) <= d < (1 << 19):
                return None
            v = (old[p] & 0x3F) | (((d >> 2) & 0x3FFFF) << 6)
            return bytes((v & 0xFF, (v >> 8) & 0xFF, v >> 16))
        v = struct.unpack_from("<I", old, p)[0]
        return struct.pack("<I", (v + self._tshift(v - self.base)) & 0xFFFFFFFF)

    def region(self, a: int, b: int, s_cur: int) -> bytes:
        """old'[a:b]: old with addresses predicted for a region that lands at a + s_cur."""
        raw = _old_slice(self.old, a, b)
        if b <= 0 or a >= self.n:
            return raw
        fields = self.fields(a, b)
        value = {"thumb": self._thumb_value, "aarch64": self._a64_value}.get(self.arch, self._xt_value)
        if not fields:
            return raw
        buf = bytearray(raw)
        for p, kind, t in fields:
            enc = value(p, kind, t, s_cur)
            if enc is None:
                continue
            if p >= a and p + len(enc) <= b:
                buf[p - a:p - a + len(enc)] = enc
                continue
            lo = max(p, a)
            hi = min(p + len(enc), b)
            if lo < hi:
                buf[lo - a:hi - a] = enc[lo - p:hi - p]
        return bytes(buf)


_XT_CALL = re.compile(rb"[\x05\x45\x85\xc5\x25\x65\xa5\xe5]")  # CALL0 / CALL8 first byte


def _xt_decode(old, p: int) -> int:
    """Target of the Xtensa CALLn at p: (p & ~3) + 4 + 4 * signed 18-bit offset."""
    v = old[p] | old[p + 1] << 8 | old[p + 2] << 16
    off = v >> 6
    if off & (1 << 17):
        off -= 1 << 18
    return (p & ~3) + (off << 2) + 4


def _a64_lo12_kind(w2: int) -> int:
    """1 + log2(scale) for ADD/LDR/STR with a 12-bit unsigned immediate, 0 otherwise."""
    if (w2 & 0xFFC00000) == 0x91000000:  # ADD Xd, Xn, #imm12
        return 1
    top = w2 & 0xFFC00000
    if top in (0xF9400000, 0xF9000000):  # LDR/STR Xt, [Xn, #imm12*8]
        return 4
    if top in (0xB9400000, 0xB9000000):  # LDR/STR Wt, [Xn, #imm12*4]
        return 3
    if top in (0x39400000, 0x39000000):  # LDRB/STRB
        return 1
    return 0


# --------------------------------------------------------------------------- LZMA helpers

_LZMA_PROPS = ((3, 0, 2), (0, 0, 0), (1, 1, 1), (0, 2, 2), (3, 1, 1), (0, 1, 1))


def _lzma(data: bytes, bcj: int = _BCJ_NONE, tune: bool = True,
          preset: int = 9 | lzma.PRESET_EXTREME, dict_max: int = 1 << 26) -> tuple[int, bytes]:
    """Raw LZMA2 of ``data``; returns (dict_size, stream). ``tune`` tries a few lc/lp/pb."""
    dict_size = max(4096, min((len(data) + 4095) & ~4095, dict_max))
    best = None
    props = _LZMA_PROPS if tune and len(data) >= 256 else _LZMA_PROPS[:1]
    for lc, lp, pb in props:
        filters = [{"id": lzma.FILTER_LZMA2, "preset": preset,
                    "dict_size": dict_size, "lc": lc, "lp": lp, "pb": pb}]
        if bcj == _BCJ_ARMTHUMB:
            filters.insert(0, {"id": lzma.FILTER_ARMTHUMB})
        out = lzma.compress(data, format=lzma.FORMAT_RAW, filters=filters)
        if best is None or len(out) < len(best):
            best = out
    return dict_size, best


class _LzmaReader:
    """Incremental raw-LZMA2 reader: read(n) returns exactly n bytes or raises DeltaError."""

    def __init__(self, stream: bytes, dict_size: int, what: str, bcj: int = _BCJ_NONE) -> None:
        filters = [{"id": lzma.FILTER_LZMA2, "dict_size": dict_size}]
        if bcj == _BCJ_ARMTHUMB:
            filters.insert(0, {"id": lzma.FILTER_ARMTHUMB})
        try:
            self._d = lzma.LZMADecompressor(format=lzma.FORMAT_RAW, filters=filters)
        except (lzma.LZMAError, ValueError) as e:
            raise _fail(f"bad {what} stream parameters ({e})") from None
        self._pending = stream
        self.what = what

    def read(self, n: int) -> bytes:
        parts = []
        need = n
        while need > 0:
            if self._d.eof:
                raise _fail(f"{self.what} stream ended early")
            data, self._pending = self._pending, b""
            if not data and self._d.needs_input:
                raise _fail(f"truncated {self.what} stream")
            try:
                got = self._d.decompress(data, max_length=need)
            except (lzma.LZMAError, EOFError) as e:
                raise _fail(f"corrupt {self.what} stream ({e})") from None
            if got:
                parts.append(got)
                need -= len(got)
        return b"".join(parts)

    def read_upto(self, n: int) -> bytes:
        """Up to n bytes (at least one unless the stream has ended)."""
        while not self._d.eof:
            data, self._pending = self._pending, b""
            if not data and self._d.needs_input:
                raise _fail(f"truncated {self.what} stream")
            try:
                got = self._d.decompress(data, max_length=n)
            except (lzma.LZMAError, EOFError) as e:
                raise _fail(f"corrupt {self.what} stream ({e})") from None
            if got:
                return got
        return b""

    def finish(self) -> None:
        if not self._d.eof:
            try:
                rest = self._d.decompress(self._pending, max_length=1)
            except (lzma.LZMAError, EOFError) as e:
                raise _fail(f"corrupt {self.what} stream ({e})") from None
            self._pending = b""
            if rest or not self._d.eof:
                raise _fail(f"{self.what} stream has more data than the control stream uses")
        if self._d.unused_data or self._pending:
            raise _fail(f"trailing bytes after the {self.what} stream")


class _Bz2Reader:
    """Incremental bz2 reader with the same contract as _LzmaReader."""

    def __init__(self, stream: bytes, what: str) -> None:
        self._d = bz2.BZ2Decompressor()
        self._pending = stream
        self.what = what

    def _more(self, need: int) -> bytes:
        data, self._pending = self._pending, b""
        try:
            return self._d.decompress(data, max_length=need)
        except (OSError, EOFError, ValueError) as e:
            raise _fail(f"corrupt bz2 {self.what} stream ({e})") from None

    def read(self, n: int) -> bytes:
        parts = []
        need = n
        while need > 0:
            if self._d.eof:
                raise _fail(f"bz2 {self.what} stream ended early")
            if not self._pending and self._d.needs_input:
                raise _fail(f"truncated bz2 {self.what} stream")
            got = self._more(need)
            if got:
                parts.append(got)
                need -= len(got)
        return b"".join(parts)

    def read_or_end(self, n: int) -> bytes | None:
        """n bytes, or None at the clean end of the stream."""
        if not self._d.eof:
            if not self._pending and self._d.needs_input:
                raise _fail(f"truncated bz2 {self.what} stream")
            first = self._more(n)
            if not first and self._d.eof:
                return None
            if len(first) < n:
                first += self.read(n - len(first))
            return first
        return None

    def finish(self) -> None:
        if not self._d.eof:
            if not self._pending and self._d.needs_input:
                raise _fail(f"truncated bz2 {self.what} stream")
            if self._more(1) or not self._d.eof:
                raise _fail(f"bz2 {self.what} stream has more data than the control stream uses")
        if self._d.unused_data or self._pending:
            raise _fail(f"trailing bytes after the bz2 {self.what} stream")


# --------------------------------------------------------------------------- the patch engine


def _run(old, controls: Iterator[tuple[int, int, int]], diff, extra, new_size: int,
         write: Callable[[bytes], None], reloc: _Relocator | None) -> None:
    """Apply bsdiff-style controls; every value was range-checked by the caller's iterator."""
    oldpos = newpos = 0
    for x, y, z in controls:
        if x < 0 or y < 0 or newpos + x + y > new_size:
            raise _fail(f"control tuple ({x}, {y}, {z}) runs past the declared output size")
        shift = newpos - oldpos
        done = 0
        while done < x:
            k = min(CHUNK, x - done)
            d = diff.read(k)
            a = oldpos + done
            base = reloc.region(a, a + k, shift) if reloc is not None else _old_slice(old, a, a + k)
            write(_add_bytes(base, d))
            done += k
        newpos += x
        oldpos += x
        done = 0
        while done < y:
            k = min(CHUNK, y - done)
            write(extra.read(k))
            done += k
        newpos += y
        oldpos += z
        if not -(1 << 40) < oldpos < (1 << 40):
            raise _fail("control stream seeks far outside the old image")
    if newpos != new_size:
        raise _fail(f"control stream produces {newpos} bytes, the header declares {new_size}")


def _checked_write(write: Callable[[bytes], None], limit: int) -> Callable[[bytes], None]:
    total = 0

    def w(chunk: bytes) -> None:
        nonlocal total
        total += len(chunk)
        if total > limit:  # defensive: _run already bounds the output
            raise _fail("output exceeds the declared size")
        write(chunk)

    return w


def _decode_int64(b: bytes) -> int:
    v = int.from_bytes(b, "little")
    if v & (1 << 63):
        return -(v & ((1 << 63) - 1))
    return v


def _apply_bsdiff4(old, data: bytes, write, max_output: int) -> None:
    c = _Cursor(data, what="bsdiff4 header")
    if c.take(8) != b"BSDIFF40":
        raise _fail("not a BSDIFF40 patch (bad magic)")
    len_ctrl = _decode_int64(c.take(8))
    len_diff = _decode_int64(c.take(8))
    new_size = _decode_int64(c.take(8))
    if new_size < 0 or len_ctrl < 0 or len_diff < 0:
        raise _fail("negative length in bsdiff4 header")
    if new_size > max_output:
        raise DeltaError(f"delta declares {new_size} output bytes, more than the allowed {max_output}")
    if 32 + len_ctrl + len_diff > len(data):
        raise _fail("truncated bsdiff4 patch")
    ctrl_bytes_max = 24 * (new_size + 1)
    cr = _Bz2Reader(data[32:32 + len_ctrl], "control")
    dr = _Bz2Reader(data[32 + len_ctrl:32 + len_ctrl + len_diff], "diff")
    er = _Bz2Reader(data[32 + len_ctrl + len_diff:], "extra")

    def controls():
        produced = 0
        while True:
            t = cr.read_or_end(24)
            if t is None:
                return
            produced += 24
            if produced > ctrl_bytes_max:
                raise _fail("bsdiff4 control block is longer than any valid one")
            yield (_decode_int64(t[0:8]), _decode_int64(t[8:16]), _decode_int64(t[16:24]))

    _run(old, controls(), dr, er, new_size, _checked_write(write, new_size), None)
    cr.finish()
    dr.finish()
    er.finish()


def _parse_header(data: bytes, encoding: str, max_output: int):
    if len(data) < 6 or data[:4] != MAGIC:
        raise _fail(f"not a {MAGIC.decode()} delta container (bad magic)")
    if data[4] != FORMAT_VERSION:
        raise DeltaError(
            f"delta container format version {data[4]} is not supported (this applier knows "
            f"version {FORMAT_VERSION}); update the updater or ask the server for another encoding")
    enc = _ID_ENCS.get(data[5])
    if enc is None:
        raise DeltaError(f"unknown delta encoding id {data[5]}; update the updater")
    if enc != encoding:
        raise _fail(f"delta labelled {encoding!r} holds a {enc!r} payload")
    if len(data) < _HEADER or struct.unpack_from("<I", data, 6)[0] != zlib.crc32(memoryview(data)[_HEADER:]):
        raise _fail("delta checksum mismatch (damaged in transit or storage)")
    c = _Cursor(data, _HEADER)
    new_size = c.uvarint()
    if new_size > max_output:
        raise DeltaError(f"delta declares {new_size} output bytes, more than the allowed {max_output}")
    return enc, c, new_size


def _dict_ok(dict_size: int, bound: int, what: str) -> int:
    cap = max(4096, (bound + 4095) & ~4095)
    if dict_size < 4096 or dict_size > cap or dict_size > _MAX_DICT:
        raise _fail(f"{what} stream asks for a {dict_size}-byte dictionary (allowed 4096..{min(cap, _MAX_DICT)})")
    return dict_size


def apply_delta_to(old: bytes, delta: Delta, write: Callable[[bytes], None], max_output: int) -> int:
    """Stream the new image to ``write`` in chunks of at most CHUNK bytes; return its length.

    Memory beyond ``old`` and ``delta`` stays bounded: the LZMA dictionaries are capped by the
    declared output size, and nothing else grows with the image. On error, bytes already
    written must be discarded by the caller (the device writes into the inactive slot and
    verifies the hash before use anyway).
    """
    if not isinstance(delta, Delta):
        raise DeltaError("apply_delta needs a Delta")
    if max_output < 0:
        raise DeltaError("max_output must not be negative")
    data = delta.data
    total = 0

    def counting(chunk: bytes) -> None:
        nonlocal total
        total += len(chunk)
        if total > max_output:
            raise DeltaError(f"output exceeds max_output={max_output}")
        write(chunk)

    if delta.encoding == "bsdiff4":
        _apply_bsdiff4(old, data, counting, max_output)
        return total
    if delta.encoding not in _ENC_IDS:
        raise DeltaError(f"unknown delta encoding {delta.encoding!r}; known: {', '.join(ENCODINGS)}")
    enc, c, new_size = _parse_header(data, delta.encoding, max_output)
    out = _checked_write(counting, new_size)
    if enc == "full-lzma":
        bcj = c.uvarint(1)
        dict_size = _dict_ok(c.uvarint(), new_size, "image")
        r = _LzmaReader(data[c.pos:], dict_size, "image", bcj)
        left = new_size
        while left:
            k = min(CHUNK, left)
            out(r.read(k))
            left -= k
        r.finish()
        return total
    old_size = c.uvarint()
    if old_size != len(old):
        raise DeltaError(
            f"delta was made for a {old_size}-byte base image, this one has {len(old)} bytes; "
            "ask for a delta from the installed version or for the full image")
    reloc_base = None
    minseg = ptrmode = 0
    arch = _ARCHS.get(enc)
    if arch:
        minseg = c.uvarint(1 << 32)
        ptrmode = c.uvarint(2)
        reloc_base = c.uvarint(1 << 64)
        outmap = _read_outmap(c)
    n_ctrl = c.uvarint(new_size + 1)
    ctrl_bound = n_ctrl * _MAX_CTRL_BYTES
    dicts = (_dict_ok(c.uvarint(), ctrl_bound, "control"),
             _dict_ok(c.uvarint(), new_size, "diff"),
             _dict_ok(c.uvarint(), new_size, "extra"))
    lens = [c.uvarint(len(data)) for _ in range(3)]
    if c.pos + sum(lens) != len(data):
        raise _fail(f"stream lengths add up to {c.pos + sum(lens)} bytes, the delta has {len(data)}")
    p = c.pos
    streams = []
    for ln in lens:
        streams.append(data[p:p + ln])
        p += ln
    dr = _LzmaReader(streams[1], dicts[1], "diff")
    er = _LzmaReader(streams[2], dicts[2], "extra")
    reloc = None
    if arch:
        # First pass over the (small) control stream: the move map. Only matches of at least
        # minseg bytes enter it and their number is capped, so its memory stays a fraction of
        # the declared output size whatever the delta says.
        if minseg < _MINSEG_MIN:
            raise _fail(f"move-map threshold {minseg} below the minimum {_MINSEG_MIN}")
        cap = _max_segments(new_size)
        segs = []
        oldpos = newpos = 0
        for x, y, z in _controls(streams[0], dicts[0], n_ctrl):
            if newpos + x + y > new_size:
                raise _fail(f"control tuple ({x}, {y}, {z}) runs past the declared output size")
            if x >= minseg:
                if len(segs) >= cap:
                    raise _fail(f"move map has more than {cap} segments")
                segs.append((oldpos, newpos - oldpos, x))
            newpos += x + y
            oldpos += x + z
            if not -(1 << 40) < oldpos < (1 << 40):
                raise _fail("control stream seeks far outside the old image")
        reloc = _Relocator(arch, old, reloc_base, _MoveMap(segs), ptrmode, outmap)
    _run(old, _controls(streams[0], dicts[0], n_ctrl), dr, er, new_size, out, reloc)
    dr.finish()
    er.finish()
    return total


def _max_segments(new_size: int) -> int:
    return 1024 + new_size // 256


def _controls(stream: bytes, dict_size: int, n: int) -> Iterator[tuple[int, int, int]]:
    dec = _ControlDecoder(_LzmaReader(stream, dict_size, "control"))
    for _ in range(n):
        yield dec.next()
    dec.finish()


class _ControlDecoder:
    """Varint control tuples (x, y, zigzag z) read from an LZMA stream in small blocks."""

    def __init__(self, reader: _LzmaReader) -> None:
        self.r = reader
        self.buf = b""
        self.pos = 0

    def _byte(self) -> int:
        if self.pos >= len(self.buf):
            self.buf = self.r.read_upto(4096)
            self.pos = 0
            if not self.buf:
                raise _fail("control stream ended early")
        b = self.buf[self.pos]
        self.pos += 1
        return b

    def _uv(self) -> int:
        shift = value = 0
        for _ in range(10):
            b = self._byte()
            value |= (b & 0x7F) << shift
            if not b & 0x80:
                return value
            shift += 7
        raise _fail("overlong varint in control stream")

    def next(self) -> tuple[int, int, int]:
        x = self._uv()
        y = self._uv()
        u = self._uv()
        return x, y, (u >> 1) ^ -(u & 1)

    def finish(self) -> None:
        if self.pos != len(self.buf):
            raise _fail("control stream has more tuples than the header declares")
        self.r.finish()


def apply_delta(old: bytes, delta: Delta, max_output: int) -> bytes:
    """Rebuild the new image; raises DeltaError on any malformed delta or if it would exceed
    ``max_output`` bytes."""
    out = bytearray()
    apply_delta_to(old, delta, out.extend, max_output)
    return bytes(out)


# --------------------------------------------------------------------------- encoders


def _controls_from_core(ctrl: bytes) -> list[tuple[int, int, int]]:
    vals = [_decode_int64(ctrl[i:i + 8]) for i in range(0, len(ctrl), 8)]
    return [(vals[i], vals[i + 1], vals[i + 2]) for i in range(0, len(vals), 3)]


def _bsdiff_core(old: bytes, new: bytes):
    import bsdiff4.core

    ctrl, diff, extra = bsdiff4.core.diff(old, new)
    return _controls_from_core(ctrl), diff, extra


def _seal(enc: str, body: bytes) -> bytes:
    """magic, version, encoding id, CRC-32 of the body, body."""
    return MAGIC + bytes((FORMAT_VERSION, _ENC_IDS[enc])) + struct.pack("<I", zlib.crc32(body)) + body


def _container(enc: str, new_size: int, fields: list[int], streams: list[tuple[int, bytes]]) -> bytes:
    head = bytearray(_uvarint(new_size))
    for f in fields:
        head += _uvarint(f)
    for d, _ in streams:
        head += _uvarint(d)
    for _, s in streams:
        head += _uvarint(len(s))
    return _seal(enc, bytes(head) + b"".join(s for _, s in streams))


def _pack_streams(enc: str, old: bytes, new: bytes, controls, diff: bytes, extra: bytes,
                  arch_fields: list[int], tune: bool) -> bytes:
    ctrl = bytearray()
    for x, y, z in controls:
        ctrl += _uvarint(x)
        ctrl += _uvarint(y)
        ctrl += _svarint(z)
    streams = [_lzma(bytes(ctrl), tune=tune, dict_max=_STREAM_DICT),
               _lzma(diff, tune=tune, dict_max=_STREAM_DICT),
               _lzma(extra, tune=tune, dict_max=_STREAM_DICT)]
    return _container(enc, len(new), [len(old), *arch_fields, len(controls)], streams)


def _exact_diff(old: bytes, new: bytes, controls, reloc: _Relocator | None):
    """Diff and extra streams that the applier's exact semantics need for these controls."""
    diff = bytearray()
    extra = bytearray()
    oldpos = newpos = 0
    for x, y, z in controls:
        shift = newpos - oldpos
        done = 0
        while done < x:
            k = min(CHUNK, x - done)
            a = oldpos + done
            base = reloc.region(a, a + k, shift) if reloc is not None else _old_slice(old, a, a + k)
            diff += _sub_bytes(new[newpos + done:newpos + done + k], base)
            done += k
        newpos += x
        oldpos += x
        extra += new[newpos:newpos + y]
        newpos += y
        oldpos += z
    return bytes(diff), bytes(extra)


def _static_relocated(arch: str, old: bytes, base: int | None, mm: _MoveMap, mode: int) -> bytes:
    """Whole old image relocated with the move map alone (to guide the match search)."""
    r = _Relocator(arch, old, base, mm, mode)
    out = bytearray()
    bounds = [s for s in mm.starts if 0 < s < len(old)]
    edges = [0, *bounds, len(old)]
    for a, b in zip(edges, edges[1:]):
        if b > a:
            out += r.region(a, b, mm.shift(a))
    return bytes(out)


_THUMB_PROLOGUE = re.compile(rb"(?=[\x00-\xff]\xb5|\x2d\xe9)")  # PUSH {..., lr} / PUSH.W
_A64_PROLOGUE = re.compile(rb"(?=\xfd\x7b[\x00-\xff]\xa9)")  # STP x29, x30, [sp, #-n]!
# Xtensa: ADDI a1, a1, -n (call0 ABI) / ENTRY a1, n (windowed ABI)
_XT_PROLOGUE = re.compile(rb"(?=\x12\xc1[\x80-\xff]|\x36[\x41\x61\x81\xa1\xc1\xe1]\x00)")


def _arch_score(arch: str, old: bytes) -> float:
    """How much ``old`` looks like code of ``arch``: the share of its call instructions whose
    target is also the target of another call (real code calls the same functions from many
    places; random bytes almost never do). Around 0.5 and above for real code, < 0.05 for
    data or another instruction set."""
    import collections

    old = old[:_SAMPLE]
    n = len(old)
    r = _Relocator(arch, old, None, _MoveMap([]), 0)
    targets = collections.Counter()
    if arch == "thumb":
        for p, _, _ in r._thumb_fields(0, n):
            targets[p + 4 + _thumb_bl_decode(old, p)] += 1
    elif arch == "xtensa":
        for m in _XT_CALL.finditer(old, 0, max(0, n - 2)):
            targets[_xt_decode(old, m.start())] += 1
    else:
        for p, kind, _ in r._a64_fields(0, n):
            if kind == 0:
                imm = struct.unpack_from("<I", old, p)[0] & 0x3FFFFFF
                targets[p + (imm - (1 << 26) if imm & 0x2000000 else imm) * 4] += 1
    total = sum(targets.values())
    if total < 8:
        return 0.0
    return sum(c for t, c in targets.items() if c > 1 and 0 <= t < n) / total


def _guess_base(arch: str, old: bytes) -> int | None:
    """Load address of the image (minus any header in front of it), or None when no base
    stands out.

    A base scores one per distinct absolute code pointer that lands on a call target or a
    function prologue once the base is subtracted. Candidates: first 4 KiB-aligned bases
    (votes matched on the low 12 bits); failing that, any base (an image wrapped in a header),
    from the differences between the densest cluster of pointer values and the most-called
    functions.
    """
    import collections

    old = old[:_SAMPLE]
    n = len(old)
    r = _Relocator(arch, old, None, _MoveMap([]))
    calls: collections.Counter = collections.Counter()
    if arch == "thumb":
        for p, _, _ in r._thumb_fields(0, n):
            calls[p + 4 + _thumb_bl_decode(old, p)] += 1
        prologues = [m.start() for m in _THUMB_PROLOGUE.finditer(old) if not m.start() & 1]
    elif arch == "xtensa":
        for p, kind, _ in r._xt_fields(0, n):
            calls[_xt_decode(old, p)] += 1
        prologues = [m.start() for m in _XT_PROLOGUE.finditer(old) if not m.start() & 3]
    else:
        for p, kind, _ in r._a64_fields(0, n):
            if kind == 0:
                imm = struct.unpack_from("<I", old, p)[0] & 0x3FFFFFF
                calls[p + (imm - (1 << 26) if imm & 0x2000000 else imm) * 4] += 1
        prologues = [m.start() for m in _A64_PROLOGUE.finditer(old) if not m.start() & 3]
    tset = {t for t in calls if 0 <= t < n}
    tset.update(prologues)
    if not tset:
        return None
    step, fmt = (8, "<Q") if arch == "aarch64" else (4, "<I")
    pvals = set()
    for (v,) in struct.iter_unpack(fmt, old[:n - n % step]):
        if arch == "thumb":
            if not v & 1:
                continue
            v -= 1
        if 0x100 <= v < 1 << 40:
            pvals.add(v)

    def decide(votes: collections.Counter) -> int | None:
        ranked = votes.most_common(2) + [(None, 0), (None, 0)]
        (b1, c1), (_, c2) = ranked[0], ranked[1]
        return b1 if c1 >= 8 and c1 >= 3 * c2 else None

    index: dict[int, list[int]] = collections.defaultdict(list)
    for t in tset:
        index[t & 0xFFF].append(t)
    votes: collections.Counter = collections.Counter()
    for v in pvals:  # each distinct pointer-like value votes once
        for t in index.get(v & 0xFFF, ()):
            if v >= t:
                votes[v - t] += 1
    base = decide(votes)
    if base is not None:
        return base
    clusters = collections.Counter(v >> 20 for v in pvals)
    dense = {k for k, _ in clusters.most_common(2)}
    anchors = [t for t, _ in calls.most_common(32) if 0 <= t < n]
    guesses = collections.Counter(v - t for v in pvals if v >> 20 in dense for t in anchors if v >= t)
    scores: collections.Counter = collections.Counter()
    for b, _ in guesses.most_common(4):
        scores[b] = sum(1 for v in pvals if v - b in tset)
    return decide(scores)


_MINSEGS = (12, 24, 32, 64, 128, 256)


_SEARCH_SPAN = 1 << 19  # the parameter search looks at the first 512 KiB of output


def _arch_params(arch: str, old: bytes, new: bytes, controls, base: int | None):
    """(size, minseg, ptrmode) of the smallest quick encoding over the parameter grid.

    The move map is still built from all controls; only the diff of the first
    _SEARCH_SPAN output bytes is measured (fast LZMA preset) to rank the settings."""
    modes = (0, 1, 2) if base is not None else (0,)
    prefix = []
    covered = 0
    for t in controls:
        if covered >= _SEARCH_SPAN:
            break
        prefix.append(t)
        covered += t[0] + t[1]
    tried: dict[tuple[int, int], int] = {}

    def size(minseg: int, mode: int) -> int:
        if (minseg, mode) not in tried:
            reloc = _Relocator(arch, old, base, _MoveMap.from_controls(controls, minseg), mode)
            diff, _ = _exact_diff(old, new, prefix, reloc)
            tried[minseg, mode] = len(_lzma(diff, tune=False, preset=2)[1])
        return tried[minseg, mode]

    # coordinate search: pointer mode at a middle minseg, then minseg for that mode
    mode = min(modes, key=lambda m: (size(32, m), -m))
    minseg = min(_MINSEGS, key=lambda k: (size(k, mode), k))
    return size(minseg, mode), minseg, mode


def _encode_arch(enc: str, old: bytes, new: bytes, first, base: int | None, tune: bool) -> bytes:
    """Search matches against the old image relocated with the current move map, re-derive the
    map from the new matches, repeat (twice for images up to 1 MiB, once above)."""
    arch = _ARCHS[enc]
    passes = 2 if len(new) <= (1 << 20) else 1
    controls = first
    _, minseg, mode = _arch_params(arch, old, new, controls, base)
    for _ in range(passes):
        mm = _MoveMap.from_controls(controls, minseg)
        guide = _static_relocated(arch, old, base, mm, mode)
        controls, _, _ = _bsdiff_core(guide, new)
    _, minseg, mode = _arch_params(arch, old, new, controls, base)
    while sum(1 for x, _, _ in controls if x >= minseg) > _max_segments(len(new)):
        minseg *= 2  # keep within what appliers accept
    mm = _MoveMap.from_controls(controls, minseg)
    outmap = _learn_outside(arch, old, new, controls, mm, minseg, base, mode)
    best = None
    for om in ([None, outmap] if outmap is not None else [None]):
        reloc = _Relocator(arch, old, base, mm, mode, om)
        diff, extra = _exact_diff(old, new, controls, reloc)
        fields = [minseg, mode, base or 0] + (om.to_fields() if om else [0])
        quick = len(_lzma(diff, tune=False, preset=6)[1]) + sum(map(len, map(_uvarint, fields)))
        if best is None or quick < best[0]:
            best = (quick, diff, extra, fields)
    _, diff, extra, fields = best
    return _pack_streams(enc, old, new, controls, diff, extra, fields, tune)


def _learn_outside(arch: str, old: bytes, new: bytes, controls, mm: _MoveMap, minseg: int,
                   base: int | None, mode: int) -> _OutMap | None:
    """Learn how addresses outside the old image moved (RAM variables, data behind the
    image): compare each address field of a long match with the same field in the new image,
    keep the shifts that several fields agree on, as steps over the target address."""
    import collections

    ro = _Relocator(arch, old, base, mm, 0)  # instruction fields only
    rn = _Relocator(arch, new, base, _MoveMap([]), 0)
    n = len(old)
    low = 0x10000 - (base or 0)
    records: dict[int, collections.Counter] = collections.defaultdict(collections.Counter)
    same: list[tuple[int, int, int]] = []  # aligned words equal in old and new: (start, end, s)
    step, fmt = (8, "<Q") if arch == "aarch64" else (4, "<I")
    oldpos = newpos = 0
    for x, y, z in controls:
        if x >= minseg:
            s = newpos - oldpos
            newf = {p: (k, t) for p, k, t in rn.fields(newpos, newpos + x)}
            for p, k, t in ro.fields(oldpos, oldpos + x):
                tt = ro.target(p, k, t)
                if 0 <= tt <= n or tt < low:
                    continue
                got = newf.get(p + s)
                if got is None or got[0] != k:
                    continue
                d = rn.target(p + s, k, got[1]) - tt
                if -(1 << 20) < d < (1 << 20):
                    records[tt][d] += 1
            if base is not None:
                q0 = (oldpos + step - 1) & -step
                q1 = (oldpos + x) & -step
                if q1 > q0:
                    same.append((q0, q1, s))
                    olds = struct.iter_unpack(fmt, old[q0:q1])
                    news = struct.iter_unpack(fmt, new[q0 + s:q1 + s])
                    q = q0
                    for (a,), (b,) in zip(olds, news):
                        if a != b and a < (1 << 40):
                            tt = a - base
                            d = b - a
                            if (not 0 <= tt <= n and tt >= low and -(1 << 20) < d < (1 << 20)
                                    and not (arch == "thumb" and (
                                        _thumb_bl_match(old, q - 2) or _thumb_bl_match(old, q)
                                        or _thumb_bl_match(old, q + 2)))):
                                records[tt][d] += 1
                        q += step
        newpos += x + y
        oldpos += x + z
    moved = sorted(records)
    if not moved:
        return None
    # Unchanged words near the moved ones bound the steps (shift 0).
    zeros: collections.Counter = collections.Counter()
    for q0, q1, s in same:
        for (a,), (b,) in zip(struct.iter_unpack(fmt, old[q0:q1]), struct.iter_unpack(fmt, new[q0 + s:q1 + s])):
            if a == b:
                t = a - base
                if not 0 <= t <= n and t >= low:
                    i = bisect.bisect_left(moved, t - 0x1000)
                    if i < len(moved) and moved[i] <= t + 0x1000:
                        zeros[t] += 1
    runs: list[list[int]] = []  # [first t, last t, shift, support]
    for t in sorted(set(moved).union(zeros)):
        c = records.get(t)
        d, k = c.most_common(1)[0] if c else (0, 0)
        if zeros.get(t, 0) > k:
            d, k = 0, zeros[t]
        if runs and runs[-1][2] == d:
            runs[-1][1] = t
            runs[-1][3] += k
        else:
            runs.append([t, t, d, k])
    merged: list[list[int]] = []
    for r in runs:
        if r[3] < 2:
            continue  # one field alone is noise more often than not
        if merged and merged[-1][2] == r[2]:
            merged[-1][1] = r[1]
            merged[-1][3] += r[3]
        else:
            merged.append(r)
    while merged and merged[0][2] == 0:
        merged.pop(0)
    if not merged:
        return None
    end = merged[-1][1] + 1
    if merged[-1][2] == 0:
        end = merged.pop()[0]
    if not merged or len(merged) > _MAX_OUT_STEPS:
        return None
    return _OutMap([r[0] for r in merged], [r[2] for r in merged], end)


def _encode_full(new: bytes, tune: bool) -> bytes:
    best = None
    if tune:
        bcjs = (_BCJ_NONE, _BCJ_ARMTHUMB)
    else:  # large image: one try, with the Thumb BCJ filter only on Thumb code
        bcjs = (_BCJ_ARMTHUMB if _arch_score("thumb", new) >= _MIN_ARCH_SCORE else _BCJ_NONE,)
    for bcj in bcjs:
        d, s = _lzma(new, bcj, tune, dict_max=_IMAGE_DICT)
        blob = _seal("full-lzma", _uvarint(len(new)) + _uvarint(bcj) + _uvarint(d) + s)
        if best is None or len(blob) < len(best):
            best = blob
    return best


def encode(old: bytes, new: bytes, encoding: str) -> Delta:
    """One encoding of the pair (see ENCODINGS)."""
    return {d.encoding: d for d in candidates(old, new, only=(encoding,))}[encoding]


def candidates(old: bytes, new: bytes, only: tuple[str, ...] | None = None) -> list[Delta]:
    """Every encoding tried for this pair (``only`` restricts the set).

    The relocating encodings are tried only on images that look like code of their
    instruction set (see ``_arch_score``); ``only`` forces them."""
    old = bytes(old)
    new = bytes(new)
    want = set(ENCODINGS if only is None else only)
    unknown = want - set(ENCODINGS)
    if unknown:
        raise ValueError(f"unknown encodings {sorted(unknown)}")
    tune = len(new) < (1 << 20)  # lc/lp/pb and BCJ trials only where they are cheap
    out: list[Delta] = []
    ctrl_bytes, diff, extra = None, None, None
    if want - {"full-lzma"}:
        import bsdiff4.core

        ctrl_bytes, diff, extra = bsdiff4.core.diff(old, new)
        controls = _controls_from_core(ctrl_bytes)
    if "bsdiff4" in want:
        import io

        import bsdiff4.format

        f = io.BytesIO()
        bsdiff4.format.write_patch(f, len(new), ctrl_bytes, diff, extra)
        out.append(Delta("bsdiff4", f.getvalue()))
    if "bsdiff-lzma" in want:
        out.append(Delta("bsdiff-lzma", _pack_streams("bsdiff-lzma", old, new, controls, diff, extra,
                                                      [], tune)))
    for enc in ("thumb-lzma", "aarch64-lzma", "xtensa-lzma"):
        # Relocation only pays on code of that instruction set: skip it elsewhere unless asked.
        if enc in want and (only is not None or _arch_score(_ARCHS[enc], old) >= _MIN_ARCH_SCORE):
            base = _guess_base(_ARCHS[enc], old)
            out.append(Delta(enc, _encode_arch(enc, old, new, controls, base, tune)))
    if "full-lzma" in want:
        full = _encode_full(new, False)
        # The full image is tuned (both BCJ choices, lc/lp/pb) only when it might win.
        if tune and (not out or len(full) < 1.5 * min(len(d.data) for d in out)):
            full = min(full, _encode_full(new, True), key=len)
        out.append(Delta("full-lzma", full))
    return out


def best_delta(old: bytes, new: bytes) -> Delta:
    """The smallest candidate (the compressed full image included)."""
    return min(candidates(old, new), key=lambda d: (len(d.data), ENCODINGS.index(d.encoding)))
