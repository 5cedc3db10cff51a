"""Fixtures shared by every tier: release keys and signed test firmware."""
from __future__ import annotations

import pytest

from fotalab.formats.signing import Signer, generate_private_key, private_key_pem
from samples import make_image, make_payload


@pytest.fixture(scope="session")
def release_key() -> Signer:
    """The lab's signing key (Ed25519 here: fast; RSA-PSS is covered in test_signing)."""
    return Signer(private_key_pem(generate_private_key("ed25519")))


@pytest.fixture(scope="session")
def foreign_key() -> Signer:
    """A key the devices do not trust."""
    return Signer(private_key_pem(generate_private_key("ed25519")))


@pytest.fixture(scope="session")
def firmware_v1(release_key) -> bytes:
    return make_image(release_key, "1.0.0", make_payload(1))

