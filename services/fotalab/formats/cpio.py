"""cpio archives in the SVR4 "newc" format (and its "crc" variant), as SWUpdate's .swu files use.

Each member is a 110-byte ASCII header, the NUL-terminated name, padding to a multiple of 4,
then the data, padded to a multiple of 4; the archive ends with the member TRAILER!!!.

    header: magic "070701" (newc) or "070702" (crc), then 13 fields of 8 hex digits:
            ino mode uid gid nlink mtime filesize devmajor devminor rdevmajor rdevminor
            namesize (with its NUL) check (crc: the sum of the data bytes mod 2**32; newc: 0)

The standard library reads no cpio, so this is the whole format, writer and reader. Pure: no I/O.
"""
from __future__ import annotations

from dataclasses import dataclass

NEWC = b"070701"
CRC = b"070702"
TRAILER = "TRAILER!!!"
HEADER_SIZE = 110
REGULAR_FILE = 0o100644
_FIELDS = ("ino", "mode", "uid", "gid", "nlink", "mtime", "filesize", "devmajor", "devminor",
           "rdevmajor", "rdevminor", "namesize", "check")


class CpioError(ValueError):
    """The bytes are not a well-formed newc/crc cpio archive."""


@dataclass(frozen=True)
class Member:
    name: str
    data: bytes
    offset: int          # where the member's header starts in the archive
    check: int = 0


def _pad(length: int) -> bytes:
    return b"\0" * (-length % 4)


def checksum(data: bytes) -> int:
    """The "crc" format's check field: the sum of the data bytes, modulo 2**32 (not a real CRC)."""
    return sum(data) & 0xFFFFFFFF


def header(name: str, size: int, *, ino: int, mode: int = REGULAR_FILE, check: int | None = None) -> bytes:
    """One member's header and name, padded; `check` given selects the crc format."""
    encoded = name.encode() + b"\0"
    values = (ino, mode, 0, 0, 1, 0, size, 0, 0, 0, 0, len(encoded), check or 0)
    raw = (CRC if check is not None else NEWC) + b"".join(b"%08X" % v for v in values)
    assert len(raw) == HEADER_SIZE
    return raw + encoded + _pad(HEADER_SIZE + len(encoded))


def write(members: list[tuple[str, bytes]], *, crc: bool = False) -> bytes:
    """An archive of (name, data) members in the order given, then the trailer, and nothing after
    it: no padding to 512-byte blocks as GNU cpio writes. SWUpdate 2022.12 stops reading its
    stream at the trailer, so bytes after it (sent late by a slow link) met a closed stream
    ("Writing into SWUpdate IPC stream failed") and failed the install (docs/swupdate.md)."""
    out = bytearray()
    for ino, (name, data) in enumerate(members, start=1):
        if not name or name == TRAILER or "\0" in name:
            raise ValueError(f"cpio member name {name!r} is not allowed")
        out += header(name, len(data), ino=ino, check=checksum(data) if crc else None)
        out += data + _pad(len(data))
    out += header(TRAILER, 0, ino=0, mode=0, check=0 if crc else None)
    return bytes(out)


def read(archive: bytes) -> list[Member]:
    """Every member before the trailer; raises CpioError on anything malformed or truncated."""
    members, at = [], 0
    while True:
        raw = archive[at:at + HEADER_SIZE]
        if len(raw) < HEADER_SIZE:
            raise CpioError(f"truncated cpio header at offset {at}")
        magic = raw[:6]
        if magic not in (NEWC, CRC):
            raise CpioError(f"bad cpio magic {magic!r} at offset {at}: not newc/crc")
        try:
            fields = dict(zip(_FIELDS, (int(raw[6 + 8 * i:14 + 8 * i], 16) for i in range(13))))
        except ValueError:
            raise CpioError(f"cpio header at offset {at} has a field that is not hex") from None
        name_end = at + HEADER_SIZE + fields["namesize"]
        if fields["namesize"] < 1 or name_end > len(archive) or archive[name_end - 1] != 0:
            raise CpioError(f"cpio member name at offset {at} is not NUL-terminated within the archive")
        name = archive[at + HEADER_SIZE:name_end - 1].decode()
        data_at = name_end + (-(HEADER_SIZE + fields["namesize"]) % 4)
        data = archive[data_at:data_at + fields["filesize"]]
        if len(data) != fields["filesize"]:
            raise CpioError(f"cpio member {name!r} is truncated")
        if name == TRAILER:
            return members
        if magic == CRC and checksum(data) != fields["check"]:
            raise CpioError(f"cpio member {name!r} fails its crc check")
        members.append(Member(name, data, at, fields["check"]))
        at = data_at + fields["filesize"] + (-fields["filesize"] % 4)
