"""``sparse-lzma`` and the relocating ``*-sparse`` encodings on the device: copies, adds,
inserts and seeks against the old image (for ``thumb-sparse``, ``aarch64-sparse`` and
``xtensa-sparse`` the old image relocated as for ``thumb-lzma`` & co., with the move map taken
from a first pass over the ops: the runs of COPY and ADD ops contiguous in old and new are the
matches).

The body after the declared output size is::

    svarint old size - new size | relocating encodings: their settings (see ``decoder``)
    | uvarint layout
    | stored: the ops, to the end of the delta
    | LZMA:   uvarint log2 dictionary | one raw LZMA2 stream of the ops
    | split:  uvarint log2 dictionary of the tags, of the data | uvarint length of the tag
    |         stream | the tags' LZMA2 stream | the data's LZMA2 stream (to the end)

An op is a tag (uvarint of ``value << 2 | kind``, see ``container.OP_*``) followed, for ADD and
INSERT, by its data bytes (in the split layout those come from the data stream). Whatever is
left of the output after the last op is copied from the old position.

The input is hostile: every length is checked against the declared output size and every old
range against the old image before it is used, a seek may not follow a seek (so every other op
produces output and the work is linear in the declared size), no op may follow a complete
output, and every stream must be used up exactly. Memory: at most two LZMA2 dictionaries (capped
by the declared output size), one CHUNK of output and, for the relocating encodings, the move
map (capped at ``max_segments`` segments, as for their stream layout).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

from .bytewise import add_bytes
from .container import (
    CHUNK,
    MAX_DICT_LOG,
    MIN_DICT_LOG,
    OP_ADD,
    OP_COPY,
    OP_INSERT,
    OP_KINDS,
    OP_SEEK,
    SPARSE_LZMA,
    SPARSE_SPLIT,
    SPARSE_STORED,
    corrupt,
    max_segments,
)
from .decoder_streams import Cursor, LzmaReader, read_uvarint
from .movemap import MoveMap, OutsideMap
from .relocate import make_relocator
from .relocate_base import Relocator, old_region

_BLOCK = 4096  # op bytes decompressed at a time
_OP_NAMES = {OP_COPY: "copy", OP_ADD: "add", OP_INSERT: "insert", OP_SEEK: "seek"}

Write = Callable[[bytes], None]


class _StoredOps:
    """Ops stored as they are: a bounded cursor to the end of the delta."""

    def __init__(self, data: bytes, pos: int) -> None:
        self.cursor = Cursor(data, pos, what="op stream")

    def tag(self, limit: int) -> int | None:
        """The next tag, None at the end of the stream."""
        if self.cursor.pos == self.cursor.end:
            return None
        return self.cursor.uvarint(limit)

    def take(self, n: int) -> bytes:
        return self.cursor.take(n)

    def finish(self) -> None:
        if self.cursor.pos != self.cursor.end:
            raise corrupt("op stream has more data than the ops use")


class _LzmaOps:
    """Tags and data read from a raw LZMA2 stream, a block at a time."""

    def __init__(self, stream: bytes, dict_size: int, label: str) -> None:
        self.reader = LzmaReader(stream, dict_size, label)
        self.label = label
        self.buf = b""
        self.pos = 0

    def _at_end(self) -> bool:
        """Whether the stream has ended (refills the buffer when it is used up)."""
        if self.pos >= len(self.buf):
            self.buf = self.reader.read_upto(_BLOCK)
            self.pos = 0
        return not self.buf

    def _byte(self) -> int:
        if self._at_end():
            raise corrupt(f"truncated {self.label} stream")
        self.pos += 1
        return self.buf[self.pos - 1]

    def tag(self, limit: int) -> int | None:
        """The next tag (a uvarint of at most ``limit``), None at the end of the stream."""
        if self.pos < len(self.buf) and self.buf[self.pos] < 0x80 <= limit:  # one byte: most tags
            self.pos += 1
            return self.buf[self.pos - 1]
        if self._at_end():
            return None
        return read_uvarint(self._byte, limit, f"the {self.label} stream")

    def take(self, n: int) -> bytes:
        """Exactly ``n`` bytes."""
        end = self.pos + n
        if end <= len(self.buf):
            self.pos = end
            return self.buf[end - n:end]
        parts = [self.buf[self.pos:]]
        need = n - len(parts[0])
        self.buf, self.pos = b"", 0
        if need >= _BLOCK:
            return parts[0] + self.reader.read(need)
        while need:
            block = self.reader.read_upto(_BLOCK)
            if not block:
                raise corrupt(f"{self.label} stream ended early")
            if len(block) >= need:
                parts.append(block[:need])
                self.buf, self.pos = block, need
                break
            parts.append(block)
            need -= len(block)
        return b"".join(parts)

    def finish(self) -> None:
        if self.pos != len(self.buf):
            raise corrupt(f"{self.label} stream has more data than the ops use")
        self.reader.finish()


_Ops = _StoredOps | _LzmaOps


class _Output:
    """Collects output and passes it on in chunks of exactly CHUNK bytes (the last shorter)."""

    def __init__(self, write: Write) -> None:
        self.write = write
        self.buf = bytearray()

    def add(self, data: bytes) -> None:
        self.buf += data
        if len(self.buf) >= CHUNK:
            self.write(bytes(self.buf[:CHUNK]))
            del self.buf[:CHUNK]

    def flush(self) -> None:
        if self.buf:
            self.write(bytes(self.buf))
            self.buf.clear()


def _dict_size(cursor: Cursor, new_size: int, what: str) -> int:
    """A dictionary size field: 2**k for k in MIN_DICT_LOG..MAX_DICT_LOG, and no larger than
    the declared output size rounded up to 4 KiB (the encoder's cap)."""
    log = cursor.uvarint(1 << 8)
    cap = max(1 << MIN_DICT_LOG, (new_size + 4095) & ~4095)
    if not MIN_DICT_LOG <= log <= MAX_DICT_LOG or (1 << log) > cap:
        raise corrupt(f"{what} stream asks for a 2**{log}-byte dictionary (allowed 2**{MIN_DICT_LOG}.."
                      f"{min(cap, 1 << MAX_DICT_LOG)} bytes)")
    return 1 << log


@dataclass(frozen=True)
class Relocation:
    """A relocating encoding's settings (read from its header by the decoder)."""

    arch: str
    min_segment: int
    ptrmode: int
    load_address: int
    outside: OutsideMap | None

    def relocator(self, old: bytes, move_map: MoveMap) -> Relocator:
        return make_relocator(self.arch, old, self.load_address, move_map, self.ptrmode, self.outside)


class SegmentList:
    """The move map's segments: matches of at least ``min_segment`` bytes as (old start, shift,
    length), at most ``max_segments(new_size)`` of them (more is rejected)."""

    def __init__(self, min_segment: int, new_size: int) -> None:
        self.min_segment = min_segment
        self.cap = max_segments(new_size)
        self.segments: list[tuple[int, int, int]] = []

    def add(self, old_start: int, new_start: int, length: int) -> None:
        if length >= self.min_segment:
            if len(self.segments) >= self.cap:
                raise corrupt(f"move map has more than {self.cap} segments")
            self.segments.append((old_start, new_start - old_start, length))


def apply_sparse(old: bytes, data: bytes, cursor: Cursor, new_size: int, write: Write,
                 relocation: Relocation | None) -> None:
    """Rebuild the image from a sparse body (``cursor`` after the old size and, for the
    relocating encodings, their settings). Those take a first pass over the ops for the move
    map: the matches are the runs of COPY and ADD ops that are contiguous in old and new."""
    open_ops = _layout(data, cursor, new_size)
    relocator = None
    if relocation is not None:
        tags, payload = open_ops()
        segments = SegmentList(relocation.min_segment, new_size)
        run = [0, 0, 0]  # old start, new start, length
        for kind, old_pos, new_pos, length in _walk(tags, len(old), new_size):
            if kind in (OP_ADD, OP_INSERT) and payload is tags:
                for done in range(0, length, CHUNK):
                    payload.take(min(CHUNK, length - done))
            if kind in (OP_COPY, OP_ADD):
                if old_pos != run[0] + run[2] or new_pos != run[1] + run[2]:
                    segments.add(*run)
                    run = [old_pos, new_pos, 0]
                run[2] += length
        segments.add(*run)
        tags.finish()
        relocator = relocation.relocator(old, MoveMap(segments.segments))
    tags, payload = open_ops()
    out = _Output(write)
    for kind, old_pos, new_pos, length in _walk(tags, len(old), new_size):
        shift = new_pos - old_pos
        for done in range(0, length, CHUNK):
            size = min(CHUNK, length - done)
            if kind == OP_INSERT:
                out.add(payload.take(size))
            elif kind != OP_SEEK:
                start = old_pos + done
                base = old_region(old, relocator, start, start + size, shift)
                out.add(base if kind == OP_COPY else add_bytes(base, payload.take(size)))
    tags.finish()
    if payload is not tags:
        payload.finish()
    out.flush()


def _layout(data: bytes, cursor: Cursor, new_size: int) -> Callable[[], tuple[_Ops, _Ops]]:
    """Read the layout fields; return a function that opens the (tags, data) sources afresh."""
    layout = cursor.uvarint(SPARSE_SPLIT)
    if layout == SPARSE_STORED:
        start = cursor.pos

        def stored() -> tuple[_Ops, _Ops]:
            ops = _StoredOps(data, start)
            return ops, ops
        return stored
    if layout == SPARSE_LZMA:
        dict_size = _dict_size(cursor, new_size, "op")
        start = cursor.pos

        def single() -> tuple[_Ops, _Ops]:
            ops = _LzmaOps(data[start:], dict_size, "op")
            return ops, ops
        return single
    tag_dict = _dict_size(cursor, new_size, "op tag")
    data_dict = _dict_size(cursor, new_size, "op data")
    tag_length = cursor.uvarint(len(data))
    start = cursor.pos
    if start + tag_length > len(data):
        raise corrupt(f"op tag stream of {tag_length} bytes runs past the end of the delta")

    def split() -> tuple[_Ops, _Ops]:
        return (_LzmaOps(data[start:start + tag_length], tag_dict, "op tag"),
                _LzmaOps(data[start + tag_length:], data_dict, "op data"))
    return split


def _walk(tags: _Ops, old_size: int, new_size: int) -> Iterator[tuple[int, int, int, int]]:
    """(kind, old position, output position, length) of every op once it is checked (SEEK:
    length 0, the position after the seek), then of the implicit final copy. The consumer takes
    an op's data before asking for the next."""
    limit = (max(new_size, 2 * old_size + 2) << 2) | (OP_KINDS - 1)
    old_pos = new_pos = 0
    after_seek = False
    while True:
        tag = tags.tag(limit)
        if tag is None:
            break
        kind, value = tag & (OP_KINDS - 1), (tag >> 2) + 1
        name = _OP_NAMES[kind]
        if new_pos == new_size:
            raise corrupt(f"{name} op after the end of the {new_size}-byte output")
        if kind == OP_SEEK:
            if after_seek:
                raise corrupt("two seek ops in a row")
            target = old_pos + ((value >> 1) ^ -(value & 1))
            if not 0 <= target <= old_size:
                raise corrupt(f"seek to old offset {target}, outside the {old_size}-byte old image")
            old_pos, after_seek = target, True
            yield kind, old_pos, new_pos, 0
            continue
        after_seek = False
        if new_pos + value > new_size:
            raise corrupt(f"{name} op of {value} bytes at output offset {new_pos} runs past the declared "
                          f"output size {new_size}")
        if kind != OP_INSERT and old_pos + value > old_size:
            raise corrupt(f"{name} op of {value} bytes at old offset {old_pos} runs past the end of the "
                          f"{old_size}-byte old image")
        yield kind, old_pos, new_pos, value
        new_pos += value
        if kind != OP_INSERT:
            old_pos += value
    rest = new_size - new_pos
    if old_pos + rest > old_size:
        raise corrupt(f"the final copy of {rest} bytes at old offset {old_pos} runs past the end of the "
                      f"{old_size}-byte old image")
    if rest:
        yield OP_COPY, old_pos, new_pos, rest
