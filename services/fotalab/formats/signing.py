"""Release keys: signing (signer only) and verification (server, devices).

RSA-PSS with a 3072-bit key and SHA-256 by default, as the seed used RSA; Ed25519 as an
option. Every signature travels with the id of the key that made it (the first 16 hex digits
of the SHA-256 of the public key's DER), so a verifier never tries keys blindly and a
signature by a foreign key is named as such in the error.
"""
from __future__ import annotations

import hashlib

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa

ALGORITHMS = ("rsa-pss-3072", "ed25519")
_PSS = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=padding.PSS.DIGEST_LENGTH)


class SignatureError(ValueError):
    """A signature is missing, malformed, by an unknown key, or does not match the data."""


def generate_private_key(algorithm: str = "rsa-pss-3072") -> rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey:
    if algorithm == "rsa-pss-3072":
        return rsa.generate_private_key(public_exponent=65537, key_size=3072)
    if algorithm == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    raise ValueError(f"unknown key algorithm {algorithm!r}: use one of {', '.join(ALGORITHMS)}")


def private_key_pem(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def public_key_pem(key) -> bytes:
    public = key.public_key() if hasattr(key, "public_key") else key
    return public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def key_id(public_pem: bytes) -> str:
    public = serialization.load_pem_public_key(public_pem)
    der = public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(der).hexdigest()[:16]


class Signer:
    """Holds a private key; lives only in the signer container."""

    def __init__(self, private_pem: bytes) -> None:
        self._key = serialization.load_pem_private_key(private_pem, password=None)
        if not isinstance(self._key, (rsa.RSAPrivateKey, ed25519.Ed25519PrivateKey)):
            raise ValueError("release key must be RSA or Ed25519")
        self.public_pem = public_key_pem(self._key)
        self.key_id = key_id(self.public_pem)

    def sign(self, data: bytes) -> bytes:
        if isinstance(self._key, rsa.RSAPrivateKey):
            return self._key.sign(data, _PSS, hashes.SHA256())
        return self._key.sign(data)


class Verifier:
    """The public keys a party trusts, by key id: a device's trust anchor (plus, during a key
    rotation, the announced successor) or the server's copy of it."""

    def __init__(self, *public_pems: bytes) -> None:
        self.public_pems = public_pems
        self._keys = {key_id(pem): pem for pem in public_pems}

    @property
    def key_id(self) -> str:
        """The first (anchor) key's id."""
        return key_id(self.public_pems[0])

    def trusts(self, signed_by: str) -> bool:
        return signed_by in self._keys

    def verify(self, data: bytes, signature: bytes, signed_by: str) -> None:
        pem = self._keys.get(signed_by)
        if pem is None:
            raise SignatureError(
                f"signed by key {signed_by}, but this device trusts key {', '.join(self._keys)}: "
                "the artifact comes from another signer or the key was rotated without a "
                "rotation statement; publish it signed by the trusted key")
        public = serialization.load_pem_public_key(pem)
        try:
            if isinstance(public, rsa.RSAPublicKey):
                public.verify(signature, data, _PSS, hashes.SHA256())
            else:
                public.verify(signature, data)
        except InvalidSignature:
            raise SignatureError(
                f"signature by key {signed_by} does not match the data: the artifact was "
                "altered or corrupted after signing; rebuild it with the signer") from None
