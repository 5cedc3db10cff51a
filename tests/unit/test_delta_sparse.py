"""sparse-lzma: copies, adds, inserts and seeks; round trips in every layout, small changes
made small, and a hostile applier's input rejected with a message that says what was wrong."""

from __future__ import annotations

import functools
import os
import random
from pathlib import Path

import pytest

from fotalab.formats.delta import (
    CHUNK,
    Delta,
    DeltaError,
    apply_delta,
    apply_delta_to,
    best_delta,
    container,
    encode,
    encoder_sparse,
    encoder_streams,
)
from fotalab.formats.delta.container import OP_ADD, OP_COPY, OP_INSERT, OP_SEEK
from fotalab.signer.fwgen import firmware_versions

SHARED = Path(__file__).resolve().parents[2].parent / "shared"
FIRMWARE_PAIRS = Path(os.environ.get("FOTALAB_FIRMWARE_PAIRS", SHARED / "firmware-pairs"))
LINUX_PAIRS = Path(os.environ.get("FOTALAB_LINUX_PAIRS", SHARED / "linux-pairs"))
REAL = [(FIRMWARE_PAIRS, "rpi3_aarch64_shell_1_to_2"), (FIRMWARE_PAIRS, "k64f_mbed_blinky"),
        (LINUX_PAIRS, "x86_64_markupsafe_2.1.4_to_2.1.5"), (LINUX_PAIRS, "x86_64_ujson_5.9.0_to_5.10.0")]


def real_pair(folder: Path, name: str) -> tuple[bytes, bytes]:
    if not (folder / name / "old.bin").exists():
        pytest.skip(f"{name} not found in {folder}")
    return (folder / name / "old.bin").read_bytes(), (folder / name / "new.bin").read_bytes()


@functools.cache
def generated(arch: str) -> tuple[bytes, bytes]:
    old, new = firmware_versions(11, 64 * 1024, 2, arch)
    return old, new


def few_bytes_changed() -> tuple[bytes, bytes]:
    """A build-id and two version bytes changed in 50 KB, as in the markupsafe pair."""
    rng = random.Random(4)
    old = bytes(rng.choices(range(16), k=50_000))
    new = bytearray(old)
    new[600:620] = rng.randbytes(20)
    new[26_000] ^= 1
    new[26_040] ^= 1
    return old, bytes(new)


def layouts(old: bytes, new: bytes, gap: int = 4) -> dict[int, Delta]:
    controls, diff, _ = encoder_streams.bsdiff_matches(old, new)
    ops = encoder_sparse.sparse_ops(old, new, controls, diff, gap)
    return {layout: Delta("sparse-lzma", blob) for layout, blob in encoder_sparse.sparse_layouts(old, new, ops).items()}


def body(new_size: int, old_size: int, ops: bytes, layout: int = container.SPARSE_STORED) -> Delta:
    """A sealed sparse-lzma container around hand-made ops (stored layout unless told)."""
    head = container.uvarint(new_size) + container.svarint(old_size - new_size) + container.uvarint(layout)
    return Delta("sparse-lzma", container.seal("sparse-lzma", head + ops))


def op(kind: int, value: int, data: bytes = b"") -> bytes:
    coded = container.zigzag(value) if kind == OP_SEEK else value
    return container.uvarint((coded - 1) << 2 | kind) + data


# --------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("case", ["thumb", "aarch64", "few", *range(len(REAL))])
def test_every_layout_and_gap_round_trips(case):
    if case in ("thumb", "aarch64"):
        old, new = generated(case)
    elif case == "few":
        old, new = few_bytes_changed()
    else:
        old, new = real_pair(*REAL[case])
    for gap in (1, 4, 16):
        found = layouts(old, new, gap)
        assert set(found) == {container.SPARSE_STORED, container.SPARSE_LZMA, container.SPARSE_SPLIT}
        for layout, delta in found.items():
            chunks: list[bytes] = []
            assert apply_delta_to(old, delta, chunks.append, len(new)) == len(new), (gap, layout)
            assert b"".join(chunks) == new, (gap, layout)
            assert max(map(len, chunks), default=0) <= CHUNK
            assert all(len(chunk) == CHUNK for chunk in chunks[:-1])


def test_edge_images_round_trip():
    img = generated("thumb")[0]
    cases = [(img, img), (img, b""), (b"", img[:5000]), (b"", b""), (img[:100], img[50:3000]),
             (img, img[:1000] + img[2000:] + img[:300])]
    for old, new in cases:
        for delta in layouts(old, new).values():
            assert apply_delta(old, delta, len(new)) == new
        assert apply_delta(old, encode(old, new, "sparse-lzma"), len(new)) == new


def test_a_few_changed_bytes_cost_tens_of_bytes_and_ship():
    old, new = few_bytes_changed()
    delta = best_delta(old, new)
    assert delta.encoding == "sparse-lzma"
    assert len(delta.data) < 60  # 22 changed bytes, 10 of header, a few of sizes and ops
    assert len(delta.data) < len(encode(old, new, "bsdiff-lzma").data) / 2
    assert apply_delta(old, delta, len(new)) == new


def test_identical_images_are_a_header_and_nothing_else():
    img = generated("aarch64")[0]
    delta = encode(img, img, "sparse-lzma")
    assert len(delta.data) <= container.HEADER_SIZE + 6
    assert apply_delta(img, delta, len(img)) == img


def test_real_x86_64_changes_beat_bsdiff_lzma():
    for folder, name in REAL[2:]:
        old, new = real_pair(folder, name)
        sparse = encode(old, new, "sparse-lzma")
        assert len(sparse.data) < 0.6 * len(encode(old, new, "bsdiff-lzma").data)
        assert apply_delta(old, sparse, len(new)) == new


# --------------------------------------------------------------------------- hostile input


@pytest.mark.parametrize("layout", [container.SPARSE_STORED, container.SPARSE_LZMA, container.SPARSE_SPLIT])
def test_truncations_and_bit_flips_are_rejected(layout):
    old, new = generated("aarch64")
    data = layouts(old, new)[layout].data
    for cut in sorted(set(range(0, len(data), max(1, len(data) // 80))) | {len(data) - 1}):
        with pytest.raises(DeltaError):
            apply_delta(old, Delta("sparse-lzma", data[:cut]), len(new))
    rng = random.Random(layout)
    for _ in range(100):
        flipped = bytearray(data)
        flipped[rng.randrange(len(flipped))] ^= 1 << rng.randrange(8)
        with pytest.raises(DeltaError):
            apply_delta(old, Delta("sparse-lzma", bytes(flipped)), len(new))


OLD = bytes(range(256)) * 4  # 1024 bytes


@pytest.mark.parametrize("new_size,ops,message", [
    (3000, op(OP_COPY, 2000), "copy op of 2000 bytes at old offset 0 runs past the end of the 1024-byte old image"),
    (3000, op(OP_SEEK, 1000) + op(OP_ADD, 100, b"\1" * 100), "add op of 100 bytes at old offset 1000 runs past"),
    (10, op(OP_INSERT, 11, b"x" * 11), "insert op of 11 bytes at output offset 0 runs past the declared output"),
    (10, op(OP_COPY, 5) + op(OP_INSERT, 6, b"x" * 6), "runs past the declared output size 10"),
    (10, op(OP_SEEK, -1), "seek to old offset -1, outside the 1024-byte old image"),
    (10, op(OP_SEEK, 1025), "seek to old offset 1025, outside"),
    (10, op(OP_SEEK, 5) + op(OP_SEEK, 5), "two seek ops in a row"),
    (10, op(OP_COPY, 10) + op(OP_SEEK, 3), "seek op after the end of the 10-byte output"),
    (10, op(OP_COPY, 10) + op(OP_INSERT, 1, b"x"), "insert op after the end"),
    (2000, op(OP_COPY, 10), "the final copy of 1990 bytes at old offset 10 runs past the end"),
    (1 << 40, b"", "the final copy of 1099511627776 bytes"),  # huge declared size: nothing allocated
    (10, op(OP_INSERT, 5, b"xy"), "truncated op stream"),
    (10, op(OP_ADD, 5, b"xy"), "truncated op stream"),
    (10, b"\x80", "truncated op stream"),
    (10, b"\xff" * 11, "overlong varint in op stream"),
    (10, op(OP_COPY, 1 << 45), "out of range in op stream"),
])
def test_crafted_ops_are_rejected_with_what_was_wrong(new_size, ops, message):
    with pytest.raises(DeltaError, match=message.replace("(", r"\(")):
        apply_delta(OLD, body(new_size, len(OLD), ops), 1 << 41)


def test_crafted_ops_that_are_valid_apply():
    ops = op(OP_SEEK, 256) + op(OP_ADD, 2, b"\1\1") + op(OP_INSERT, 3, b"abc") + op(OP_SEEK, -258) + op(OP_COPY, 2)
    assert apply_delta(OLD, body(10, len(OLD), ops), 10) == b"\1\2abc\0\1\2\3\4"


def test_header_fields_are_checked():
    with pytest.raises(DeltaError, match="made for a 1023-byte base image, this one has 1024"):
        apply_delta(OLD, body(10, 1023, b""), 100)
    with pytest.raises(DeltaError, match="allowed 100"):
        apply_delta(OLD, body(101, len(OLD), b""), 100)
    with pytest.raises(DeltaError, match="value 3 out of range"):  # unknown layout
        apply_delta(OLD, body(10, len(OLD), b"", layout=3), 100)
    for log in (11, 27, 200):
        with pytest.raises(DeltaError, match="dictionary"):
            apply_delta(OLD, body(10, len(OLD), container.uvarint(log) + b"\0" * 8, container.SPARSE_LZMA), 100)
    with pytest.raises(DeltaError, match=r"2\*\*20-byte dictionary"):  # more than the output needs
        apply_delta(OLD, body(5000, len(OLD), container.uvarint(20) + b"\0" * 8, container.SPARSE_LZMA), 1 << 20)


def _lzma(data: bytes) -> bytes:
    return encoder_streams.lzma_compress(data, tune=False, dict_max=4096)[1]


def test_crafted_lzma_layouts_are_rejected():
    ops = op(OP_INSERT, 4, b"abcd")
    ok = body(4, len(OLD), container.uvarint(12) + _lzma(ops), container.SPARSE_LZMA)
    assert apply_delta(OLD, ok, 4) == b"abcd"
    with pytest.raises(DeltaError, match="corrupt op stream|truncated op stream"):
        apply_delta(OLD, body(4, len(OLD), container.uvarint(12) + _lzma(ops)[:-2], container.SPARSE_LZMA), 4)
    with pytest.raises(DeltaError, match="trailing bytes after the op stream"):
        apply_delta(OLD, body(4, len(OLD), container.uvarint(12) + _lzma(ops) + b"\0", container.SPARSE_LZMA), 4)
    with pytest.raises(DeltaError, match="truncated op stream"):  # a tag cut in the middle
        apply_delta(OLD, body(4, len(OLD), container.uvarint(12) + _lzma(ops + b"\x80"), container.SPARSE_LZMA), 4)

    def split(tags: bytes, data: bytes, past_end: bool = False) -> Delta:
        tag_stream, data_stream = _lzma(tags), _lzma(data)
        length = len(tag_stream) + (len(data_stream) + 1 if past_end else 0)
        fields = container.uvarint(12) + container.uvarint(12) + container.uvarint(length)
        return body(4, len(OLD), fields + tag_stream + data_stream, container.SPARSE_SPLIT)

    tags = op(OP_INSERT, 2) + op(OP_ADD, 2)
    assert apply_delta(OLD, split(tags, b"ab\1\1"), 4) == b"ab\1\2"
    with pytest.raises(DeltaError, match="op data stream has more data than"):
        apply_delta(OLD, split(tags, b"ab\1\1extra"), 4)
    with pytest.raises(DeltaError, match="op data stream ended early|truncated op data stream"):
        apply_delta(OLD, split(tags, b"ab\1"), 4)
    with pytest.raises(DeltaError, match="op tag stream of [0-9]+ bytes runs past the end of the delta"):
        apply_delta(OLD, split(tags, b"ab\1\1", past_end=True), 4)


def test_unknown_encoding_id_asks_for_an_update():
    old, new = few_bytes_changed()
    data = bytearray(encode(old, new, "sparse-lzma").data)
    data[5] = 77
    with pytest.raises(DeltaError, match="unknown delta encoding id 77; update the updater"):
        apply_delta(old, Delta("sparse-lzma", bytes(data)), len(new))


# --------------------------------------------------------------------------- relocating sparse encodings


@pytest.mark.parametrize("arch", ["thumb", "aarch64"])
@pytest.mark.parametrize("layout", [container.SPARSE_STORED, container.SPARSE_LZMA, container.SPARSE_SPLIT])
def test_relocating_sparse_encodings_round_trip_in_every_layout(arch, layout, monkeypatch):
    old, new = generated(arch)
    monkeypatch.setattr(encoder_sparse, "pack_sparse", lambda *args: encoder_sparse.sparse_layouts(*args)[layout])
    delta = encode(old, new, f"{arch}-sparse")
    chunks: list[bytes] = []
    assert apply_delta_to(old, delta, chunks.append, len(new)) == len(new)
    assert b"".join(chunks) == new
    assert max(map(len, chunks)) <= CHUNK


def test_relocating_sparse_beats_relocating_streams_on_small_real_changes():
    old, new = real_pair(FIRMWARE_PAIRS, "rpi3_aarch64_shell_1_to_2")
    sparse = encode(old, new, "aarch64-sparse")
    assert len(sparse.data) < 0.8 * len(encode(old, new, "aarch64-lzma").data)
    assert best_delta(old, new) == sparse
    assert apply_delta(old, sparse, len(new)) == new


def test_contiguous_matches_merge_as_the_decoder_sees_them():
    merge = encoder_sparse.merge_contiguous
    assert merge([(5, 0, 0), (7, 2, 0), (3, 0, 0), (4, 0, -9), (1, 0, 0)]) == [(12, 2, 0), (7, 0, -9), (1, 0, 0)]
    assert merge([(0, 0, 0)]) == [] and merge([]) == []
    assert encoder_sparse.reads_inside([(10, 0, -5), (5, 0, 0)], 10)
    assert not encoder_sparse.reads_inside([(10, 0, -5), (6, 0, 0)], 10)


def test_relocating_sparse_settings_and_move_map_are_bounded():
    old = bytes(range(256)) * 64
    ops = [[OP_COPY, 12, b""]]
    ok = encoder_sparse.pack_sparse(old, old, ops, "thumb-sparse", [24, 0, 0, 0])
    assert apply_delta(old, Delta("thumb-sparse", ok), len(old)) == old
    low = encoder_sparse.pack_sparse(old, old, ops, "thumb-sparse", [4, 0, 0, 0])
    with pytest.raises(DeltaError, match="move-map threshold 4 below the minimum 12"):
        apply_delta(old, Delta("thumb-sparse", low), len(old))
    bad_mode = encoder_sparse.pack_sparse(old, old, ops, "aarch64-sparse", [24, 3, 0, 0])
    with pytest.raises(DeltaError, match="value 3 out of range"):
        apply_delta(old, Delta("aarch64-sparse", bad_mode), len(old))
    # many long matches, each behind a seek, for a small output: more segments than allowed
    n = 2000
    assert n > container.max_segments(16 * n)
    many = [op for _ in range(n) for op in ([OP_SEEK, -16, b""], [OP_COPY, 16, b""])][1:]
    blob = encoder_sparse.pack_sparse(old, old[:16] * n, many, "aarch64-sparse", [12, 0, 0, 0])
    with pytest.raises(DeltaError, match="move map has more than"):
        apply_delta(old, Delta("aarch64-sparse", blob), 16 * n)
    with pytest.raises(DeltaError, match="made for a 16384-byte base image, this one has 16383"):
        apply_delta(old[:-1], Delta("thumb-sparse", ok), len(old))
