"""``sparse-lzma`` on the device: copies, adds, inserts and seeks against the old image.

The body after the declared output size is::

    svarint old size - new size | uvarint layout
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
by the declared output size) and one CHUNK of output.
"""

from __future__ import annotations

from collections.abc import Callable

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
    wrong_base,
)
from .decoder_streams import Cursor, LzmaReader, read_uvarint

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


def apply_sparse(old: bytes, data: bytes, cursor: Cursor, new_size: int, write: Write) -> None:
    """Rebuild the image from a ``sparse-lzma`` body (``cursor`` after the declared size)."""
    old_size = new_size + cursor.svarint(1 << 62)
    if old_size != len(old):
        raise wrong_base(old_size, len(old))
    layout = cursor.uvarint(SPARSE_SPLIT)
    if layout == SPARSE_STORED:
        tags = payload = _StoredOps(data, cursor.pos)
    elif layout == SPARSE_LZMA:
        dict_size = _dict_size(cursor, new_size, "op")
        tags = payload = _LzmaOps(data[cursor.pos:], dict_size, "op")
    else:
        tag_dict = _dict_size(cursor, new_size, "op tag")
        data_dict = _dict_size(cursor, new_size, "op data")
        tag_length = cursor.uvarint(len(data))
        if cursor.pos + tag_length > len(data):
            raise corrupt(f"op tag stream of {tag_length} bytes runs past the end of the delta")
        tags = _LzmaOps(data[cursor.pos:cursor.pos + tag_length], tag_dict, "op tag")
        payload = _LzmaOps(data[cursor.pos + tag_length:], data_dict, "op data")
    out = _Output(write)
    _run_ops(old, tags, payload, new_size, out)
    tags.finish()
    if payload is not tags:
        payload.finish()
    out.flush()


def _run_ops(old: bytes, tags: _StoredOps | _LzmaOps, payload: _StoredOps | _LzmaOps, new_size: int,
             out: _Output) -> None:
    """Execute the ops, then the implicit final copy."""
    old_size = len(old)
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
            continue
        after_seek = False
        if new_pos + value > new_size:
            raise corrupt(f"{name} op of {value} bytes at output offset {new_pos} runs past the declared "
                          f"output size {new_size}")
        if kind != OP_INSERT and old_pos + value > old_size:
            raise corrupt(f"{name} op of {value} bytes at old offset {old_pos} runs past the end of the "
                          f"{old_size}-byte old image")
        done = 0
        while done < value:
            size = min(CHUNK, value - done)
            if kind == OP_COPY:
                out.add(old[old_pos + done:old_pos + done + size])
            elif kind == OP_ADD:
                out.add(add_bytes(old[old_pos + done:old_pos + done + size], payload.take(size)))
            else:
                out.add(payload.take(size))
            done += size
        new_pos += value
        if kind != OP_INSERT:
            old_pos += value
    rest = new_size - new_pos
    if old_pos + rest > old_size:
        raise corrupt(f"the final copy of {rest} bytes at old offset {old_pos} runs past the end of the "
                      f"{old_size}-byte old image")
    for start in range(old_pos, old_pos + rest, CHUNK):
        out.add(old[start:min(start + CHUNK, old_pos + rest)])
