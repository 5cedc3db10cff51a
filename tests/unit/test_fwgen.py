"""Firmware generator: deterministic, exact sizes, and versions that are realistic edits."""

from __future__ import annotations

import struct

import bsdiff4
import pytest

from fotalab.formats import delta as D
from fotalab.formats.delta import archdetect
from fotalab.signer.fwgen import firmware_versions

KIB = 1024


@pytest.mark.parametrize("arch", ["thumb", "aarch64"])
def test_deterministic_for_the_same_arguments(arch):
    a = firmware_versions(3, 64 * KIB, 3, arch)
    b = firmware_versions(3, 64 * KIB, 3, arch)
    assert a == b
    assert firmware_versions(4, 64 * KIB, 3, arch) != a
    assert firmware_versions(3, 64 * KIB, 2, arch) == a[:2]  # a longer run extends a shorter one


def test_architectures_differ():
    assert firmware_versions(3, 64 * KIB, 1, "thumb") != firmware_versions(3, 64 * KIB, 1, "aarch64")


@pytest.mark.parametrize("size", [16 * KIB, 64 * KIB, 100_000, 1024 * KIB])
@pytest.mark.parametrize("arch", ["thumb", "aarch64"])
def test_every_version_has_exactly_the_requested_size(arch, size):
    versions = firmware_versions(1, size, 3, arch)
    assert len(versions) == 3
    assert all(len(v) == size for v in versions)
    assert len(set(versions)) == 3  # each release changes something
    # the tail is erased flash, the content is most of the image
    assert versions[0].endswith(b"\xff" * 64)
    assert versions[0].rstrip(b"\xff").__len__() > size * 0.7


def test_bad_arguments():
    with pytest.raises(ValueError):
        firmware_versions(1, 64 * KIB, 1, "xtensa")
    with pytest.raises(ValueError):
        firmware_versions(1, 100, 1)
    with pytest.raises(ValueError):
        firmware_versions(1, 64 * KIB, -1)
    assert firmware_versions(1, 64 * KIB, 0) == []


@pytest.mark.parametrize("arch", ["thumb", "aarch64"])
@pytest.mark.parametrize("size", [64 * KIB, 1024 * KIB])
def test_consecutive_versions_are_edits(arch, size):
    versions = firmware_versions(11, size, 3, arch)
    for old, new in zip(versions, versions[1:]):
        patch = bsdiff4.diff(old, new)
        assert len(patch) < 0.10 * size, f"bsdiff4 delta {len(patch)} of {size}"
        # ... but not trivial ones: code moved, so many bytes differ
        assert sum(1 for a, b in zip(old, new) if a != b) > 0.01 * size


@pytest.mark.parametrize("arch,enc", [("thumb", "thumb-lzma"), ("aarch64", "aarch64-lzma")])
def test_address_normalising_encoding_beats_bsdiff4_on_generated_pairs(arch, enc):
    old, new = firmware_versions(5, 64 * KIB, 2, arch)
    plain = len(bsdiff4.diff(old, new))
    filtered = D.encode(old, new, enc)
    assert len(filtered.data) < plain * 0.7
    assert D.apply_delta(old, filtered, len(new)) == new


def test_thumb_image_looks_like_cortex_m_firmware():
    img = firmware_versions(2, 64 * KIB, 1, "thumb")[0]
    sp, reset = struct.unpack_from("<II", img, 0)
    assert 0x20000000 <= sp < 0x20100000  # initial stack pointer in RAM
    assert reset & 1 and 0x08000000 < reset < 0x08000000 + len(img)  # Thumb reset handler
    assert archdetect.arch_score("thumb", img) > 0.5  # calls land on shared targets, like real code
    assert archdetect.guess_base("thumb", img) == 0x08000000
    assert b"fota-lab firmware v1.0.0" in img


def test_aarch64_image_looks_like_aarch64_code():
    img = firmware_versions(2, 64 * KIB, 1, "aarch64")[0]
    assert archdetect.arch_score("aarch64", img) > 0.5
    assert archdetect.arch_score("thumb", img) < 0.2
    assert archdetect.guess_base("aarch64", img) == 0x80000
    assert struct.pack("<I", 0xD65F03C0) in img  # ret


def test_version_string_is_bumped():
    v = firmware_versions(2, 64 * KIB, 3, "thumb")
    assert b"firmware v1.0.0" in v[0] and b"firmware v1.1.0" in v[1] and b"firmware v1.2.0" in v[2]
