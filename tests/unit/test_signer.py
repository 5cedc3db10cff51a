"""The signer's release store: signed images, deltas, manifests, idempotent rebuilds."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from fotalab.formats.delta import Delta, apply_delta
from fotalab.formats.image import verify_image
from fotalab.formats.manifest import verify_manifest
from fotalab.formats.signing import Verifier
from fotalab.signer.build import build_releases, short_version
from fotalab.signer.releases import ReleaseListError, load_plan

RELEASES = """
max_deltas = {max_deltas}
[[hardware]]
id = "fotalab-m4"
size = 65536
seed = 3
{releases}
"""


def release_list(tmp_path: Path, versions=("1.0.0", "1.1.0", "2.0.0"), max_deltas=5) -> Path:
    entries = "".join(f'[[release]]\nhardware = "fotalab-m4"\nversion = "{v}"\nsecurity_counter = 1\n'
                      for v in versions)
    firmware = tmp_path / "firmware"
    firmware.mkdir(exist_ok=True)
    (firmware / "releases.toml").write_text(RELEASES.format(max_deltas=max_deltas, releases=entries))
    return firmware


def index_of(out: Path) -> dict:
    return json.loads((out / "index.json").read_text())


def test_every_release_gets_a_signed_image_and_manifest_with_working_deltas(tmp_path, release_key):
    firmware = release_list(tmp_path)
    build_releases(load_plan(firmware / "releases.toml"), release_key, firmware, tmp_path / "out")
    index, verifier = index_of(tmp_path / "out"), Verifier(release_key.public_pem)
    images = {r["version"]: (tmp_path / "out" / "artifacts" / r["image"]).read_bytes() for r in index["releases"]}
    for release in index["releases"]:
        assert verify_image(images[release["version"]], verifier).version == release["version"]
        manifest = verify_manifest((tmp_path / "out" / release["manifest"]).read_bytes(), verifier,
                                   hardware="fotalab-m4", running_version="0.0.1", security_counter=0)
        assert [d.base_version for d in manifest.deltas] == [v for v in images if v < release["version"]]
        for delta in manifest.deltas:
            data = (tmp_path / "out" / "artifacts" / delta.sha256).read_bytes()
            new_image = images[release["version"]]
            assert apply_delta(images[delta.base_version], Delta(delta.encoding, data), len(new_image)) == new_image
            assert len(data) * 5 < len(images[release["version"]])     # consecutive versions are edits


def test_second_run_reuses_everything_so_devices_see_no_change(tmp_path, release_key):
    firmware = release_list(tmp_path)
    plan = load_plan(firmware / "releases.toml")
    build_releases(plan, release_key, firmware, tmp_path / "out")
    first = index_of(tmp_path / "out")
    report = build_releases(plan, release_key, firmware, tmp_path / "out")
    assert report.built == [] and index_of(tmp_path / "out") == first


def test_deltas_come_from_at_most_max_deltas_earlier_releases(tmp_path, release_key):
    firmware = release_list(tmp_path, versions=("1.0.0", "1.1.0", "1.2.0", "2.0.0"), max_deltas=2)
    build_releases(load_plan(firmware / "releases.toml"), release_key, firmware, tmp_path / "out")
    last = index_of(tmp_path / "out")["releases"][-1]
    assert [d["base_version"] for d in last["deltas"]] == ["1.1.0", "1.2.0"]


def test_a_real_binary_dropped_in_is_wrapped_and_signed_as_it_is(tmp_path, release_key):
    firmware = release_list(tmp_path)
    (firmware / "fotalab-m4").mkdir()
    (firmware / "fotalab-m4" / "2.0.0.bin").write_bytes(b"\x7fREAL" * 1000)
    build_releases(load_plan(firmware / "releases.toml"), release_key, firmware, tmp_path / "out")
    release = index_of(tmp_path / "out")["releases"][-1]
    image = (tmp_path / "out" / "artifacts" / release["image"]).read_bytes()
    assert b"\x7fREAL" * 1000 in image and verify_image(image, Verifier(release_key.public_pem)).version == "2.0.0"


def test_seed_names_are_aliases_of_the_signed_artifacts(tmp_path, release_key):
    firmware = release_list(tmp_path)
    build_releases(load_plan(firmware / "releases.toml"), release_key, firmware, tmp_path / "out")
    names = {n: sha for sha, a in index_of(tmp_path / "out")["artifacts"].items() for n in a["names"]}
    assert {"v1.bin", "v2.bin", "v1_to_v2.delta", "v1.1_to_v2.delta", "v2.sig"} <= names.keys()
    image = (tmp_path / "out" / "artifacts" / names["v2.bin"]).read_bytes()
    signature = (tmp_path / "out" / "artifacts" / names["v2.sig"]).read_bytes()
    Verifier(release_key.public_pem).verify(image, signature, release_key.key_id)
    assert short_version("2.0.0") == "v2" and short_version("1.1.0") == "v1.1" and short_version("1.0.3") == "v1.0.3"


def test_release_list_naming_unknown_hardware_is_refused_clearly(tmp_path):
    path = tmp_path / "releases.toml"
    path.write_text('[[release]]\nhardware = "ghost"\nversion = "1.0.0"\nsecurity_counter = 1\n')
    with pytest.raises(ReleaseListError, match="no \\[\\[hardware\\]\\] entry"):
        load_plan(path)
