"""Key rotation statements: the current release key announces its successor.

A statement {"signed": {type, old_key_id, new_key_id, new_public_key, issued}, "signatures":
[by the old key]} lets a device that trusts the old key accept the new one, and only that way:
the private key never travels, and a device never replaces its trust anchor on the word of
an unsigned (or foreign-signed) message. Statements chain: A->B, B->C. A device follows the
chain from its anchor, trusts the new key for the update that brings it, and makes it the
anchor when that update commits; from then on the old key is rejected.
"""
from __future__ import annotations

import base64
import json
from datetime import UTC, datetime

from .manifest import canonical
from .signing import SignatureError, Signer, Verifier, key_id

ROTATION_TYPE = "fota-key-rotation"
CHAIN_NAME = "key-rotations.json"     # the release store's artifact holding the whole chain


class RotationError(ValueError):
    """A rotation statement is malformed or not signed by the key it claims to replace."""


def make_rotation(old: Signer, new_public_pem: bytes, now: datetime | None = None) -> bytes:
    signed = {"type": ROTATION_TYPE, "old_key_id": old.key_id, "new_key_id": key_id(new_public_pem),
              "new_public_key": new_public_pem.decode(),
              "issued": (now or datetime.now(UTC)).replace(microsecond=0).isoformat()}
    signature = base64.b64encode(old.sign(canonical(signed))).decode()
    return json.dumps({"signed": signed, "signatures": [{"keyid": old.key_id, "sig": signature}]},
                      indent=1, sort_keys=True).encode()


def verify_rotation(statement: dict, current: Verifier) -> bytes:
    """The new public key, if `statement` is signed by a key `current` trusts."""
    try:
        signed = statement["signed"]
        entry = statement["signatures"][0]
        if signed["type"] != ROTATION_TYPE or entry["keyid"] != signed["old_key_id"]:
            raise RotationError("not a key rotation statement")
        current.verify(canonical(signed), base64.b64decode(entry["sig"], validate=True), entry["keyid"])
        new_pem = signed["new_public_key"].encode()
        if key_id(new_pem) != signed["new_key_id"]:
            raise RotationError("announced key id does not match the announced key")
        return new_pem
    except (KeyError, IndexError, TypeError, ValueError) as exc:
        if isinstance(exc, RotationError):
            raise
        raise RotationError(f"rotation statement rejected: {exc}") from None
    except SignatureError as exc:
        raise RotationError(f"rotation statement rejected: {exc}") from None


def successor(anchor: Verifier, chain: list[dict], wanted_key_id: str) -> bytes:
    """Follow the chain from the anchor's key to `wanted_key_id`; its public key, or raise."""
    current = anchor
    for _ in range(len(chain)):
        step = next((s for s in chain if current.trusts(s.get("signed", {}).get("old_key_id", ""))), None)
        if step is None:
            break
        new_pem = verify_rotation(step, current)
        if key_id(new_pem) == wanted_key_id:
            return new_pem
        current = Verifier(new_pem)
    raise RotationError(f"no signed rotation leads from trusted key {anchor.key_id} to key {wanted_key_id}: "
                        "publish the rotation statement with the release (fota-signer rotates keys)")


def parse_chain(document: bytes) -> list[dict]:
    try:
        chain = json.loads(document)
        if not isinstance(chain, list):
            raise ValueError("not a list")
        return chain
    except ValueError:
        raise RotationError("the key rotation chain is not a JSON list of statements") from None
