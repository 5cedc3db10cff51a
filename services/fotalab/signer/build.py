"""Turn the release list into a release store: signed images, deltas, signed manifests.

The store (the releases volume) is content-addressed:

    index.json                       what the server may serve, and the releases
    artifacts/<sha256>               images, deltas, detached signatures
    manifests/<hardware>/<version>.json   signed release manifests
    factory/<hardware>.img, factory/trust.pem   what a device is programmed with at first power-on

A rebuild reuses every image, delta and manifest whose inputs did not change, so running the
signer again (every `docker compose up`) changes nothing a device already holds.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

from ..formats.delta import best_delta
from ..formats.image import ImageHeader, build_image
from ..formats.manifest import ArtifactRef, DeltaRef, Manifest, parse_document, sign_manifest
from ..formats.rotation import CHAIN_NAME
from ..formats.signing import Signer
from .fwgen import firmware_versions
from .releases import ReleasePlan, ReleaseSpec
from .swu import DEVICE_FLASH_DIR, PUBLISHED_CERT, SwuSigner, add_swu_releases

INDEX = "index.json"
INDEX_FORMAT = 1
REFRESH_BEFORE = timedelta(days=30)


def short_version(version: str) -> str:
    """The seed's alias spelling: 2.0.0 -> 'v2', 1.1.0 -> 'v1.1'."""
    parts = version.split(".")
    while len(parts) > 1 and parts[-1] == "0":
        parts.pop()
    return "v" + ".".join(parts)


@dataclass
class BuildReport:
    built: list[str] = field(default_factory=list)
    reused: list[str] = field(default_factory=list)


class ReleaseStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.artifacts: dict[str, dict] = {}

    def previous_index(self) -> dict:
        try:
            return json.loads((self.root / INDEX).read_text())
        except (OSError, ValueError):
            return {}

    def existing(self, sha256: str) -> bytes | None:
        path = self.root / "artifacts" / sha256
        return path.read_bytes() if path.exists() else None

    def put(self, data: bytes, kind: str, names: list[str], **meta: str) -> str:
        sha = hashlib.sha256(data).hexdigest()
        path = self.root / "artifacts" / sha
        if not path.exists():
            write_atomic(path, data)
        entry = self.artifacts.setdefault(sha, {"length": len(data), "kind": kind, "names": [], **meta})
        entry["names"] += [n for n in names if n not in entry["names"]]
        return sha

    def prune(self) -> None:
        for path in (self.root / "artifacts").iterdir():
            if path.name not in self.artifacts:
                path.unlink()


def write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def payloads_for(plan: ReleasePlan, hardware: str, firmware_dir: Path) -> dict[str, bytes]:
    """Each release's payload: a real binary if one is dropped in, else the generated chain."""
    spec = plan.hardware[hardware]
    releases = plan.releases_of(hardware)
    generated = firmware_versions(spec.seed, spec.size, len(releases), spec.arch)
    payloads = {}
    for release, payload in zip(releases, generated):
        real = firmware_dir / hardware / f"{release.version}.bin"
        payloads[release.version] = real.read_bytes() if real.exists() else payload
    return payloads


def build_releases(plan: ReleasePlan, signer: Signer, firmware_dir: Path, out: Path,
                   now: datetime | None = None, rotations: list[bytes] = (),
                   swu_signer: SwuSigner | None = None, swu_flash_dir: str = DEVICE_FLASH_DIR) -> BuildReport:
    """Build every release; `rotations` (oldest first) are published as key-rotations.json so
    devices provisioned with an earlier key can follow the chain to the current one. With a
    `swu_signer`, hardware of format "swupdate" also gets .swu files (signer/swu.py), naming the
    slots under `swu_flash_dir`, where SWUpdate devices see their flash."""
    now = now or datetime.now(UTC)
    store = ReleaseStore(out)
    previous = store.previous_index()
    reuse = previous.get("key_id") == signer.key_id
    old_releases = {(r["hardware"], r["version"]): r for r in previous.get("releases", [])} if reuse else {}
    old_deltas = {(d["base_sha256"], r["image"]): d for r in old_releases.values() for d in r["deltas"]}
    report = BuildReport()
    index_releases, factory = [], {}
    default_hardware = next(iter(plan.hardware), None)

    for hardware in plan.hardware:
        payloads = payloads_for(plan, hardware, firmware_dir)
        built: list[tuple[ReleaseSpec, bytes, str]] = []
        for release in plan.releases_of(hardware):
            payload = payloads[release.version]
            header = ImageHeader(release.version, release.security_counter, hardware, len(payload),
                                 release.behaviour, release.behaviour_arg)
            source = hashlib.sha256(header.pack() + payload).hexdigest()
            old = old_releases.get((hardware, release.version))
            image = store.existing(old["image"]) if old and old["source_sha256"] == source else None
            (report.reused if image else report.built).append(f"{hardware} {release.version} image")
            image = image or build_image(header, payload, signer)
            names = [f"{hardware}-{release.version}.img"]
            alias = short_version(release.version) if hardware == default_hardware else None
            if alias:
                names.append(f"{alias}.bin")
                store.put(signer.sign(image), "signature", [f"{alias}.sig"], signs=hashlib.sha256(image).hexdigest())
            image_sha = store.put(image, "image", names, hardware=hardware, version=release.version)

            deltas = []
            # SWUpdate devices take rdiff delta .swu files (swu.py), not the lab's own deltas
            lab_bases = built[-plan.max_deltas:] if plan.hardware[hardware].format == "lab" else []
            for base, base_image, base_sha in lab_bases:
                cached = old_deltas.get((base_sha, image_sha))
                data = store.existing(cached["sha256"]) if cached else None
                encoding = cached["encoding"] if data else None
                (report.reused if data else report.built).append(
                    f"{hardware} {base.version}->{release.version} delta")
                if data is None:
                    delta = best_delta(base_image, image)
                    data, encoding = delta.data, delta.encoding
                names = [f"{hardware}-{base.version}_to_{release.version}.delta"]
                if alias:
                    names.append(f"{short_version(base.version)}_to_{alias}.delta")
                sha = store.put(data, "delta", names, hardware=hardware, version=release.version)
                deltas.append(DeltaRef(names[0], len(data), sha, base.version, base_sha, encoding))

            manifest = Manifest(hardware, release.version, release.security_counter,
                                ArtifactRef(names[0], len(image), image_sha), tuple(deltas), expires="")
            manifest_path = f"manifests/{hardware}/{release.version}.json"
            document = reusable_manifest(out / manifest_path, manifest, now) if old else None
            if document is None:
                expires = (now + timedelta(days=plan.expires_days)).replace(microsecond=0).isoformat()
                document = sign_manifest(replace(manifest, expires=expires), signer)
                write_atomic(out / manifest_path, document)
            index_releases.append({
                "hardware": hardware, "version": release.version, "security_counter": release.security_counter,
                "behaviour": release.behaviour.label, "source_sha256": source, "image": image_sha,
                "manifest": manifest_path,
                "deltas": [{"base_version": d.base_version, "base_sha256": d.base_sha256, "sha256": d.sha256,
                            "encoding": d.encoding, "length": d.length} for d in deltas]})
            built.append((release, image, image_sha))
        if swu_signer is not None and plan.hardware[hardware].format == "swupdate":
            swu = add_swu_releases(store, hardware, built, swu_signer,
                                   {v: r for (h, v), r in old_releases.items() if h == hardware},
                                   max_deltas=plan.max_deltas, report=report, flash_dir=swu_flash_dir)
            for entry in index_releases:
                if entry["hardware"] == hardware:
                    entry.update(swu[entry["version"]])
        if built:
            factory[hardware] = built[0][2]
            write_atomic(out / "factory" / f"{hardware}.img", built[0][1])

    if rotations:
        store.put(json.dumps([json.loads(r) for r in rotations], indent=1).encode(), "rotation", [CHAIN_NAME])
    write_atomic(out / "factory" / "trust.pem", signer.public_pem)
    write_atomic(out / "keys" / "trust.pem", signer.public_pem)
    if swu_signer is not None:
        write_atomic(out / "factory" / PUBLISHED_CERT, swu_signer.cert_pem)
        write_atomic(out / "keys" / PUBLISHED_CERT, swu_signer.cert_pem)
    store.prune()
    index = {"format": INDEX_FORMAT, "key_id": signer.key_id, "artifacts": store.artifacts,
             "releases": index_releases, "factory": factory}
    write_atomic(out / INDEX, json.dumps(index, indent=1, sort_keys=True).encode())
    return report


def reusable_manifest(path: Path, manifest: Manifest, now: datetime) -> bytes | None:
    """The stored manifest document if it says the same and is not close to expiry."""
    try:
        document = path.read_bytes()
        signed, _ = parse_document(document)
    except (OSError, ValueError):
        return None
    expires = datetime.fromisoformat(signed.get("expires", "1970-01-01T00:00:00+00:00"))
    same = {**signed, "expires": ""} == manifest.to_signed()
    return document if same and expires - now > REFRESH_BEFORE else None
