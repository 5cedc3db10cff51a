"""Bounded readers over a delta's bytes for the decoder, which treats them as hostile.

Each reader returns exactly what is asked or raises ``DeltaError`` (never a decompressor's
own exception, never a short read), and ``finish`` rejects data left over, so a delta is
accepted only when every byte of it was used.
"""

from __future__ import annotations

import bz2
import lzma
from collections.abc import Callable, Iterator
from typing import ClassVar

from .container import BCJ_ARMTHUMB, BCJ_NONE, Control, corrupt

_CONTROL_BLOCK = 4096  # control bytes decompressed at a time


def read_uvarint(next_byte: Callable[[], int], limit: int, what: str) -> int:
    """A LEB128 varint of at most 10 bytes from ``next_byte`` whose value is at most ``limit``
    (``what`` names the stream in the errors)."""
    shift = value = 0
    for _ in range(10):
        byte = next_byte()
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            if value > limit:
                raise corrupt(f"value {value} out of range in {what}")
            return value
        shift += 7
    raise corrupt(f"overlong varint in {what}")


class Cursor:
    """Bounded reader over a bytes-like object; every overrun is a DeltaError."""

    __slots__ = ("buf", "pos", "end", "what")

    def __init__(self, buf: bytes, pos: int = 0, end: int | None = None, what: str = "header") -> None:
        self.buf = buf
        self.pos = pos
        self.end = len(buf) if end is None else end
        self.what = what

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > self.end:
            raise corrupt(f"truncated {self.what}")
        taken = bytes(self.buf[self.pos:self.pos + n])
        self.pos += n
        return taken

    def uvarint(self, limit: int = 1 << 63) -> int:
        """A varint of at most 10 bytes whose value is at most ``limit``."""
        return read_uvarint(self._byte, limit, self.what)

    def _byte(self) -> int:
        if self.pos >= self.end:
            raise corrupt(f"truncated {self.what}")
        self.pos += 1
        return self.buf[self.pos - 1]

    def svarint(self, limit: int = 1 << 62) -> int:
        """A zigzag varint whose magnitude is at most about ``limit``."""
        zigzagged = self.uvarint(limit << 1 | 1)
        return (zigzagged >> 1) ^ -(zigzagged & 1)


class _DecompressingReader:
    """What the LZMA2 and bz2 readers share: exact reads, each decompressor error and each
    premature end turned into a DeltaError that names the stream (``label``)."""

    _errors: ClassVar[tuple[type[Exception], ...]]  # what the decompressor raises on bad data

    def __init__(self, decompressor: lzma.LZMADecompressor | bz2.BZ2Decompressor, stream: bytes,
                 label: str) -> None:
        self._decompressor = decompressor
        self._pending = stream
        self.label = label

    def _more(self, max_length: int) -> bytes:
        """Feed what is pending, return up to ``max_length`` bytes (maybe none yet)."""
        data, self._pending = self._pending, b""
        if not data and self._decompressor.needs_input:
            raise corrupt(f"truncated {self.label} stream")
        try:
            return self._decompressor.decompress(data, max_length=max_length)
        except self._errors as e:
            raise corrupt(f"corrupt {self.label} stream ({e})") from None

    def read(self, n: int) -> bytes:
        """Exactly n bytes."""
        parts = []
        need = n
        while need > 0:
            if self._decompressor.eof:
                raise corrupt(f"{self.label} stream ended early")
            got = self._more(need)
            if got:
                parts.append(got)
                need -= len(got)
        return b"".join(parts)

    def _check_used_up(self, rest: bytes) -> None:
        """After the last read: ``rest`` (one more byte) must be empty, the stream at its end
        and nothing behind it."""
        if rest or not self._decompressor.eof:
            raise corrupt(f"{self.label} stream has more data than the control stream uses")
        self._check_no_trailing()

    def _check_no_trailing(self) -> None:
        if self._decompressor.unused_data or self._pending:
            raise corrupt(f"trailing bytes after the {self.label} stream")


class LzmaReader(_DecompressingReader):
    """Incremental raw-LZMA2 reader: read(n) returns exactly n bytes or raises DeltaError."""

    _errors = (lzma.LZMAError, EOFError)

    def __init__(self, stream: bytes, dict_size: int, what: str, bcj: int = BCJ_NONE) -> None:
        filters = [{"id": lzma.FILTER_LZMA2, "dict_size": dict_size}]
        if bcj == BCJ_ARMTHUMB:
            filters.insert(0, {"id": lzma.FILTER_ARMTHUMB})
        try:
            decompressor = lzma.LZMADecompressor(format=lzma.FORMAT_RAW, filters=filters)
        except (lzma.LZMAError, ValueError) as e:
            raise corrupt(f"bad {what} stream parameters ({e})") from None
        super().__init__(decompressor, stream, what)

    def read_upto(self, n: int) -> bytes:
        """Up to n bytes (at least one unless the stream has ended)."""
        while not self._decompressor.eof:
            got = self._more(n)
            if got:
                return got
        return b""

    def finish(self) -> None:
        """Reject a stream that holds more than was read, or bytes after its end."""
        if self._decompressor.eof:
            self._check_no_trailing()
            return
        try:
            rest = self._decompressor.decompress(self._pending, max_length=1)
        except self._errors as e:
            raise corrupt(f"corrupt {self.label} stream ({e})") from None
        self._pending = b""
        self._check_used_up(rest)


class Bz2Reader(_DecompressingReader):
    """Incremental bz2 reader with the same contract as LzmaReader."""

    _errors = (OSError, EOFError, ValueError)

    def __init__(self, stream: bytes, what: str) -> None:
        super().__init__(bz2.BZ2Decompressor(), stream, f"bz2 {what}")

    def read_or_end(self, n: int) -> bytes | None:
        """n bytes, or None at the clean end of the stream."""
        if self._decompressor.eof:
            return None
        first = self._more(n)
        if not first and self._decompressor.eof:
            return None
        if len(first) < n:
            first += self.read(n - len(first))
        return first

    def finish(self) -> None:
        """Reject a stream that holds more than was read, or bytes after its end."""
        if self._decompressor.eof:
            self._check_no_trailing()
            return
        self._check_used_up(self._more(1))


class ControlDecoder:
    """Varint control tuples (copy length, extra length, zigzag seek) read from an LZMA
    stream in small blocks."""

    def __init__(self, reader: LzmaReader) -> None:
        self.reader = reader
        self.buf = b""
        self.pos = 0

    def _byte(self) -> int:
        if self.pos >= len(self.buf):
            self.buf = self.reader.read_upto(_CONTROL_BLOCK)
            self.pos = 0
            if not self.buf:
                raise corrupt("control stream ended early")
        byte = self.buf[self.pos]
        self.pos += 1
        return byte

    def _uvarint(self) -> int:
        return read_uvarint(self._byte, 1 << 63, "control stream")

    def next(self) -> Control:
        copy_len = self._uvarint()
        extra_len = self._uvarint()
        zigzagged = self._uvarint()
        return copy_len, extra_len, (zigzagged >> 1) ^ -(zigzagged & 1)

    def finish(self) -> None:
        if self.pos != len(self.buf):
            raise corrupt("control stream has more tuples than the header declares")
        self.reader.finish()


def control_tuples(stream: bytes, dict_size: int, count: int) -> Iterator[Control]:
    """The ``count`` control tuples of an LZMA control stream; then checks it is used up."""
    decoder = ControlDecoder(LzmaReader(stream, dict_size, "control"))
    for _ in range(count):
        yield decoder.next()
    decoder.finish()
