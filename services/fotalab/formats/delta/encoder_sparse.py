"""``sparse-lzma`` on the signer: bsdiff's matches as exact copies, sparse adds and inserts.

A bsdiff match of two builds is mostly identical bytes with a few scattered differences;
``bsdiff-lzma`` ships the whole diff (long zero runs included) in its own LZMA2 stream next
to the control and extra streams, whose fixed framing decides the size of a small change.
Here each match becomes COPY ops for its runs of equal bytes and ADD ops for the differing
stretches between them, the extra bytes INSERT ops, and the old position moves with SEEK ops
only where a copy needs it; the last copy is implicit. The ops travel as they are (a change of
a few bytes then costs tens of bytes) or LZMA2-compressed, tags and data in one stream or in
two: the encoder keeps the smallest (see ``container`` for the op and layout constants and
``decoder_sparse`` for the applier).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from .container import (
    MAX_DICT_LOG,
    MIN_DICT_LOG,
    OP_ADD,
    OP_COPY,
    OP_INSERT,
    OP_SEEK,
    SPARSE_LZMA,
    SPARSE_SPLIT,
    SPARSE_STORED,
    STREAM_DICT,
    Control,
    seal,
    svarint,
    uvarint,
    zigzag,
)
from .encoder_streams import lzma_compress

_ZERO_RUN = re.compile(rb"\x00+")
# Shortest run of equal bytes inside a match that becomes a COPY (shorter runs stay in the
# ADD around them), tried per pair (fewer on large images). Measured on the x86-64 pairs: 1 is
# best on the 2.5 MB code change (37,836 bytes against 38,485 for 2 and 39,076 for 8), the
# small changes differ by a byte or two.
_GAPS = (1, 2, 4, 12)
_LARGE_GAPS = (1, 4)

Op = list  # [kind, value, data]: value is a length (COPY, ADD, INSERT) or the seek (SEEK)


def sparse_ops(old: bytes, new: bytes, controls: Sequence[Control], diff: bytes, gap: int) -> list[Op]:
    """The ops that rebuild ``new`` from bsdiff's controls and diff: runs of at least ``gap``
    equal bytes (and those at either end of a match) are copies, the rest of a match adds,
    extra bytes inserts; the decoder's old position is moved only where a copy needs it."""
    ops: list[Op] = []
    old_size = len(old)
    decoder_old = old_pos = new_pos = diff_pos = 0

    def push(kind: int, value: int, data: bytes = b"") -> None:
        if ops and ops[-1][0] == kind and kind != OP_SEEK:
            ops[-1][1] += value
            ops[-1][2] += data
        else:
            ops.append([kind, value, bytearray(data)])

    def from_old(kind: int, start: int, length: int, data: bytes = b"") -> None:
        nonlocal decoder_old
        if start != decoder_old:
            push(OP_SEEK, start - decoder_old)
        push(kind, length, data)
        decoder_old = start + length

    for copy_len, extra_len, seek in controls:
        match = diff[diff_pos:diff_pos + copy_len]
        diff_pos += copy_len
        if copy_len and 0 <= old_pos and old_pos + copy_len <= old_size:
            done = 0
            for run in _ZERO_RUN.finditer(match):
                start, end = run.span()
                if end - start < gap and start > 0 and end < copy_len:
                    continue
                if start > done:
                    from_old(OP_ADD, old_pos + done, start - done, match[done:start])
                from_old(OP_COPY, old_pos + start, end - start)
                done = end
            if done < copy_len:
                from_old(OP_ADD, old_pos + done, copy_len - done, match[done:])
        elif copy_len:  # bsdiff read outside the old image: ship the new bytes
            push(OP_INSERT, copy_len, new[new_pos:new_pos + copy_len])
        new_pos += copy_len
        if extra_len:
            push(OP_INSERT, extra_len, new[new_pos:new_pos + extra_len])
        new_pos += extra_len
        old_pos += copy_len + seek
    if ops and ops[-1][0] == OP_COPY:
        ops.pop()  # the decoder copies whatever is left of the output from the old position
    return ops


def _tag(kind: int, value: int) -> bytes:
    return uvarint(((zigzag(value) if kind == OP_SEEK else value) - 1) << 2 | kind)


def _dict_log(size: int, new_size: int) -> int:
    """Smallest dictionary (as log2) that holds ``size`` bytes, within STREAM_DICT and the
    decoder's cap for this output size."""
    cap = max(1 << MIN_DICT_LOG, min(STREAM_DICT, (new_size + 4095) & ~4095))
    log = MIN_DICT_LOG
    while (1 << log) < size and (2 << log) <= cap and log < MAX_DICT_LOG:
        log += 1
    return log


def _compressed(stream: bytes, new_size: int) -> tuple[bytes, bytes]:
    """(dictionary field, LZMA2 stream)."""
    log = _dict_log(len(stream), new_size)
    return uvarint(log), lzma_compress(stream, tune=True, dict_max=1 << log)[1]


def sparse_layouts(old: bytes, new: bytes, ops: Sequence[Op], encoding: str = "sparse-lzma",
                   fields: Sequence[int] = ()) -> dict[int, bytes]:
    """The container of these ops in each layout that applies (by layout id): stored, one
    LZMA2 stream, tags and data in two. ``fields``: a relocating encoding's settings."""
    tags = [_tag(kind, value) for kind, value, _ in ops]
    joined = b"".join(tag + bytes(data) for tag, (_, _, data) in zip(tags, ops))
    head = uvarint(len(new)) + svarint(len(old) - len(new)) + b"".join(map(uvarint, fields))
    bodies = {SPARSE_STORED: joined}
    if joined:
        dict_field, stream = _compressed(joined, len(new))
        bodies[SPARSE_LZMA] = dict_field + stream
        tag_dict, tag_stream = _compressed(b"".join(tags), len(new))
        data_dict, data_stream = _compressed(b"".join(bytes(data) for _, _, data in ops), len(new))
        bodies[SPARSE_SPLIT] = tag_dict + data_dict + uvarint(len(tag_stream)) + tag_stream + data_stream
    return {layout: seal(encoding, head + uvarint(layout) + body) for layout, body in bodies.items()}


def pack_sparse(old: bytes, new: bytes, ops: Sequence[Op], encoding: str = "sparse-lzma",
                fields: Sequence[int] = ()) -> bytes:
    """The smallest layout of these ops."""
    return min(sparse_layouts(old, new, ops, encoding, fields).values(), key=len)


def merge_contiguous(controls: Sequence[Control]) -> list[Control]:
    """The controls with every match that continues into the next one in both images (no
    extra bytes, no seek) merged with it: the decoder of the relocating sparse encodings sees
    such matches as one, and the move map must be the same on both sides."""
    merged: list[Control] = []
    carry = 0
    for copy_len, extra_len, seek in controls:
        if not extra_len and not seek:
            carry += copy_len
            continue
        merged.append((carry + copy_len, extra_len, seek))
        carry = 0
    if carry:
        merged.append((carry, 0, 0))
    return merged


def reads_inside(controls: Sequence[Control], old_size: int) -> bool:
    """Whether every match lies inside the old image (as the relocating sparse encodings need)."""
    old_pos = 0
    for copy_len, _, seek in controls:
        if copy_len and not (0 <= old_pos and old_pos + copy_len <= old_size):
            return False
        old_pos += copy_len + seek
    return True


def encode_sparse(old: bytes, new: bytes, controls: Sequence[Control], diff: bytes, tune: bool,
                  encoding: str = "sparse-lzma", fields: Sequence[int] = ()) -> bytes:
    """``sparse-lzma`` of the pair from bsdiff's matches (or a relocating sparse encoding from
    the diff against the relocated image, with its settings as ``fields``), the smallest over
    the gaps tried (all of them when ``tune``; the streams are small, so LZMA2's lc/lp/pb are
    always tuned)."""
    gaps = _GAPS if tune else _LARGE_GAPS
    return min((pack_sparse(old, new, sparse_ops(old, new, controls, diff, gap), encoding, fields) for gap in gaps),
               key=len)
