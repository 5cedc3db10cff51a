"""Which release a device should run: its own assignment, else the server's default.

The one place that decides it, so that fleet rollouts can build on it later.
"""
from __future__ import annotations

from dataclasses import dataclass

from .artifacts import ReleaseIndex
from .errors import AssignmentError
from .registry import Registry


@dataclass(frozen=True)
class Assignment:
    version: str
    source: str          # "device": assigned to this device; "default": the server's default release

    def to_json(self) -> dict:
        return {"version": self.version, "source": self.source}


def assigned(registry: Registry, device_id: str, default_release: str) -> Assignment:
    version = registry.assignment(device_id)
    return Assignment(version, "device") if version else Assignment(default_release, "default")


def assign(registry: Registry, index: ReleaseIndex, device_id: str, version: str) -> Assignment:
    """Assign a release that exists for the device's hardware (any hardware if it never reported)."""
    device = registry.device(device_id)
    hardware = device["hardware"] if device and device["hardware"] else None
    available = index.versions(hardware)
    if version not in available:
        scope = f"hardware {hardware!r}" if hardware else "any hardware"
        raise AssignmentError(f"no release {version!r} for {scope}: choose one of {', '.join(available) or 'none'}")
    registry.set_assignment(device_id, version)
    return Assignment(version, "device")
