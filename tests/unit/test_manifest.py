from datetime import UTC, datetime, timedelta

import pytest

from fotalab.formats.manifest import ArtifactRef, DeltaRef, Manifest, ManifestError, sign_manifest, verify_manifest
from fotalab.formats.signing import Verifier
from samples import flip

NOW = datetime(2026, 11, 27, tzinfo=UTC)


def manifest(version="2.0.0", hardware="fotalab-m4", counter=2, expires=NOW + timedelta(days=30)) -> Manifest:
    return Manifest(hardware, version, counter, ArtifactRef("img", 100, "aa" * 32),
                    (DeltaRef("d", 10, "bb" * 32, "1.0.0", "cc" * 32, "bsdiff4"),), expires.isoformat())


def check(document: bytes, verifier: Verifier, **overrides):
    args = dict(hardware="fotalab-m4", running_version="1.0.0", security_counter=1, now=NOW) | overrides
    return verify_manifest(document, verifier, **args)


def test_signed_manifest_is_accepted_with_its_deltas(release_key):
    result = check(sign_manifest(manifest(), release_key), Verifier(release_key.public_pem))
    assert result.version == "2.0.0"
    assert result.delta_for("cc" * 32).sha256 == "bb" * 32
    assert result.delta_for("dd" * 32) is None


@pytest.mark.parametrize("where", ["first", "middle", "last"])
def test_flipped_byte_in_manifest_is_rejected(release_key, where):
    document = sign_manifest(manifest(), release_key)
    with pytest.raises(ManifestError):
        check(flip(document, where), Verifier(release_key.public_pem))


def test_flipped_signature_byte_is_rejected(release_key):
    document = sign_manifest(manifest(), release_key).decode()
    start = document.index('"sig": "') + len('"sig": "')
    tampered = document[:start] + ("B" if document[start] == "A" else "A") + document[start + 1:]
    with pytest.raises(ManifestError, match="signature"):
        check(tampered.encode(), Verifier(release_key.public_pem))


@pytest.mark.parametrize("overrides, match", [
    ({"hardware": "other-board"}, "is for hardware"),
    ({"running_version": "2.0.0"}, "not newer"),
    ({"running_version": "3.0.0"}, "not newer"),
    ({"security_counter": 3}, "anti-rollback"),
    ({"now": NOW + timedelta(days=31)}, "expired"),
])
def test_manifest_not_meant_for_this_device_is_rejected(release_key, overrides, match):
    with pytest.raises(ManifestError, match=match):
        check(sign_manifest(manifest(), release_key), Verifier(release_key.public_pem), **overrides)


def test_manifest_by_foreign_key_is_rejected(release_key, foreign_key):
    with pytest.raises(ManifestError, match="trusts key"):
        check(sign_manifest(manifest(), foreign_key), Verifier(release_key.public_pem))


def test_oversized_manifest_is_refused_before_parsing(release_key):
    with pytest.raises(ManifestError, match="over the"):
        check(b"{" + b" " * 70000 + b"}", Verifier(release_key.public_pem))
