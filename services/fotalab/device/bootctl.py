"""Boot-control record: which slot to boot, whether it is on trial, the anti-rollback counter.

Kept in two copies on flash, each with a sequence number and a checksum, the way U-Boot's
redundant environment and ESP-IDF's otadata are: an update overwrites the *older* copy in
place, so a cut that tears it leaves the newer copy intact, and a reader takes the newest
copy whose checksum holds. The transitions are pure functions of the record.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, replace

from ..protocol import RollbackCause
from .flash import Flash

COPIES = ("bootctl.0", "bootctl.1")
RECORD_SIZE = 1024
SLOTS = ("a", "b")


def other_slot(slot: str) -> str:
    return "b" if slot == "a" else "a"


def slot_file(slot: str) -> str:
    return f"slot-{slot}.img"


@dataclass(frozen=True)
class Rollback:
    """Why the bootloader left a slot: kept until the next update is staged."""

    slot: str
    version: str
    sha256: str
    reason: str
    seq: int
    cause: str = RollbackCause.FIRMWARE


@dataclass(frozen=True)
class BootState:
    seq: int
    active: str               # the slot the bootloader boots
    confirmed: bool           # False while the active slot is on trial
    previous: str | None      # the last confirmed slot, to revert to if the trial fails
    attempts: int             # trial boots the firmware used up (crash, watchdog, failed self-test)
    security_counter: int     # anti-rollback: raised only when an image is committed
    rollback: Rollback | None = None
    power_cuts: int = 0       # trial boots ended by a power cut: not the firmware's fault

    def encode(self) -> bytes:
        body = json.dumps(asdict(self), sort_keys=True, separators=(",", ":")).encode()
        record = body + b"\n" + hashlib.sha256(body).hexdigest().encode() + b"\n"
        if len(record) > RECORD_SIZE:
            raise ValueError("boot-control record too large")
        return record.ljust(RECORD_SIZE, b"\0")

    @classmethod
    def decode(cls, raw: bytes | None) -> BootState | None:
        """The record, or None if the copy is missing, torn or corrupted."""
        if not raw:
            return None
        body, _, rest = raw.rstrip(b"\0").partition(b"\n")
        if rest.strip() != hashlib.sha256(body).hexdigest().encode():
            return None
        try:
            data = json.loads(body)
            rollback = Rollback(**data.pop("rollback")) if data.get("rollback") else None
            state = cls(**{k: v for k, v in data.items() if k != "rollback"}, rollback=rollback)
        except (ValueError, TypeError):
            return None
        if state.active not in SLOTS or (state.previous not in (None, *SLOTS)):
            return None
        return state


def factory_state(security_counter: int) -> BootState:
    return BootState(seq=1, active="a", confirmed=True, previous=None, attempts=0,
                     security_counter=security_counter)


def staged(state: BootState, slot: str) -> BootState:
    """Boot `slot` next, on trial; the running confirmed slot stays the way back."""
    return replace(state, active=slot, confirmed=False, previous=state.active, attempts=0, power_cuts=0,
                   rollback=None)


def committed(state: BootState, image_counter: int) -> BootState:
    return replace(state, confirmed=True, previous=None, attempts=0, power_cuts=0,
                   security_counter=max(state.security_counter, image_counter), rollback=None)


def reverted(state: BootState, to_slot: str, *, version: str, sha256: str, reason: str,
             cause: str = RollbackCause.FIRMWARE) -> BootState:
    return replace(state, active=to_slot, confirmed=True, previous=None, attempts=0, power_cuts=0,
                   rollback=Rollback(state.active, version, sha256, reason, state.seq + 1, cause))


class BootControl:
    """Reads the newest valid copy; writes the next sequence number over the older copy."""

    def __init__(self, flash: Flash) -> None:
        self._flash = flash

    def copies(self) -> list[BootState | None]:
        return [BootState.decode(self._flash.read(name)) for name in COPIES]

    def load(self) -> BootState | None:
        valid = [s for s in self.copies() if s is not None]
        return max(valid, key=lambda s: s.seq) if valid else None

    def store(self, state: BootState) -> BootState:
        copies = self.copies()
        current = max((s.seq for s in copies if s is not None), default=0)
        new = replace(state, seq=current + 1)
        older = min(range(len(COPIES)), key=lambda i: copies[i].seq if copies[i] else -1)
        self._flash.overwrite(COPIES[older], new.encode())
        return new
