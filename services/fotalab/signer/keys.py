"""The release key on disk: created on the signer's first run, never copied elsewhere.

keys/release-key.pem       private key (mode 0600), mounted into the signer container only
keys/release-key.pub.pem   public key: the trust anchor devices are provisioned with
keys/rotations/*.json      signed statements "key A hands over to key B", oldest first
keys/retired/<id>.pem      private keys replaced by a rotation (keep them offline or destroy them)
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

from ..formats.rotation import make_rotation
from ..formats.signing import Signer, generate_private_key, private_key_pem, public_key_pem

PRIVATE = "release-key.pem"
PUBLIC = "release-key.pub.pem"
ROTATIONS = "rotations"
RETIRED = "retired"


def ensure_keys(keys_dir: Path, algorithm: str = "rsa-pss-3072") -> tuple[Signer, bool]:
    """Load the release key, creating the pair if there is none; returns (signer, created)."""
    private = keys_dir / PRIVATE
    if private.exists():
        return Signer(private.read_bytes()), False
    return Signer(write_new_keys(keys_dir, algorithm)), True


def write_new_keys(keys_dir: Path, algorithm: str) -> bytes:
    keys_dir.mkdir(parents=True, exist_ok=True)
    key = generate_private_key(algorithm)
    pem = private_key_pem(key)
    _write_private(keys_dir, pem)
    (keys_dir / PUBLIC).write_bytes(public_key_pem(key))
    return pem


def _write_private(keys_dir: Path, pem: bytes) -> None:
    tmp = keys_dir / (PRIVATE + ".tmp")
    with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as out:
        out.write(pem)
    os.replace(tmp, keys_dir / PRIVATE)


def rotate_keys(keys_dir: Path, algorithm: str = "rsa-pss-3072") -> tuple[Signer, Signer]:
    """Replace the release key by a new one that the old key announces; returns (old, new).

    The statement is written before the key is replaced, so a crash in between leaves the old
    key in place and a harmless statement that no release uses yet.
    """
    old, _ = ensure_keys(keys_dir, algorithm)
    new_pem = private_key_pem(generate_private_key(algorithm))
    new = Signer(new_pem)
    rotations = keys_dir / ROTATIONS
    rotations.mkdir(exist_ok=True)
    number = len(list(rotations.glob("*.json"))) + 1
    (rotations / f"{number:04d}-{old.key_id}-to-{new.key_id}.json").write_bytes(make_rotation(old, new.public_pem))
    retired = keys_dir / RETIRED
    retired.mkdir(exist_ok=True)
    shutil.copy2(keys_dir / PRIVATE, retired / f"{old.key_id}.pem")
    _write_private(keys_dir, new_pem)
    (keys_dir / PUBLIC).write_bytes(new.public_pem)
    return old, new


def rotation_chain(keys_dir: Path) -> list[bytes]:
    """Every rotation statement, oldest first."""
    return [path.read_bytes() for path in sorted((keys_dir / ROTATIONS).glob("*.json"))]
