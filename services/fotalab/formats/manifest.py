"""Signed release manifests: what a device must check before it downloads anything else.

The manifest names the target image (length, SHA-256) and every delta (its base image's
SHA-256, length, SHA-256, encoding), so every byte a device later downloads is checked
against signed data. The document is TUF-like JSON: {"signed": {...}, "signatures": [...]}
with the signature over the canonical JSON of "signed".
"""
from __future__ import annotations

import base64
import json
from dataclasses import asdict, dataclass
from datetime import UTC, datetime

from .image import parse_version
from .signing import SignatureError, Signer, Verifier

MANIFEST_TYPE = "fota-release"
SPEC_VERSION = 1
MAX_MANIFEST_BYTES = 64 * 1024


class ManifestError(ValueError):
    """A manifest was rejected; the message says why and what to do."""


@dataclass(frozen=True)
class ArtifactRef:
    """A file a device may download: content-addressed by its SHA-256."""

    name: str
    length: int
    sha256: str

    @property
    def url_path(self) -> str:
        return f"/artifacts/{self.sha256}"


@dataclass(frozen=True)
class DeltaRef(ArtifactRef):
    base_version: str = ""
    base_sha256: str = ""
    encoding: str = ""


@dataclass(frozen=True)
class Manifest:
    hardware: str
    version: str
    security_counter: int
    image: ArtifactRef
    deltas: tuple[DeltaRef, ...]
    expires: str

    def delta_for(self, base_sha256: str) -> DeltaRef | None:
        return next((d for d in self.deltas if d.base_sha256 == base_sha256), None)

    def to_signed(self) -> dict:
        return {"type": MANIFEST_TYPE, "spec": SPEC_VERSION, "hardware": self.hardware,
                "version": self.version, "security_counter": self.security_counter,
                "image": asdict(self.image), "deltas": [asdict(d) for d in self.deltas],
                "expires": self.expires}


def canonical(obj: dict) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def sign_manifest(manifest: Manifest, signer: Signer) -> bytes:
    signed = manifest.to_signed()
    signature = base64.b64encode(signer.sign(canonical(signed))).decode()
    return json.dumps({"signed": signed, "signatures": [{"keyid": signer.key_id, "sig": signature}]},
                      indent=1, sort_keys=True).encode()


def parse_manifest(document: bytes) -> Manifest:
    """Read a manifest WITHOUT checking it: only for documents verified before they were stored."""
    return _parse_signed(parse_document(document)[0])


def _parse_signed(signed: dict) -> Manifest:
    try:
        if signed["type"] != MANIFEST_TYPE or signed["spec"] != SPEC_VERSION:
            raise ManifestError(f"manifest type {signed['type']!r} spec {signed['spec']!r} is not "
                                f"{MANIFEST_TYPE!r} spec {SPEC_VERSION}: update the device software")
        parse_version(signed["version"])
        image = ArtifactRef(**signed["image"])
        deltas = tuple(DeltaRef(**d) for d in signed["deltas"])
        manifest = Manifest(signed["hardware"], signed["version"], int(signed["security_counter"]),
                            image, deltas, signed["expires"])
        datetime.fromisoformat(manifest.expires)
    except (KeyError, TypeError, ValueError) as exc:
        if isinstance(exc, ManifestError):
            raise
        raise ManifestError(f"signed manifest is missing or garbles a field ({exc}); "
                            "rebuild it with the signer") from None
    return manifest


def parse_document(document: bytes) -> tuple[dict, list[dict]]:
    if len(document) > MAX_MANIFEST_BYTES:
        raise ManifestError(f"manifest is {len(document)} bytes, over the {MAX_MANIFEST_BYTES}-byte "
                            "limit: refusing to parse it; check the server")
    try:
        doc = json.loads(document)
        return doc["signed"], list(doc["signatures"])
    except (ValueError, KeyError, TypeError):
        raise ManifestError("manifest is not a signed JSON document: it was truncated or "
                            "altered in transit; check the server and retry") from None


def verify_manifest(document: bytes, verifier: Verifier, *, hardware: str, running_version: str,
                    security_counter: int, now: datetime | None = None) -> Manifest:
    """Return the manifest only if it is signed by the trusted key and meant for this device.

    Rejects foreign hardware, expired manifests, downgrades and replays of the running
    release, and releases below the device's anti-rollback counter.
    """
    signed, signatures = parse_document(document)
    errors = []
    for entry in signatures:
        try:
            verifier.verify(canonical(signed), base64.b64decode(entry["sig"], validate=True), entry["keyid"])
            break
        except (SignatureError, KeyError, TypeError, ValueError) as exc:
            errors.append(str(exc))
    else:
        raise ManifestError("manifest signature rejected: " + ("; ".join(errors) or "no signatures"))
    manifest = _parse_signed(signed)
    if manifest.hardware != hardware:
        raise ManifestError(f"release {manifest.version} is for hardware {manifest.hardware!r}, this "
                            f"device is {hardware!r}: assign a release built for {hardware!r}")
    now = now or datetime.now(UTC)
    if datetime.fromisoformat(manifest.expires) <= now:
        raise ManifestError(f"manifest of {manifest.version} expired at {manifest.expires}: "
                            "re-run the signer to issue a fresh manifest")
    if parse_version(manifest.version) <= parse_version(running_version):
        raise ManifestError(f"release {manifest.version} is not newer than the running {running_version}: "
                            "downgrades and replays are refused; publish a newer version")
    if manifest.security_counter < security_counter:
        raise ManifestError(f"release {manifest.version} has security counter {manifest.security_counter}, "
                            f"below this device's {security_counter}: anti-rollback refuses it")
    return manifest
