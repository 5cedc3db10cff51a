"""The firmware image format, in the manner of MCUboot's: header, payload, signature trailer.

    header (64 bytes, little endian)
      magic "FOTA" | format u16 | header size u16 | payload length u32
      version major.minor.patch (3 x u16) | security counter u32
      hardware id (24 bytes, NUL padded) | behaviour u8 | behaviour argument u32 | reserved
    payload (payload length bytes)
    trailer: key id (8 bytes) | signature length u16 | signature

The signature covers header and payload, so the bootloader can verify a slot on its own
(secure boot) and the simulated behaviour cannot be changed without the release key.
"""
from __future__ import annotations

import enum
import struct
from dataclasses import dataclass

from .signing import SignatureError, Signer, Verifier

MAGIC = b"FOTA"
FORMAT_VERSION = 1
_HEADER = struct.Struct("<4sHHI3HI24sBI")
HEADER_SIZE = 64
_TRAILER = struct.Struct("<8sH")
MAX_SIGNATURE = 1024
HARDWARE_ID_MAX = 24


class ImageError(ValueError):
    """An image is malformed, truncated, altered or signed by an untrusted key."""


class Behaviour(enum.Enum):
    """What the simulated firmware does when it runs: lets a lab build bad releases on purpose."""

    GOOD = 0
    CRASH_AT_BOOT = 1
    HANG = 2
    SELFTEST_FAIL = 3
    CRASH_AFTER = 4

    @property
    def label(self) -> str:
        return self.name.lower().replace("_", "-")

    @classmethod
    def from_label(cls, label: str) -> Behaviour:
        for member in cls:
            if member.label == label:
                return member
        raise ValueError(f"unknown behaviour {label!r}: use one of {', '.join(m.label for m in cls)}")


def parse_version(text: str) -> tuple[int, int, int]:
    """'1.2.3' -> (1, 2, 3); versions are plain semantic versions without suffixes."""
    parts = text.split(".")
    if len(parts) != 3 or not all(p.isdigit() and len(p) <= 5 for p in parts):
        raise ValueError(f"version {text!r} is not MAJOR.MINOR.PATCH (e.g. 2.0.0)")
    major, minor, patch = (int(p) for p in parts)
    if max(major, minor, patch) > 0xFFFF:
        raise ValueError(f"version {text!r} has a field above 65535")
    return major, minor, patch


@dataclass(frozen=True)
class ImageHeader:
    version: str
    security_counter: int
    hardware: str
    payload_length: int
    behaviour: Behaviour = Behaviour.GOOD
    behaviour_arg: int = 0

    def pack(self) -> bytes:
        hardware = self.hardware.encode()
        if not 0 < len(hardware) <= HARDWARE_ID_MAX:
            raise ValueError(f"hardware id {self.hardware!r} must be 1 to {HARDWARE_ID_MAX} bytes")
        raw = _HEADER.pack(MAGIC, FORMAT_VERSION, HEADER_SIZE, self.payload_length,
                           *parse_version(self.version), self.security_counter, hardware,
                           self.behaviour.value, self.behaviour_arg)
        return raw.ljust(HEADER_SIZE, b"\0")


@dataclass(frozen=True)
class Image:
    header: ImageHeader
    payload: bytes
    key_id: str
    signature: bytes
    signed_bytes: bytes


def build_image(header: ImageHeader, payload: bytes, signer: Signer) -> bytes:
    if header.payload_length != len(payload):
        raise ValueError("header payload length does not match the payload")
    signed = header.pack() + payload
    signature = signer.sign(signed)
    return signed + _TRAILER.pack(bytes.fromhex(signer.key_id), len(signature)) + signature


def parse_header(raw: bytes) -> ImageHeader:
    if len(raw) < HEADER_SIZE:
        raise ImageError(f"image is {len(raw)} bytes, shorter than its {HEADER_SIZE}-byte header: "
                         "it is truncated; download it again")
    (magic, fmt, header_size, payload_length, major, minor, patch, counter, hardware,
     behaviour, behaviour_arg) = _HEADER.unpack_from(raw)
    if magic != MAGIC:
        raise ImageError(f"bad magic {magic!r} (expected {MAGIC!r}): this is not a fota-lab image")
    if fmt != FORMAT_VERSION or header_size != HEADER_SIZE:
        raise ImageError(f"image format {fmt} with {header_size}-byte header is not supported "
                         f"(this device reads format {FORMAT_VERSION}); rebuild with a matching signer")
    try:
        behaviour_value = Behaviour(behaviour)
        hardware_id = hardware.rstrip(b"\0").decode()
    except (ValueError, UnicodeDecodeError):
        raise ImageError("image header has an unknown behaviour or a garbled hardware id") from None
    return ImageHeader(f"{major}.{minor}.{patch}", counter, hardware_id, payload_length,
                       behaviour_value, behaviour_arg)


def parse_image(raw: bytes) -> Image:
    header = parse_header(raw)
    end = HEADER_SIZE + header.payload_length
    if len(raw) < end + _TRAILER.size:
        raise ImageError(f"image is {len(raw)} bytes but its header announces {end} bytes of "
                         "header and payload plus a signature: it is truncated; download it again")
    key_raw, sig_len = _TRAILER.unpack_from(raw, end)
    if sig_len > MAX_SIGNATURE or len(raw) != end + _TRAILER.size + sig_len:
        raise ImageError(f"image signature trailer is malformed ({len(raw)} bytes in all, "
                         f"signature length {sig_len}): the image was cut or padded; rebuild it")
    signature = raw[end + _TRAILER.size:]
    return Image(header, raw[HEADER_SIZE:end], key_raw.hex(), signature, raw[:end])


def verify_image(raw: bytes, verifier: Verifier) -> ImageHeader:
    """Parse and check the signature; the image is trusted only if this returns."""
    image = parse_image(raw)
    try:
        verifier.verify(image.signed_bytes, image.signature, image.key_id)
    except SignatureError as exc:
        raise ImageError(f"image {image.header.version}: {exc}") from None
    return image.header

