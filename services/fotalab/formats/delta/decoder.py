"""The decoder: rebuilds the new image from the old one and a delta, on the device.

Its input is hostile: any malformed, truncated or bit-flipped delta raises ``DeltaError``
with a message that says what was wrong, the output never exceeds the size declared in the
delta nor ``max_output``, and memory stays bounded (decoder dictionaries are capped by the
declared output size, output is produced in chunks of ``CHUNK`` bytes). Every number read
from a delta is range-checked where it is read (``Cursor.uvarint``'s limits) or before it is
used. ``bsdiff4`` patches are parsed and applied here too, never handed to the C patcher, so
crafted control values cannot hurt.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable, Iterator

from .bytewise import add_bytes
from .container import (
    CHUNK,
    ENCODING_ARCH,
    ENCODING_BY_ID,
    ENCODING_IDS,
    ENCODINGS,
    FORMAT_VERSION,
    HEADER_SIZE,
    MAGIC,
    MAX_CONTROL_TUPLE_BYTES,
    MAX_DICT,
    MAX_OUTSIDE_STEPS,
    MIN_SEGMENT,
    SPARSE_ENCODINGS,
    Control,
    Delta,
    DeltaError,
    corrupt,
    decode_int64,
    wrong_base,
)
from .decoder_sparse import Relocation, SegmentList, apply_sparse
from .decoder_streams import Bz2Reader, Cursor, LzmaReader, control_tuples
from .movemap import MoveMap, OutsideMap
from .relocate_base import Relocator, old_region

_OLD_POS_LIMIT = 1 << 40  # a control stream may not seek the old position this far away
_BSDIFF4_HEADER_SIZE = 32  # "BSDIFF40", control length, diff length, new size
_BSDIFF4_TUPLE_SIZE = 24  # three 8-byte numbers
_MIN_DICT = 4096

Write = Callable[[bytes], None]


def apply_delta(old: bytes, delta: Delta, max_output: int) -> bytes:
    """Rebuild the new image; raises DeltaError on any malformed delta or if it would exceed
    ``max_output`` bytes."""
    out = bytearray()
    apply_delta_to(old, delta, out.extend, max_output)
    return bytes(out)


def apply_delta_to(old: bytes, delta: Delta, write: Write, max_output: int) -> int:
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
    counting = _LimitedWriter(write, max_output, lambda: DeltaError(f"output exceeds max_output={max_output}"))
    if delta.encoding == "bsdiff4":
        _apply_bsdiff4(old, data, counting, max_output)
        return counting.total
    if delta.encoding not in ENCODING_IDS:
        raise DeltaError(f"unknown delta encoding {delta.encoding!r}; known: {', '.join(ENCODINGS)}")
    encoding, cursor, new_size = _parse_header(data, delta.encoding, max_output)
    out = _declared_size_writer(counting, new_size)
    if encoding == "full-lzma":
        _apply_full_image(data, cursor, new_size, out)
    elif encoding in SPARSE_ENCODINGS:
        old_size = new_size + cursor.svarint(1 << 62)
        if old_size != len(old):
            raise wrong_base(old_size, len(old))
        arch = SPARSE_ENCODINGS[encoding]
        apply_sparse(old, data, cursor, new_size, out, arch and _relocation(cursor, arch))
    else:
        _apply_streams(old, data, cursor, encoding, new_size, out)
    return counting.total


# --------------------------------------------------------------------------- the container


def _parse_header(data: bytes, encoding: str, max_output: int) -> tuple[str, Cursor, int]:
    """Check magic, version, encoding and checksum; return the encoding, a cursor after the
    declared output size, and that size."""
    if len(data) < 6 or data[:4] != MAGIC:
        raise corrupt(f"not a {MAGIC.decode()} delta container (bad magic)")
    if data[4] != FORMAT_VERSION:
        raise DeltaError(
            f"delta container format version {data[4]} is not supported (this applier knows "
            f"version {FORMAT_VERSION}); update the updater or ask the server for another encoding")
    found = ENCODING_BY_ID.get(data[5])
    if found is None:
        raise DeltaError(f"unknown delta encoding id {data[5]}; update the updater")
    if found != encoding:
        raise corrupt(f"delta labelled {encoding!r} holds a {found!r} payload")
    if len(data) < HEADER_SIZE or struct.unpack_from("<I", data, 6)[0] != zlib.crc32(memoryview(data)[HEADER_SIZE:]):
        raise corrupt("delta checksum mismatch (damaged in transit or storage)")
    cursor = Cursor(data, HEADER_SIZE)
    new_size = cursor.uvarint()
    if new_size > max_output:
        raise DeltaError(f"delta declares {new_size} output bytes, more than the allowed {max_output}")
    return found, cursor, new_size


def _checked_dict_size(dict_size: int, bound: int, what: str) -> int:
    """A stream's dictionary size, if it lies in 4096 .. min(bound rounded up, MAX_DICT)."""
    cap = max(_MIN_DICT, (bound + 4095) & ~4095)
    if dict_size < _MIN_DICT or dict_size > cap or dict_size > MAX_DICT:
        raise corrupt(f"{what} stream asks for a {dict_size}-byte dictionary (allowed 4096..{min(cap, MAX_DICT)})")
    return dict_size


def _read_outside_map(cursor: Cursor) -> OutsideMap | None:
    """The outside-address map of a relocating encoding's header (``OutsideMap.to_fields``)."""
    steps = cursor.uvarint(MAX_OUTSIDE_STEPS)
    if not steps:
        return None
    starts, shifts = [], []
    prev = 0
    for _ in range(steps):
        start = prev + cursor.svarint(1 << 62)
        if starts and start <= starts[-1]:
            raise corrupt("address map steps are not increasing")
        starts.append(start)
        shifts.append(cursor.svarint(1 << 62))
        prev = start
    end = prev + cursor.uvarint(1 << 62)
    return OutsideMap(starts, shifts, end)


def _relocation(cursor: Cursor, arch: str) -> Relocation:
    """A relocating encoding's settings: move-map threshold, pointer mode, load address and
    the outside-address map."""
    min_segment = cursor.uvarint(1 << 32)
    if min_segment < MIN_SEGMENT:
        raise corrupt(f"move-map threshold {min_segment} below the minimum {MIN_SEGMENT}")
    ptrmode = cursor.uvarint(2)
    load_address = cursor.uvarint(1 << 64)
    return Relocation(arch, min_segment, ptrmode, load_address, _read_outside_map(cursor))


def _apply_full_image(data: bytes, cursor: Cursor, new_size: int, write: Write) -> None:
    """``full-lzma``: BCJ filter id, dictionary size, then the image's one LZMA2 stream."""
    bcj = cursor.uvarint(1)
    dict_size = _checked_dict_size(cursor.uvarint(), new_size, "image")
    reader = LzmaReader(data[cursor.pos:], dict_size, "image", bcj)
    left = new_size
    while left:
        size = min(CHUNK, left)
        write(reader.read(size))
        left -= size
    reader.finish()


def _apply_streams(old: bytes, data: bytes, cursor: Cursor, encoding: str, new_size: int, write: Write) -> None:
    """The bsdiff-style encodings: old size, relocation settings (relocating encodings only),
    control count, three dictionary sizes and three stream lengths, then the streams."""
    old_size = cursor.uvarint()
    if old_size != len(old):
        raise wrong_base(old_size, len(old))
    arch = ENCODING_ARCH.get(encoding)
    if arch:
        relocation = _relocation(cursor, arch)
    control_count = cursor.uvarint(new_size + 1)
    control_bound = control_count * MAX_CONTROL_TUPLE_BYTES
    control_dict = _checked_dict_size(cursor.uvarint(), control_bound, "control")
    diff_dict = _checked_dict_size(cursor.uvarint(), new_size, "diff")
    extra_dict = _checked_dict_size(cursor.uvarint(), new_size, "extra")
    lengths = [cursor.uvarint(len(data)) for _ in range(3)]
    if cursor.pos + sum(lengths) != len(data):
        raise corrupt(f"stream lengths add up to {cursor.pos + sum(lengths)} bytes, the delta has {len(data)}")
    control_start = cursor.pos
    diff_start = control_start + lengths[0]
    extra_start = diff_start + lengths[1]
    control_stream = data[control_start:diff_start]
    diff_reader = LzmaReader(data[diff_start:extra_start], diff_dict, "diff")
    extra_reader = LzmaReader(data[extra_start:extra_start + lengths[2]], extra_dict, "extra")
    relocator = None
    if arch:
        move_map = _move_map(control_tuples(control_stream, control_dict, control_count), relocation.min_segment,
                             new_size)
        relocator = relocation.relocator(old, move_map)
    _run(old, control_tuples(control_stream, control_dict, control_count), diff_reader, extra_reader, new_size,
         write, relocator)
    diff_reader.finish()
    extra_reader.finish()


def _move_map(controls: Iterator[Control], min_segment: int, new_size: int) -> MoveMap:
    """First pass over the (small) control stream: the move map. Only matches of at least
    min_segment bytes enter it and their number is capped, so its memory stays a fraction of
    the declared output size whatever the delta says."""
    segments = SegmentList(min_segment, new_size)
    old_pos = new_pos = 0
    for copy_len, extra_len, seek in controls:
        if new_pos + copy_len + extra_len > new_size:
            raise corrupt(f"control tuple ({copy_len}, {extra_len}, {seek}) runs past the declared output size")
        segments.add(old_pos, new_pos, copy_len)
        new_pos += copy_len + extra_len
        old_pos += copy_len + seek
        if not -_OLD_POS_LIMIT < old_pos < _OLD_POS_LIMIT:
            raise corrupt("control stream seeks far outside the old image")
    return MoveMap(segments.segments)


# --------------------------------------------------------------------------- bsdiff4


def _apply_bsdiff4(old: bytes, data: bytes, write: Write, max_output: int) -> None:
    """A BSDIFF40 patch: 32-byte header, then bz2 control, diff and extra streams."""
    cursor = Cursor(data, what="bsdiff4 header")
    if cursor.take(8) != b"BSDIFF40":
        raise corrupt("not a BSDIFF40 patch (bad magic)")
    control_len = decode_int64(cursor.take(8))
    diff_len = decode_int64(cursor.take(8))
    new_size = decode_int64(cursor.take(8))
    if new_size < 0 or control_len < 0 or diff_len < 0:
        raise corrupt("negative length in bsdiff4 header")
    if new_size > max_output:
        raise DeltaError(f"delta declares {new_size} output bytes, more than the allowed {max_output}")
    diff_start = _BSDIFF4_HEADER_SIZE + control_len
    extra_start = diff_start + diff_len
    if extra_start > len(data):
        raise corrupt("truncated bsdiff4 patch")
    # no valid patch has more tuples than output bytes + 1
    control_bytes_max = _BSDIFF4_TUPLE_SIZE * (new_size + 1)
    control_reader = Bz2Reader(data[_BSDIFF4_HEADER_SIZE:diff_start], "control")
    diff_reader = Bz2Reader(data[diff_start:extra_start], "diff")
    extra_reader = Bz2Reader(data[extra_start:], "extra")

    def controls() -> Iterator[Control]:
        produced = 0
        while True:
            raw = control_reader.read_or_end(_BSDIFF4_TUPLE_SIZE)
            if raw is None:
                return
            produced += _BSDIFF4_TUPLE_SIZE
            if produced > control_bytes_max:
                raise corrupt("bsdiff4 control block is longer than any valid one")
            yield decode_int64(raw[0:8]), decode_int64(raw[8:16]), decode_int64(raw[16:24])

    _run(old, controls(), diff_reader, extra_reader, new_size, _declared_size_writer(write, new_size), None)
    control_reader.finish()
    diff_reader.finish()
    extra_reader.finish()


# --------------------------------------------------------------------------- the patch engine


def _run(old: bytes, controls: Iterator[Control], diff: LzmaReader | Bz2Reader,
         extra: LzmaReader | Bz2Reader, new_size: int, write: Write, relocator: Relocator | None) -> None:
    """Apply bsdiff-style controls: copy ``copy_len`` bytes of (relocated) old plus diff, then
    ``extra_len`` bytes of extra, then move the old position by ``seek``. Each tuple is
    checked against the declared output size and the old position kept near the image."""
    old_pos = new_pos = 0
    for copy_len, extra_len, seek in controls:
        if copy_len < 0 or extra_len < 0 or new_pos + copy_len + extra_len > new_size:
            raise corrupt(f"control tuple ({copy_len}, {extra_len}, {seek}) runs past the declared output size")
        shift = new_pos - old_pos
        done = 0
        while done < copy_len:
            size = min(CHUNK, copy_len - done)
            diff_chunk = diff.read(size)
            start = old_pos + done
            write(add_bytes(old_region(old, relocator, start, start + size, shift), diff_chunk))
            done += size
        new_pos += copy_len
        old_pos += copy_len
        done = 0
        while done < extra_len:
            size = min(CHUNK, extra_len - done)
            write(extra.read(size))
            done += size
        new_pos += extra_len
        old_pos += seek
        if not -_OLD_POS_LIMIT < old_pos < _OLD_POS_LIMIT:
            raise corrupt("control stream seeks far outside the old image")
    if new_pos != new_size:
        raise corrupt(f"control stream produces {new_pos} bytes, the header declares {new_size}")


class _LimitedWriter:
    """Passes chunks on to ``write`` and counts them; raises ``overflow()`` instead of passing
    more than ``limit`` bytes in all."""

    def __init__(self, write: Write, limit: int, overflow: Callable[[], DeltaError]) -> None:
        self._write = write
        self._limit = limit
        self._overflow = overflow
        self.total = 0

    def __call__(self, chunk: bytes) -> None:
        self.total += len(chunk)
        if self.total > self._limit:
            raise self._overflow()
        self._write(chunk)


def _declared_size_writer(write: Write, new_size: int) -> Write:
    """``write`` that refuses to pass more than the declared ``new_size`` bytes in all
    (defensive: _run already bounds the output)."""
    return _LimitedWriter(write, new_size, lambda: corrupt("output exceeds the declared size"))
