"""The download journal: the one record of an update in progress, so any step can resume.

Phases: "download" (bytes [0, offset) of the artifact are durable in download.part) and
"install" (the artifact is verified; patch it into the target slot and stage it). The trial
that follows is visible in the boot-control record, not here. Replaced atomically.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace

from .flash import Flash

JOURNAL = "update.journal"
DOWNLOAD = "download.part"


@dataclass(frozen=True)
class Artifact:
    """What is being fetched, copied from the verified manifest."""

    kind: str            # "delta" or "image"
    name: str
    sha256: str
    length: int
    encoding: str = ""   # delta encoding; empty for a full image
    base_sha256: str = ""


@dataclass(frozen=True)
class Journal:
    phase: str
    version: str             # target release
    manifest: str            # the signed manifest document, re-verified on resume
    artifact: Artifact
    target_slot: str
    offset: int = 0
    started_seq: int = 0     # boot-control seq when the update began (to date a rollback)
    resumes: int = 0         # downloads resumed after an interruption
    new_key_id: str = ""     # set when the release is signed by a key announced by rotation
    rotation: list = field(default_factory=list)   # the signed chain from the anchor to that key

    def advance(self, **changes) -> Journal:
        return replace(self, **changes)


def load(flash: Flash) -> Journal | None:
    raw = flash.read(JOURNAL)
    if raw is None:
        return None
    try:
        data = json.loads(raw)
        return Journal(**{**data, "artifact": Artifact(**data["artifact"])})
    except (ValueError, TypeError, KeyError):
        return None   # unreadable: the update restarts from the manifest check


def store(flash: Flash, journal: Journal) -> Journal:
    flash.replace(JOURNAL, json.dumps(asdict(journal), sort_keys=True).encode())
    return journal


def clear(flash: Flash) -> None:
    flash.remove(DOWNLOAD)
    flash.remove(JOURNAL)
