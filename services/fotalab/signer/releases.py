"""The release list (firmware/releases.toml) the signer builds from."""
from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path

from ..formats.image import Behaviour, parse_version


@dataclass(frozen=True)
class HardwareSpec:
    id: str
    arch: str = "thumb"
    size: int = 256 * 1024
    seed: int = 1
    format: str = "lab"          # "swupdate": the signer also builds .swu files for SWUpdate devices


@dataclass(frozen=True)
class ReleaseSpec:
    hardware: str
    version: str
    security_counter: int
    behaviour: Behaviour = Behaviour.GOOD
    behaviour_arg: int = 0


@dataclass(frozen=True)
class ReleasePlan:
    hardware: dict[str, HardwareSpec]
    releases: tuple[ReleaseSpec, ...]
    expires_days: int = 365
    max_deltas: int = 5

    def releases_of(self, hardware: str) -> list[ReleaseSpec]:
        return sorted((r for r in self.releases if r.hardware == hardware), key=lambda r: parse_version(r.version))


FORMATS = ("lab", "swupdate")


class ReleaseListError(ValueError):
    pass


def load_plan(path: Path) -> ReleasePlan:
    try:
        raw = tomllib.loads(path.read_text())
        hardware = {h["id"]: HardwareSpec(**h) for h in raw.get("hardware", [])}
        releases = tuple(
            ReleaseSpec(r["hardware"], r["version"], int(r["security_counter"]),
                        Behaviour.from_label(r.get("behaviour", "good")), int(r.get("behaviour_arg", 0)))
            for r in raw.get("release", []))
        for spec in hardware.values():
            if spec.format not in FORMATS:
                raise ReleaseListError(f"hardware {spec.id!r} has format {spec.format!r}; "
                                       f"use one of {', '.join(FORMATS)}")
        for release in releases:
            parse_version(release.version)
            if release.hardware not in hardware:
                raise ReleaseListError(f"release {release.version} names hardware {release.hardware!r}, "
                                       "which has no [[hardware]] entry")
        seen = {(r.hardware, r.version) for r in releases}
        if len(seen) != len(releases):
            raise ReleaseListError("a hardware/version pair is listed twice")
        return ReleasePlan(hardware, releases, int(raw.get("expires_days", 365)), int(raw.get("max_deltas", 5)))
    except (OSError, tomllib.TOMLDecodeError, KeyError, TypeError, ValueError) as exc:
        if isinstance(exc, ReleaseListError):
            raise
        raise ReleaseListError(f"{path}: {exc}; fix the release list") from None
