"""Bytewise arithmetic of bsdiff-style deltas, which encoder and decoder must do alike.

A match is stored as ``new - old`` byte by byte (mod 256) and applied as ``old + diff``;
bytes the control stream reads outside the old image count as zero (bspatch semantics).
The add and subtract work on whole chunks at once as Python ints (SWAR), which is far faster
than a loop over bytes.
"""

from __future__ import annotations

from .container import CHUNK

# (high bits, low 7 bits) masks by length; the chunk size and 4 KiB are always kept.
_mask_cache: dict[int, tuple[int, int]] = {}


def _masks(n: int) -> tuple[int, int]:
    masks = _mask_cache.get(n)
    if masks is None:
        high = int.from_bytes(b"\x80" * n, "little")
        low = int.from_bytes(b"\x7f" * n, "little")
        masks = (high, low)
        if n in (CHUNK, 4096) or len(_mask_cache) < 8:
            _mask_cache[n] = masks
    return masks


def add_bytes(a: bytes, b: bytes) -> bytes:
    """Bytewise (a + b) mod 256 of two equal-length strings (SWAR on Python ints): the low 7
    bits of each byte are added without carrying into the next byte, the top bit by XOR."""
    n = len(a)
    if n == 0:
        return b""
    high, low = _masks(n)
    x, y = int.from_bytes(a, "little"), int.from_bytes(b, "little")
    return (((x & low) + (y & low)) ^ ((x ^ y) & high)).to_bytes(n, "little")


def sub_bytes(a: bytes, b: bytes) -> bytes:
    """Bytewise (a - b) mod 256 of two equal-length strings: each byte of ``a`` gets its top
    bit set so that no borrow crosses into the next byte, then the top bit is fixed by XOR."""
    n = len(a)
    if n == 0:
        return b""
    high, low = _masks(n)
    x, y = int.from_bytes(a, "little"), int.from_bytes(b, "little")
    return (((x | high) - (y & low)) ^ ((x ^ y ^ high) & high)).to_bytes(n, "little")


def old_slice(old: bytes, start: int, end: int) -> bytes:
    """old[start:end] with bytes outside the image read as zero (bspatch semantics)."""
    n = len(old)
    if start >= 0 and end <= n:
        return bytes(old[start:end])
    inside_start, inside_end = max(start, 0), min(end, n)
    if inside_start >= inside_end:
        return bytes(end - start)
    return bytes(inside_start - start) + bytes(old[inside_start:inside_end]) + bytes(end - inside_end)
