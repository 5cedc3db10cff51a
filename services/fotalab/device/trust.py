"""The device's trust anchor, and a successor key announced by a signed rotation.

trust.pem          the anchor: the release public key provisioned at first power-on
trust.pending      while an update signed by a rotated key is staged or on trial: the
                   rotation chain leading from the anchor to the new key. The bootloader
                   re-verifies the chain against the anchor at every boot, so the new image
                   can run its trial; at commit the new key becomes the anchor and the old
                   one is rejected from then on. A rollback drops the pending file.
"""
from __future__ import annotations

import json

from ..formats.rotation import RotationError, successor
from ..formats.signing import Verifier
from .flash import Flash

ANCHOR = "trust.pem"
PENDING = "trust.pending"


def _pending(flash: Flash, anchor: Verifier) -> bytes | None:
    raw = flash.read(PENDING)
    if raw is None:
        return None
    try:
        pending = json.loads(raw)
        return successor(anchor, pending["chain"], pending["key_id"])
    except (ValueError, KeyError, TypeError, RotationError):
        return None      # unreadable or not signed by the anchor: ignored, never trusted


def load_verifier(flash: Flash) -> Verifier:
    """The anchor plus, during a rotation, its verified successor."""
    anchor = Verifier(flash.read(ANCHOR) or b"")
    new_key = _pending(flash, anchor)
    return Verifier(anchor.public_pems[0], new_key) if new_key else anchor


def stage_successor(flash: Flash, key_id: str, chain: list[dict]) -> None:
    flash.replace(PENDING, json.dumps({"key_id": key_id, "chain": chain}).encode())


def finish_rotation(flash: Flash, running_key_id: str) -> bool:
    """After a commit: make the committed image's key the anchor if it came by rotation."""
    anchor = Verifier(flash.read(ANCHOR) or b"")
    new_key = _pending(flash, anchor)
    if new_key is None or anchor.trusts(running_key_id):
        flash.remove(PENDING)
        return False
    if Verifier(new_key).trusts(running_key_id):
        flash.replace(ANCHOR, new_key)
    flash.remove(PENDING)
    return True
