"""Only indexed files are served: traversal, encodings, absolute paths and symlinks all fail."""
import os

import pytest

from server_samples import http_client, make_app, make_store

SECRET = b"the private key lives here"

CORPUS = [
    "/updates/../index.json", "/updates/..%2findex.json", "/updates/%2e%2e/index.json",
    "/updates/%2e%2e%2findex.json", "/updates/%252e%252e%252findex.json", "/updates/....//index.json",
    "/updates/..\\index.json", "/updates/%5c..%5cindex.json", "/updates//etc/passwd", "/updates/%2fetc%2fpasswd",
    "/updates/index.json", "/updates/../../secret.txt", "/updates/%2e%2e%2f%2e%2e%2fsecret.txt",
    "/updates/..%00/secret.txt", "/updates/v2.bin%00.txt", "/updates/v2.bin/", "/updates/", "/updates/.",
    "/updates/..", "/updates/manifests%2fm4%2f2.0.0.json", "/artifacts/../index.json",
    "/artifacts/..%2f..%2fsecret.txt", "/artifacts/%2e%2e", "/artifacts//etc/passwd", "/artifacts/", "/artifacts/.",
    "/artifacts/" + "A" * 64, "/artifacts/" + "0" * 64, "/artifacts/" + "0" * 63 + "/",
    "/hash/../index.json", "/hash/..%2fsecret.sha256", "/hash/%2e%2e%2fsecret.sha256",
    "/hash/index.json", "/hash/secret.sha256",
]


@pytest.fixture
def store(tmp_path):
    (tmp_path / "secret.txt").write_bytes(SECRET)
    return make_store(tmp_path / "store")


@pytest.mark.parametrize("path", CORPUS)
def test_traversal_corpus_never_serves_a_file(client, path):
    response = client.get(path)
    assert response.status_code in (400, 404), (path, response.status_code)
    assert response.is_json and response.json["error"]
    assert SECRET not in response.data and b'"signed"' not in response.data


def test_a_symlink_in_the_store_is_not_indexed(tmp_path, store):
    outside = tmp_path / "outside.bin"
    outside.write_bytes(SECRET)
    sha = store.images[("m4", "3.0.0")]
    target = store.root / "artifacts" / sha
    target.unlink()
    target.symlink_to(outside)
    app = make_app(tmp_path, store)
    client = http_client(app)
    assert client.get(f"/artifacts/{sha}").status_code == 404
    assert client.get("/updates/v3.bin").status_code == 404
    ready = client.get("/readyz").json
    assert "not a regular file" in ready["checks"]["release_store"]["skipped_artifacts"][0]


def test_a_symlink_planted_after_indexing_is_not_followed(tmp_path, store):
    client = http_client(make_app(tmp_path, store))
    outside = tmp_path / "outside.bin"
    sha = store.images[("m4", "3.0.0")]
    outside.write_bytes(b"x" * len(store.data[sha]))        # same length, so only O_NOFOLLOW stops it
    target = store.root / "artifacts" / sha
    target.unlink()
    os.symlink(outside, target)
    response = client.get(f"/artifacts/{sha}")
    assert response.status_code == 503 and b"xxxx" not in response.data
    assert "release store changed" in response.json["error"]


def test_a_file_that_does_not_match_its_hash_is_not_indexed(tmp_path, store):
    sha = store.images[("m4", "3.0.0")]
    path = store.root / "artifacts" / sha
    path.write_bytes(b"\0" * path.stat().st_size)
    client = http_client(make_app(tmp_path, store))
    assert client.get(f"/artifacts/{sha}").status_code == 404
