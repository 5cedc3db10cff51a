"""SWUpdate releases: a signed .swu per release, and rdiff delta .swu files between releases.

For every hardware whose releases.toml entry says `format = "swupdate"` the signer builds, next
to the lab's own images:

    <hardware>-<version>.swu                 the whole image (raw handler)
    <hardware>-<base>_to_<version>.swu       an rdiff patch from <base> (rdiff_image handler),
                                             only when it is smaller than the whole .swu

Each is a newc cpio archive: sw-description, sw-description.sig (CMS, detached, DER, signed by
the SWUpdate signing certificate), then the artifact (formats.swu describes sw-description).
The payload inside is the same signed lab image the release store holds, so the device's
bootloader can verify a slot as it does for the lab's own devices.

The signing certificate is self-signed (EC P-256), with the emailProtection extended key usage
SWUpdate checks by default (and codeSigning, for `--cert-purpose codeSigning`). It lives beside
the release key: keys/swupdate-signer.key.pem (0600, signer only) and keys/swupdate-signer.crt.pem;
devices get the certificate from the store's factory/swupdate-signer.crt (`swupdate -k`).

rdiff deltas are made with librsync's `rdiff` (Debian package rdiff): `rdiff signature` of the
base image, then `rdiff delta`. Without the binary, delta .swu files are skipped (said in the
build report), the whole .swu files are still built.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import pkcs7
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ..formats import cpio
from ..formats.swu import DELTA_MEMBER, IMAGE_MEMBER, SIGNATURE, SW_DESCRIPTION, SwuArtifact, sw_description

KEY = "swupdate-signer.key.pem"
CERT = "swupdate-signer.crt.pem"
PUBLISHED_CERT = "swupdate-signer.crt"       # in the store's factory/ and keys/
DEVICE_FLASH_DIR = "/data"                   # where an SWUpdate device's slots live (its flash)
RDIFF_BLOCK = 12     # rdiff signature block: firmware edits shift code, small blocks match more (docs/swupdate.md)
SWU_KIND = "swu"
SWU_DELTA_KIND = "swu-delta"


@dataclass(frozen=True)
class SwuSigner:
    key_pem: bytes
    cert_pem: bytes

    @property
    def fingerprint(self) -> str:
        return x509.load_pem_x509_certificate(self.cert_pem).fingerprint(hashes.SHA256()).hex()

    def sign(self, data: bytes) -> bytes:
        """A detached CMS signature in DER, as `openssl cms -sign -binary -outform DER` makes."""
        key = serialization.load_pem_private_key(self.key_pem, password=None)
        cert = x509.load_pem_x509_certificate(self.cert_pem)
        return (pkcs7.PKCS7SignatureBuilder().set_data(data).add_signer(cert, key, hashes.SHA256())
                .sign(serialization.Encoding.DER, [pkcs7.PKCS7Options.DetachedSignature,
                                                   pkcs7.PKCS7Options.Binary]))


def ensure_swu_signer(keys_dir: Path, *, days: int = 3650) -> tuple[SwuSigner, bool]:
    """Load the SWUpdate signing key and certificate, creating them if there are none."""
    key_path, cert_path = keys_dir / KEY, keys_dir / CERT
    if key_path.exists() and cert_path.exists():
        return SwuSigner(key_path.read_bytes(), cert_path.read_bytes()), False
    keys_dir.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fota-lab swupdate signer"),
                      x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fota-lab")])
    now = datetime.now(UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(days=1)).not_valid_after(now + timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=False,
                                         crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION,
                                                  ExtendedKeyUsageOID.CODE_SIGNING]), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256()))
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    tmp = key_path.with_name(KEY + ".tmp")
    with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as out:
        out.write(key_pem)
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    cert_path.write_bytes(cert_pem)
    os.replace(tmp, key_path)
    return SwuSigner(key_pem, cert_pem), True


def build_swu(*, version: str, hardware: str, member: str, data: bytes, signer: SwuSigner,
              delta: bool = False, flash_dir: str = DEVICE_FLASH_DIR) -> bytes:
    """One .swu: sw-description first, its signature, then the artifact."""
    artifact = SwuArtifact(member, hashlib.sha256(data).hexdigest(), delta_base_slot=delta)
    description = sw_description(version=version, hardware=hardware, artifact=artifact, flash_dir=flash_dir)
    return cpio.write([(SW_DESCRIPTION, description), (SIGNATURE, signer.sign(description)), (member, data)])


def rdiff_available() -> bool:
    return shutil.which("rdiff") is not None


def rdiff_delta(base: bytes, new: bytes, block: int = RDIFF_BLOCK) -> bytes:
    """librsync's delta from `base` to `new`: what `rdiff patch base delta` turns back into `new`."""
    with tempfile.TemporaryDirectory(prefix="fotalab-rdiff-") as tmp:
        paths = {name: Path(tmp) / name for name in ("base", "new", "sig", "delta")}
        paths["base"].write_bytes(base)
        paths["new"].write_bytes(new)
        subprocess.run(["rdiff", "-b", str(block), "signature", paths["base"], paths["sig"]],
                       check=True, capture_output=True)
        subprocess.run(["rdiff", "delta", paths["sig"], paths["new"], paths["delta"]], check=True, capture_output=True)
        return paths["delta"].read_bytes()


def add_swu_releases(store, hardware: str, built: list, signer: SwuSigner, previous: dict, *,
                     max_deltas: int, report, flash_dir: str = DEVICE_FLASH_DIR) -> dict[str, dict]:
    """Build (or reuse) the .swu files of one hardware's releases; `built` is the build's
    [(ReleaseSpec, image bytes, image sha256)], oldest first, `previous` the last index's
    entries by version. Returns, by version, what the index's release entry gets: `swu` and
    `swu_deltas`."""
    entries, fingerprint = {}, signer.fingerprint
    for position, (release, image, image_sha) in enumerate(built):
        old = previous.get(release.version, {})
        source = hashlib.sha256(f"{fingerprint} {image_sha} {flash_dir}".encode()).hexdigest()
        whole = _reuse(store, old.get("swu"), source)
        (report.reused if whole else report.built).append(f"{hardware} {release.version} swu")
        if whole is None:
            whole = build_swu(version=release.version, hardware=hardware, member=IMAGE_MEMBER, data=image,
                              signer=signer, flash_dir=flash_dir)
        sha = store.put(whole, SWU_KIND, [f"{hardware}-{release.version}.swu"], hardware=hardware,
                        version=release.version)
        entry = {"swu": {"sha256": sha, "length": len(whole), "source": source}, "swu_deltas": []}
        old_deltas = {d["base_version"]: d for d in old.get("swu_deltas", [])}
        for base, base_image, base_sha in built[max(0, position - max_deltas):position]:
            if not rdiff_available():
                report.built.append(f"{hardware} {base.version}->{release.version} swu delta SKIPPED: no rdiff")
                continue
            delta_source = hashlib.sha256(f"{source} {base_sha}".encode()).hexdigest()
            data = _reuse(store, old_deltas.get(base.version), delta_source)
            (report.reused if data else report.built).append(f"{hardware} {base.version}->{release.version} swu delta")
            if data is None:
                data = build_swu(version=release.version, hardware=hardware, member=DELTA_MEMBER,
                                 data=rdiff_delta(base_image, image), signer=signer, delta=True, flash_dir=flash_dir)
            if len(data) >= len(whole):
                continue                    # a delta that saves nothing is not offered
            name = f"{hardware}-{base.version}_to_{release.version}.swu"
            delta_sha = store.put(data, SWU_DELTA_KIND, [name], hardware=hardware, version=release.version)
            entry["swu_deltas"].append({"base_version": base.version, "base_sha256": base_sha, "sha256": delta_sha,
                                        "length": len(data), "source": delta_source})
        entries[release.version] = entry
    return entries


def _reuse(store, old: dict | None, source: str) -> bytes | None:
    if not old or old.get("source") != source:
        return None
    return store.existing(old["sha256"])
