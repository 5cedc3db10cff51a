"""Delta encodings: round trips, choice of the smallest, and a hostile applier's input."""

from __future__ import annotations

import bz2
import functools
import os
import random
import struct
import zlib
from pathlib import Path

import pytest

from fotalab.formats import delta as D
from fotalab.formats.delta import (
    CHUNK,
    ENCODINGS,
    Delta,
    DeltaError,
    apply_delta,
    apply_delta_to,
    archdetect,
    best_delta,
    bytewise,
    candidates,
    container,
    encode,
    encoder_streams,
    relocate_thumb,
)
from fotalab.signer.fwgen import firmware_versions

PAIRS_DIR = Path(os.environ.get("FOTALAB_FIRMWARE_PAIRS",
                                Path(__file__).resolve().parents[2].parent / "shared" / "firmware-pairs"))
# The small real pairs keep this file fast; scripts/bench-delta covers all of them.
SMALL_REAL = ("k64f_mbed_blinky", "rpi3_aarch64_shell_1_to_2")


def real_pair(name: str) -> tuple[bytes, bytes]:
    folder = PAIRS_DIR / name
    if not (folder / "old.bin").exists():
        pytest.skip(f"real firmware pairs not found at {PAIRS_DIR}")
    return (folder / "old.bin").read_bytes(), (folder / "new.bin").read_bytes()


@functools.cache
def generated_pair(arch: str, size: int = 64 * 1024) -> tuple[bytes, bytes]:
    a, b = firmware_versions(7, size, 2, arch)
    return a, b


@functools.cache
def all_encodings(kind: str, name: str) -> dict[str, Delta]:
    old, new = real_pair(name) if kind == "real" else generated_pair(name)
    return {d.encoding: d for d in candidates(old, new, only=ENCODINGS)}


def pair(kind: str, name: str) -> tuple[bytes, bytes]:
    return real_pair(name) if kind == "real" else generated_pair(name)


CASES = [("real", n) for n in SMALL_REAL] + [("gen", "thumb"), ("gen", "aarch64")]
assert CASES[0] == ("real", "k64f_mbed_blinky") and CASES[3] == ("gen", "aarch64")


# --------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("kind,name", CASES)
def test_every_encoding_round_trips(kind, name):
    old, new = pair(kind, name)
    deltas = all_encodings(kind, name)
    assert set(deltas) == set(ENCODINGS)
    for enc, delta in deltas.items():
        assert apply_delta(old, delta, len(new)) == new, enc


@pytest.mark.parametrize("kind,name", CASES)
def test_streaming_apply_writes_bounded_chunks(kind, name):
    old, new = pair(kind, name)
    for enc, delta in all_encodings(kind, name).items():
        chunks: list[bytes] = []
        n = apply_delta_to(old, delta, chunks.append, len(new))
        assert n == len(new) and b"".join(chunks) == new, enc
        assert max(map(len, chunks), default=0) <= CHUNK


@pytest.mark.parametrize("kind,name", CASES)
def test_relocating_encoding_beats_plain_bsdiff4(kind, name):
    deltas = all_encodings(kind, name)
    best_filtered = min(len(deltas["thumb-lzma"].data), len(deltas["aarch64-lzma"].data))
    assert len(deltas["bsdiff-lzma"].data) < len(deltas["bsdiff4"].data)
    assert best_filtered < len(deltas["bsdiff4"].data)


def test_xtensa_encoding_on_a_slice_of_the_esp8266_pair():
    old, new = real_pair("esp8266_micropython_v1.9.4_to_v1.10")
    old, new = old[0x30000:0x40000], new[0x30000:0x40000]  # 64 KiB of irom0 code
    assert archdetect.arch_score("xtensa", old) > 0.2
    assert archdetect.guess_base("xtensa", old) == 0x40230000  # irom0 is mapped at 0x40200000
    d = encode(old, new, "xtensa-lzma")
    assert apply_delta(old, d, len(new)) == new
    assert len(d.data) < 0.9 * len(encode(old, new, "bsdiff4").data)


def test_real_pair_figures_beat_the_published_best_peer():
    # SOURCES.md: best peer 619 (rpi3, detools AArch64) and 607 (synthesizer, detools ARM)
    assert len(all_encodings("real", "rpi3_aarch64_shell_1_to_2")["aarch64-lzma"].data) < 619
    old, new = real_pair("cortexm4_synthesizer_1_to_2")
    d = encode(old, new, "thumb-lzma")
    assert len(d.data) < 607
    assert apply_delta(old, d, len(new)) == new


def test_python_bspatch_on_a_larger_real_pair():
    old, new = real_pair("pyboard_stm32f4_v1.10_to_1f5d945af")
    d = encode(old, new, "bsdiff4")
    assert apply_delta(old, d, len(new)) == new


def test_identical_and_empty_images():
    img = generated_pair("thumb")[0]
    for old, new in ((img, img), (img, b""), (b"", img[:5000]), (b"", b"")):
        for d in candidates(old, new, only=ENCODINGS):
            assert apply_delta(old, d, len(new)) == new, d.encoding


# --------------------------------------------------------------------------- choosing


@pytest.mark.parametrize("kind,name", [CASES[0], CASES[3]])
def test_best_delta_is_the_smallest_candidate(kind, name):
    old, new = pair(kind, name)
    best = best_delta(old, new)
    sizes = {enc: len(d.data) for enc, d in all_encodings(kind, name).items()}
    assert len(best.data) == min(sizes.values())
    assert best.encoding in ("thumb-lzma", "aarch64-lzma", "thumb-sparse", "aarch64-sparse")
    assert apply_delta(old, best, len(new)) == new


def test_full_image_wins_for_unrelated_images():
    rng = random.Random(1)
    old = rng.randbytes(40_000)
    new = generated_pair("thumb")[1][:40_000]
    best = best_delta(old, new)
    assert best.encoding == "full-lzma"
    assert apply_delta(b"whatever", best, len(new)) == new
    # two unrelated firmwares of the same kind: still the full image
    other = firmware_versions(99, 64 * 1024, 1, "thumb")[0]
    best = best_delta(other, generated_pair("thumb")[1])
    assert best.encoding == "full-lzma"


# --------------------------------------------------------------------------- hostile input


def small_deltas() -> tuple[bytes, bytes, dict[str, Delta]]:
    old, new = real_pair("rpi3_aarch64_shell_1_to_2")
    return old, new, all_encodings("real", "rpi3_aarch64_shell_1_to_2")


def applies_or_rejects(old: bytes, new: bytes, delta: Delta, max_output: int) -> str:
    """Apply a damaged delta: it must raise DeltaError or (a flip in ignored padding bits)
    give exactly the right image. Anything else fails the test."""
    try:
        out = apply_delta(old, delta, max_output)
    except DeltaError as e:
        assert str(e)
        return "rejected"
    assert out == new, "damaged delta produced a wrong image without an error"
    return "ok"


@pytest.mark.parametrize("enc", ENCODINGS)
def test_truncated_deltas_are_rejected(enc):
    old, new, deltas = small_deltas()
    data = deltas[enc].data
    cuts = sorted(set(range(0, len(data), max(1, len(data) // 60))) | {len(data) - 1, 1, 5, 9, 11})
    for cut in cuts:
        with pytest.raises(DeltaError):
            apply_delta(old, Delta(enc, data[:cut]), len(new))


@pytest.mark.parametrize("enc", ENCODINGS)
def test_bit_flipped_deltas_are_rejected(enc):
    old, new, deltas = small_deltas()
    data = deltas[enc].data
    rng = random.Random(enc)
    results = []
    for _ in range(150):
        b = bytearray(data)
        i = rng.randrange(len(b))
        b[i] ^= 1 << rng.randrange(8)
        results.append(applies_or_rejects(old, new, Delta(enc, bytes(b)), len(new) + 4096))
    assert results.count("rejected") >= 140
    if enc != "bsdiff4":  # the container's CRC-32 catches every single-bit flip
        assert set(results) == {"rejected"}


@pytest.mark.parametrize("enc", ENCODINGS)
def test_garbage_and_wrong_labels_are_rejected(enc):
    old, new, deltas = small_deltas()
    rng = random.Random(3)
    for n in (0, 1, 7, 31, 200, 5000):
        with pytest.raises(DeltaError):
            apply_delta(old, Delta(enc, rng.randbytes(n)), 1 << 20)
    other = "full-lzma" if enc != "full-lzma" else "bsdiff-lzma"
    with pytest.raises(DeltaError):
        apply_delta(old, Delta(enc, deltas[other].data), len(new))


def test_unknown_encoding_and_format_version():
    old, new, deltas = small_deltas()
    with pytest.raises(DeltaError, match="unknown delta encoding"):
        apply_delta(old, Delta("xdelta9", deltas["bsdiff-lzma"].data), len(new))
    data = bytearray(deltas["bsdiff-lzma"].data)
    data[4] = 99
    with pytest.raises(DeltaError, match="format version 99"):
        apply_delta(old, Delta("bsdiff-lzma", bytes(data)), len(new))


def test_delta_for_another_base_is_rejected():
    old, new, deltas = small_deltas()
    with pytest.raises(DeltaError, match="base image"):
        apply_delta(old[:-1], deltas["aarch64-lzma"], len(new))


@pytest.mark.parametrize("enc", ENCODINGS)
def test_max_output_is_enforced(enc):
    old, new, deltas = small_deltas()
    written = []
    with pytest.raises(DeltaError, match="max_output|allowed"):
        apply_delta_to(old, deltas[enc], written.append, len(new) - 1)
    assert sum(map(len, written)) <= len(new) - 1


def _reseal(enc: str, body: bytes) -> Delta:
    return Delta(enc, container.seal(enc, body))


def test_container_asking_for_huge_dictionary_or_size_is_rejected_before_allocating():
    old, new, _ = small_deltas()
    # full image declaring 1 TiB of output, within a generous max_output: rejected by the
    # dictionary bound / the stream, never by allocating the declared size
    body = container.uvarint(1 << 40) + container.uvarint(0) + container.uvarint(1 << 40) + b"\x00" * 16
    with pytest.raises(DeltaError):
        apply_delta(old, _reseal("full-lzma", body), 1 << 41)
    body = container.uvarint(1000) + container.uvarint(0) + container.uvarint(1 << 30) + b"\x00" * 16
    with pytest.raises(DeltaError, match="dictionary"):
        apply_delta(old, _reseal("full-lzma", body), 1 << 20)
    with pytest.raises(DeltaError, match="allowed"):
        apply_delta(old, _reseal("full-lzma", container.uvarint(5000) + b"\x00" * 8), 4999)


def _bsdiff4_patch(controls: list[tuple[int, int, int]], diff: bytes, extra: bytes, new_size: int) -> bytes:
    import bsdiff4.core

    ctrl = b"".join(bsdiff4.core.encode_int64(v) for t in controls for v in t)
    c, d, e = bz2.compress(ctrl), bz2.compress(diff), bz2.compress(extra)
    return (b"BSDIFF40" + bsdiff4.core.encode_int64(len(c)) + bsdiff4.core.encode_int64(len(d))
            + bsdiff4.core.encode_int64(new_size) + c + d + e)


@pytest.mark.parametrize("controls,diff,extra,new_size", [
    ([(1 << 40, 0, 0)], b"", b"", 100),              # diff length far past the output
    ([(10, 1 << 62, 0)], b"\0" * 10, b"", 100),      # extra length far past the output
    ([(-5, 0, 0)], b"", b"", 100),                   # negative length
    ([(0, -1, 0)], b"", b"", 100),                   # negative extra
    ([(10, 0, 1 << 62), (10, 0, 0)], b"\0" * 20, b"", 20),  # seek to nowhere
    ([(50, 0, 0)], b"\0" * 10, b"", 50),             # diff stream shorter than promised
    ([(0, 50, 0)], b"", b"x" * 10, 50),              # extra stream shorter than promised
    ([(10, 0, 0)], b"\0" * 10, b"", 20),             # produces less than declared
    ([], b"", b"", -1),                              # negative output size
])
def test_crafted_bsdiff4_control_values_are_rejected(controls, diff, extra, new_size):
    old = bytes(range(256)) * 4
    patch = _bsdiff4_patch(controls, diff, extra, new_size)
    with pytest.raises(DeltaError):
        apply_delta(old, Delta("bsdiff4", patch), 1 << 20)


def test_crafted_bsdiff4_reading_outside_old_reads_zeros_like_bspatch():
    old = b"\x01" * 16
    patch = _bsdiff4_patch([(8, 0, -100), (8, 0, 0)], b"\x02" * 16, b"", 16)
    assert apply_delta(old, Delta("bsdiff4", patch), 16) == b"\x03" * 8 + b"\x02" * 8


def test_bsdiff4_declared_size_over_max_output():
    old, new, deltas = small_deltas()
    with pytest.raises(DeltaError, match="allowed"):
        apply_delta(old, deltas["bsdiff4"], 10)


def test_crafted_lzma_container_with_inconsistent_streams():
    old, new, deltas = small_deltas()
    data = deltas["bsdiff-lzma"].data
    body = data[container.HEADER_SIZE:]
    # extra bytes appended to the body (CRC recomputed): stream lengths no longer add up
    with pytest.raises(DeltaError):
        apply_delta(old, _reseal("bsdiff-lzma", body + b"\0"), len(new))
    # a control stream that covers less than declared
    ctrl = container.uvarint(5) + container.uvarint(0) + container.uvarint(0)
    d_c = encoder_streams.lzma_compress(ctrl, tune=False)
    d_d = encoder_streams.lzma_compress(old[:5], tune=False)
    d_e = encoder_streams.lzma_compress(b"", tune=False)
    blob = container.frame_streams("bsdiff-lzma", 6, [len(old), 1], [d_c, d_d, d_e])
    with pytest.raises(DeltaError, match="produces 5 bytes"):
        apply_delta(old, Delta("bsdiff-lzma", blob), 100)


def test_swar_byte_arithmetic():
    rng = random.Random(5)
    for n in (1, 2, 7, 64, 1000):
        a, b = rng.randbytes(n), rng.randbytes(n)
        assert bytewise.add_bytes(a, b) == bytes((x + y) & 0xFF for x, y in zip(a, b))
        assert bytewise.sub_bytes(a, b) == bytes((x - y) & 0xFF for x, y in zip(a, b))


def test_thumb_bl_encode_decode_round_trip():
    rng = random.Random(6)
    buf = bytearray(relocate_thumb.bl_encode(b"\x00\xf0\x00\xd0", 0, 0))
    for _ in range(500):
        off = rng.randrange(-(1 << 24), 1 << 24) & ~1
        enc = relocate_thumb.bl_encode(buf, 0, off)
        assert relocate_thumb.bl_decode(enc, 0) == off
        assert relocate_thumb.bl_match(enc, 0)


def test_crc_is_over_the_whole_body():
    _, _, deltas = small_deltas()
    data = deltas["full-lzma"].data
    assert struct.unpack_from("<I", data, 6)[0] == zlib.crc32(data[container.HEADER_SIZE:])
    assert data[:4] == D.MAGIC and data[4] == D.FORMAT_VERSION


def test_move_map_threshold_and_size_are_bounded_by_the_applier():
    old = bytes(range(256)) * 64
    new = old
    controls = [(len(old), 0, 0)]
    ok = encoder_streams.pack_streams("thumb-lzma", old, new, controls, bytes(len(old)), b"", [24, 0, 0, 0], False)
    assert apply_delta(old, Delta("thumb-lzma", ok), len(new)) == new
    low = encoder_streams.pack_streams("thumb-lzma", old, new, controls, bytes(len(old)), b"", [4, 0, 0, 0], False)
    with pytest.raises(DeltaError, match="threshold"):
        apply_delta(old, Delta("thumb-lzma", low), len(new))
    # many long matches for a tiny output: more move-map segments than any real delta has
    n = 2000
    assert n > container.max_segments(16 * n)
    many = [(16, 0, -16)] * n
    out = old[:16] * n
    blob = encoder_streams.pack_streams("aarch64-lzma", old, out, many, bytes(16 * n), b"", [12, 0, 0, 0], False)
    with pytest.raises(DeltaError, match="segments"):
        apply_delta(old, Delta("aarch64-lzma", blob), 16 * n)


@pytest.mark.parametrize("arch,base", [("thumb", 0x08000000), ("aarch64", 0x80000)])
def test_load_address_is_found_behind_a_header(arch, base):
    # Signed lab images put a 64-byte header in front of the payload: the base is then not
    # 4 KiB-aligned, and pointers must still be relocated.
    old, new = generated_pair(arch)
    assert archdetect.guess_base(arch, old) == base
    assert archdetect.guess_base(arch, b"H" * 64 + old) == base - 64
    wrapped = D.encode(b"H" * 64 + old + b"S" * 72, b"H" * 64 + new + b"T" * 72, f"{arch}-lzma")
    plain = all_encodings("gen", arch)[f"{arch}-lzma"]
    assert len(wrapped.data) < len(plain.data) * 1.1
    assert apply_delta(b"H" * 64 + old + b"S" * 72, wrapped, len(new) + 136) == b"H" * 64 + new + b"T" * 72
