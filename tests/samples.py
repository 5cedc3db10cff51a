"""Signed sample firmware for tests: small payloads and realistic edits of them."""
from __future__ import annotations

import random

from fotalab.formats.image import ImageHeader, build_image
from fotalab.formats.signing import Signer


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


def flip(data: bytes, where: str) -> bytes:
    """One byte flipped at the first, middle or last position."""
    index = {"first": 0, "middle": len(data) // 2, "last": len(data) - 1}[where]
    return data[:index] + bytes([data[index] ^ 0x01]) + data[index + 1:]
