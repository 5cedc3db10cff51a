"""Unit-tier fixtures: signed releases v1 -> v2 and the stand-in server that offers them (device
engine tests), and a sample release store with the real server app around it (server tests)."""
from __future__ import annotations

from pathlib import Path

import pytest
from device_harness import EXPIRES, FakeServer, sha

from fotalab.formats.delta import best_delta
from fotalab.formats.manifest import ArtifactRef, DeltaRef, Manifest, sign_manifest
from samples import edit, make_image, make_payload
from server_samples import http_client, make_app, make_store


@pytest.fixture(scope="module")
def release(release_key):
    """v1 (factory) and v2 images, the v1->v2 delta, and a signed manifest for v2."""
    v1 = make_image(release_key, "1.0.0", make_payload(1))
    v2 = make_image(release_key, "2.0.0", edit(make_payload(1), 2), counter=2)
    delta = best_delta(v1, v2)

    def manifest_for(image=v2, version="2.0.0", hardware="fotalab-m4", counter=2, deltas=None, signer=release_key):
        refs = deltas if deltas is not None else (
            DeltaRef("v1_to_v2.delta", len(delta.data), sha(delta.data), "1.0.0", sha(v1), delta.encoding),)
        return sign_manifest(Manifest(hardware, version, counter, ArtifactRef("v2.img", len(image), sha(image)),
                                      refs, EXPIRES), signer)
    return {"v1": v1, "v2": v2, "delta": delta, "manifest_for": manifest_for}


@pytest.fixture
def factory_dir(tmp_path, release, release_key) -> Path:
    factory = tmp_path / "factory"
    factory.mkdir()
    (factory / "fotalab-m4.img").write_bytes(release["v1"])
    (factory / "trust.pem").write_bytes(release_key.public_pem)
    return factory


@pytest.fixture
def server(release) -> FakeServer:
    fake = FakeServer()
    fake.manifest = release["manifest_for"]()
    fake.files = {sha(release["v2"]): release["v2"], sha(release["delta"].data): release["delta"].data}
    return fake


@pytest.fixture
def store(tmp_path):
    """A signer-like release store: m4 1.0.0, 2.0.0 (with a delta), 3.0.0; other-hw 1.0.0."""
    return make_store(tmp_path / "store")


@pytest.fixture
def app(tmp_path, store):
    """The update server's Flask app over `store`, with its registry in tmp_path."""
    return make_app(tmp_path, store)


@pytest.fixture
def client(app):
    return http_client(app)
