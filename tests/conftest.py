"""Fixtures shared by every tier: release keys and signed test firmware."""
from __future__ import annotations

import os
import random

import pytest

from fotalab.image import ImageHeader, build_image
from fotalab.signing import Signer, generate_private_key, private_key_pem


@pytest.fixture(scope="session")
def release_key() -> Signer:
    """The lab's signing key (Ed25519 here: fast; RSA-PSS is covered in test_signing)."""
    return Signer(private_key_pem(generate_private_key("ed25519")))


@pytest.fixture(scope="session")
def foreign_key() -> Signer:
    """A key the devices do not trust."""
    return Signer(private_key_pem(generate_private_key("ed25519")))


def make_payload(seed: int, size: int = 32 * 1024) -> bytes:
    return random.Random(seed).randbytes(size)


def edit(payload: bytes, seed: int) -> bytes:
    """A small realistic edit: a few bytes changed and a block inserted."""
    rng = random.Random(seed)
    data = bytearray(payload)
    for _ in range(20):
        data[rng.randrange(len(data))] = rng.randrange(256)
    at = rng.randrange(len(data))
    return bytes(data[:at] + rng.randbytes(512) + data[at:])


def make_image(signer: Signer, version: str, payload: bytes, *, counter: int = 1,
               hardware: str = "fotalab-m4", **header) -> bytes:
    return build_image(ImageHeader(version, counter, hardware, len(payload), **header), payload, signer)


@pytest.fixture(scope="session")
def firmware_v1(release_key) -> bytes:
    return make_image(release_key, "1.0.0", make_payload(1))


@pytest.fixture(scope="session")
def firmware_v2(release_key) -> bytes:
    return make_image(release_key, "2.0.0", edit(make_payload(1), 2), counter=2)


def flip(data: bytes, where: str) -> bytes:
    """One byte flipped at the first, middle or last position."""
    index = {"first": 0, "middle": len(data) // 2, "last": len(data) - 1}[where]
    return data[:index] + bytes([data[index] ^ 0x01]) + data[index + 1:]


os.environ.setdefault("FOTA_TEST_TIER", "unit")
