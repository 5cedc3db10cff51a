"""What to offer a device that asks for its update: the assigned release's signed manifest and
the best artifact for the image it runs, or no update with the reason.

The best artifact is the delta whose base is the running image (the device checks that
against the signed manifest too), else the full image. The server never offers a release
that is not newer than the running one: the device would refuse it (anti-rollback).
"""
from __future__ import annotations

from dataclasses import dataclass

from ..formats.image import parse_version
from .artifacts import Artifact, ReleaseIndex
from .errors import UnknownHardware


@dataclass(frozen=True)
class Offer:
    reason: str
    version: str
    manifest: str = ""                  # the signed manifest document; empty: no update
    artifact: Artifact | None = None
    base_sha256: str = ""               # set when the artifact is a delta

    @property
    def update(self) -> bool:
        return self.artifact is not None

    def to_json(self) -> dict:
        if self.artifact is None:
            return {"update": False, "reason": self.reason, "assigned": self.version}
        return {"update": True, "reason": self.reason, "version": self.version, "manifest": self.manifest,
                "artifact": self.artifact.url, "artifact_sha256": self.artifact.sha256,
                "artifact_length": self.artifact.length, "artifact_kind": self.artifact.kind,
                "base_sha256": self.base_sha256 or None}


def select(index: ReleaseIndex, *, hardware: str, running_version: str, running_image: str,
           assigned_version: str) -> Offer:
    """Raises UnknownHardware, or ValueError for a malformed running version."""
    if hardware not in index.hardware:
        raise UnknownHardware(f"no releases for hardware {hardware!r}: check the device's FOTA_HARDWARE "
                              "(GET /api/v1/releases lists the hardware ids)")
    running = parse_version(running_version)
    target = index.release(hardware, assigned_version)
    if target is None:
        return Offer(f"the assigned release {assigned_version} has no build for hardware {hardware}",
                     assigned_version)
    if target["image"] == running_image:
        return Offer(f"already running the assigned release {assigned_version}", assigned_version)
    if parse_version(target["version"]) <= running:
        return Offer(f"the assigned release {assigned_version} is not newer than the running {running_version}",
                     assigned_version)
    manifest = index.manifests[(hardware, assigned_version)]
    delta = next((d for d in target["deltas"] if running_image and d["base_sha256"] == running_image), None)
    chosen = index.by_sha.get(delta["sha256"]) if delta else None
    if chosen is not None:
        return Offer(f"delta from {delta['base_version']}", assigned_version, manifest, chosen, delta["base_sha256"])
    image = index.by_sha.get(target["image"])
    if image is None:
        return Offer(f"the image of release {assigned_version} is missing from the release store",
                     assigned_version)
    return Offer("full image: no delta from the running image", assigned_version, manifest, image)
