"""The release key on disk: created on the signer's first run, never copied elsewhere.

keys/release-key.pem       private key (mode 0600), mounted into the signer container only
keys/release-key.pub.pem   public key: the trust anchor devices are provisioned with
"""
from __future__ import annotations

import os
from pathlib import Path

from ..signing import Signer, generate_private_key, private_key_pem, public_key_pem

PRIVATE = "release-key.pem"
PUBLIC = "release-key.pub.pem"


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
    fd = os.open(keys_dir / (PRIVATE + ".tmp"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(pem)
    (keys_dir / PUBLIC).write_bytes(public_key_pem(key))
    os.replace(keys_dir / (PRIVATE + ".tmp"), keys_dir / PRIVATE)
    return pem
