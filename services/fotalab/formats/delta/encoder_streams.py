"""The encoder's building blocks: bsdiff's matches, the diff and extra streams the decoder's
exact semantics need, LZMA2 compression and the packing of the streams into a container."""

from __future__ import annotations

import lzma
from collections.abc import Sequence

import bsdiff4.core

from .bytewise import sub_bytes
from .container import (
    BCJ_ARMTHUMB,
    BCJ_NONE,
    CHUNK,
    STREAM_DICT,
    Control,
    decode_int64,
    frame_streams,
    svarint,
    uvarint,
)
from .relocate_base import Relocator, old_region

# (literal context bits, literal position bits, position bits) tried when tuning; the first
# is LZMA's default for code-like data.
_LZMA_PROPS = ((3, 0, 2), (0, 0, 0), (1, 1, 1), (0, 2, 2), (3, 1, 1), (0, 1, 1))


def controls_from_core(raw_controls: bytes) -> list[Control]:
    """The control tuples of bsdiff4.core.diff's raw control block."""
    values = [decode_int64(raw_controls[i:i + 8]) for i in range(0, len(raw_controls), 8)]
    return [(values[i], values[i + 1], values[i + 2]) for i in range(0, len(values), 3)]


def bsdiff_matches(old: bytes, new: bytes) -> tuple[list[Control], bytes, bytes]:
    """bsdiff's (controls, diff, extra) of the pair."""
    raw_controls, diff, extra = bsdiff4.core.diff(old, new)
    return controls_from_core(raw_controls), diff, extra


def lzma_compress(data: bytes, bcj: int = BCJ_NONE, tune: bool = True,
                  preset: int = 9 | lzma.PRESET_EXTREME, dict_max: int = 1 << 26) -> tuple[int, bytes]:
    """Raw LZMA2 of ``data``; returns (dict_size, stream). ``tune`` tries a few lc/lp/pb."""
    dict_size = max(4096, min((len(data) + 4095) & ~4095, dict_max))
    best = None
    props = _LZMA_PROPS if tune and len(data) >= 256 else _LZMA_PROPS[:1]
    for lc, lp, pb in props:
        filters = [{"id": lzma.FILTER_LZMA2, "preset": preset,
                    "dict_size": dict_size, "lc": lc, "lp": lp, "pb": pb}]
        if bcj == BCJ_ARMTHUMB:
            filters.insert(0, {"id": lzma.FILTER_ARMTHUMB})
        compressed = lzma.compress(data, format=lzma.FORMAT_RAW, filters=filters)
        if best is None or len(compressed) < len(best):
            best = compressed
    return dict_size, best


def pack_streams(encoding: str, old: bytes, new: bytes, controls: Sequence[Control], diff: bytes, extra: bytes,
                 arch_fields: list[int], tune: bool) -> bytes:
    """The container of a bsdiff-style encoding: controls as varints, each stream LZMA2-
    compressed with a dictionary the device can afford (STREAM_DICT)."""
    control_bytes = bytearray()
    for copy_len, extra_len, seek in controls:
        control_bytes += uvarint(copy_len)
        control_bytes += uvarint(extra_len)
        control_bytes += svarint(seek)
    streams = [lzma_compress(bytes(control_bytes), tune=tune, dict_max=STREAM_DICT),
               lzma_compress(diff, tune=tune, dict_max=STREAM_DICT),
               lzma_compress(extra, tune=tune, dict_max=STREAM_DICT)]
    return frame_streams(encoding, len(new), [len(old), *arch_fields, len(controls)], streams)


def exact_diff(old: bytes, new: bytes, controls: Sequence[Control], relocator: Relocator | None) -> tuple[bytes, bytes]:
    """Diff and extra streams that the applier's exact semantics need for these controls."""
    diff = bytearray()
    extra = bytearray()
    old_pos = new_pos = 0
    for copy_len, extra_len, seek in controls:
        shift = new_pos - old_pos
        done = 0
        while done < copy_len:
            size = min(CHUNK, copy_len - done)
            start = old_pos + done
            base = old_region(old, relocator, start, start + size, shift)
            diff += sub_bytes(new[new_pos + done:new_pos + done + size], base)
            done += size
        new_pos += copy_len
        old_pos += copy_len
        extra += new[new_pos:new_pos + extra_len]
        new_pos += extra_len
        old_pos += seek
    return bytes(diff), bytes(extra)
