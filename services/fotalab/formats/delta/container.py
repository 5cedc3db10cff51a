"""The ``FOTD`` container: the byte layout and limits that the encoder and the decoder share.

Encoder (signer) and decoder (device) must agree on every constant here, so they live in one
place. A container is::

    magic "FOTD" (4) | format version (1) | encoding id (1) | CRC-32 of the body (4) | body

and the body of the bsdiff-style encodings is::

    uvarint new size | uvarint fields (old size, relocation settings, control count)
    | uvarint dictionary size of each stream | uvarint length of each stream | the streams

(``full-lzma``: new size, BCJ filter id, dictionary size, then the one stream; ``sparse-lzma``
and the ``*-sparse`` encodings: new size, old size minus new size, the relocation settings of
the relocating ones, layout, then the op stream, see ``decoder_sparse``). Signed
values travel zigzag-encoded. Readers of this layout, which check every value because they
run on hostile input, are in ``decoder`` and ``decoder_streams``.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

MAGIC = b"FOTD"
FORMAT_VERSION = 1
HEADER_SIZE = 10  # magic (4), format version (1), encoding id (1), CRC-32 of the rest (4)
CHUNK = 1 << 16  # output is produced and written in pieces of at most this many bytes

ENCODING_IDS = {"bsdiff-lzma": 1, "thumb-lzma": 2, "aarch64-lzma": 3, "full-lzma": 4, "xtensa-lzma": 5,
                "sparse-lzma": 6, "thumb-sparse": 7, "aarch64-sparse": 8, "xtensa-sparse": 9}
ENCODING_BY_ID = {encoding_id: name for name, encoding_id in ENCODING_IDS.items()}
# Every encoding, in the order best_delta prefers on a tie ("bsdiff4" has no container).
ENCODINGS: tuple[str, ...] = ("bsdiff4", "bsdiff-lzma", "sparse-lzma", "thumb-lzma", "aarch64-lzma",
                              "xtensa-lzma", "thumb-sparse", "aarch64-sparse", "xtensa-sparse", "full-lzma")
# The relocating encodings and the instruction set each one relocates.
ENCODING_ARCH = {"thumb-lzma": "thumb", "aarch64-lzma": "aarch64", "xtensa-lzma": "xtensa",
                 "thumb-sparse": "thumb", "aarch64-sparse": "aarch64", "xtensa-sparse": "xtensa"}
# The encodings whose matches travel as sparse ops (see decoder_sparse), by instruction set.
SPARSE_ENCODINGS = {"sparse-lzma": None, "thumb-sparse": "thumb", "aarch64-sparse": "aarch64",
                    "xtensa-sparse": "xtensa"}

MAX_DICT = 1 << 26  # hard cap of any LZMA2 dictionary a delta may ask for
# Dictionaries the encoder uses: the decoder allocates them, so they bound the device's RAM.
# Measured: 256 KiB loses nothing on the delta streams, 1 MiB costs < 0.2% on an 8 MiB image.
STREAM_DICT = 1 << 18
IMAGE_DICT = 1 << 20
MAX_CONTROL_TUPLE_BYTES = 30  # upper bound of one varint-encoded control tuple
MAX_OUTSIDE_STEPS = 1 << 16  # most steps an outside-address map may have
MIN_SEGMENT = 12  # shortest match a delta may let into the move map (bounds its size)
BCJ_NONE, BCJ_ARMTHUMB = 0, 1  # filter in front of the full image's LZMA2 stream

# sparse-lzma: ops of a tag each (uvarint of value << 2 | kind). COPY and ADD take ``value + 1``
# bytes of old at the old position (ADD plus as many bytes of data, bytewise), INSERT takes
# ``value + 1`` bytes of data, SEEK moves the old position by the zigzag value ``value + 1``.
OP_COPY, OP_ADD, OP_INSERT, OP_SEEK = 0, 1, 2, 3
OP_KINDS = 4
# Layouts of the op stream: as is; one LZMA2 stream of tags and data interleaved; two LZMA2
# streams, the tags and the data.
SPARSE_STORED, SPARSE_LZMA, SPARSE_SPLIT = 0, 1, 2
MIN_DICT_LOG, MAX_DICT_LOG = 12, 26  # sparse-lzma's dictionaries are 2**k bytes, k in this range

# A bsdiff control tuple: copy this many bytes of old + diff, then this many bytes of extra,
# then move the old position by the (signed) seek.
Control = tuple[int, int, int]


class DeltaError(ValueError):
    """A delta that cannot be applied; the message says what was wrong and what to do."""


@dataclass(frozen=True)
class Delta:
    """An encoded update: the encoding's name (one of ENCODINGS) and its bytes."""

    encoding: str
    data: bytes

    def __len__(self) -> int:
        return len(self.data)


def corrupt(what: str) -> DeltaError:
    """The error for a delta that is damaged or does not fit the base image: says what was
    found and that the device should fetch it again or take the full image."""
    return DeltaError(
        f"{what}; the delta is corrupt or was made for another base image "
        "- discard it and download it again, or fall back to the full image"
    )


def wrong_base(declared: int, have: int) -> DeltaError:
    """The error for a delta made for a base image of another size."""
    return DeltaError(
        f"delta was made for a {declared}-byte base image, this one has {have} bytes; "
        "ask for a delta from the installed version or for the full image")


def max_segments(new_size: int) -> int:
    """Most move-map segments a delta for a ``new_size``-byte image may have: the encoder
    stays within it, the decoder rejects more (the map's memory then stays bounded)."""
    return 1024 + new_size // 256


# --------------------------------------------------------------------------- varints


def zigzag(n: int) -> int:
    """Signed -> unsigned (0, -1, 1, -2 ... -> 0, 1, 2, 3 ...) so small magnitudes stay short."""
    return n << 1 if n >= 0 else ((-n) << 1) - 1


def uvarint(n: int) -> bytes:
    """LEB128: 7 bits a byte, least significant first, high bit set on all but the last."""
    if n < 0:
        raise ValueError("uvarint of a negative number")
    out = bytearray()
    while True:
        low7 = n & 0x7F
        n >>= 7
        if n:
            out.append(low7 | 0x80)
        else:
            out.append(low7)
            return bytes(out)


def svarint(n: int) -> bytes:
    """A signed value as the uvarint of its zigzag encoding."""
    return uvarint(zigzag(n))


# --------------------------------------------------------------------------- writing


def seal(encoding: str, body: bytes) -> bytes:
    """magic, version, encoding id, CRC-32 of the body, body."""
    return MAGIC + bytes((FORMAT_VERSION, ENCODING_IDS[encoding])) + struct.pack("<I", zlib.crc32(body)) + body


def frame_streams(encoding: str, new_size: int, fields: list[int], streams: list[tuple[int, bytes]]) -> bytes:
    """The sealed container of a bsdiff-style encoding: new size, ``fields``, then the
    dictionary size and length of each ``(dict_size, stream)``, then the streams."""
    head = bytearray(uvarint(new_size))
    for field in fields:
        head += uvarint(field)
    for dict_size, _ in streams:
        head += uvarint(dict_size)
    for _, stream in streams:
        head += uvarint(len(stream))
    return seal(encoding, bytes(head) + b"".join(stream for _, stream in streams))


# --------------------------------------------------------------------------- bsdiff4 (BSDIFF40)


def decode_int64(raw: bytes) -> int:
    """bsdiff4's 8-byte number: little-endian magnitude, sign in the top bit."""
    value = int.from_bytes(raw, "little")
    if value & (1 << 63):
        return -(value & ((1 << 63) - 1))
    return value
