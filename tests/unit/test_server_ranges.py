"""Artifact responses: ranges, If-Range, 416, ETag/304, If-Match, HEAD (through the whole server app)."""
import hashlib

import pytest

from fotalab.server.downloads import RangeNotSatisfiable, parse_range


@pytest.fixture
def image(store):
    sha = store.images[("m4", "2.0.0")]
    return sha, store.data[sha]


@pytest.mark.parametrize("header, expected", [
    ("bytes=0-99", (0, 100)), ("bytes=100-", (100, 1000)), ("bytes=-100", (900, 1000)),
    ("bytes=-5000", (0, 1000)), ("bytes=990-5000", (990, 1000)), ("bytes=999-999", (999, 1000)),
    ("BYTES=0-0", (0, 1)), (" bytes=5-9 ", (5, 10)),
])
def test_single_ranges(header, expected):
    assert parse_range(header, 1000) == expected


@pytest.mark.parametrize("header", [
    "bytes=0-1,5-6", "bytes=0-1, 5-6", "bytes=1000-", "bytes=5000-6000", "bytes=-0", "bytes=9-2", "bytes=",
    "bytes=-", "bytes=abc", "items=0-5", "bytes 0-5", "bytes=1-2-3", "bytes=0-5,", "bytes=+1-5",
    "bytes=" + "9" * 30 + "-",
])
def test_unsatisfiable_or_malformed_ranges(header):
    with pytest.raises(RangeNotSatisfiable):
        parse_range(header, 1000)


def test_whole_artifact_has_strong_etag_and_immutable_cache(client, image):
    sha, data = image
    response = client.get(f"/artifacts/{sha}")
    assert response.status_code == 200 and response.data == data
    assert response.headers["ETag"] == f'"{sha}"'
    assert response.headers["Content-Length"] == str(len(data))
    assert response.headers["Accept-Ranges"] == "bytes"
    assert "immutable" in response.headers["Cache-Control"]


def test_resumed_download_is_byte_exact(client, image):
    sha, data = image
    cuts = [0, 1, 65535, 65536, 100_001, len(data) - 1, len(data)]
    pieces = []
    for start, stop in zip(cuts, cuts[1:]):
        response = client.get(f"/artifacts/{sha}", headers={"Range": f"bytes={start}-{stop - 1}"})
        assert response.status_code == 206
        assert response.headers["Content-Range"] == f"bytes {start}-{stop - 1}/{len(data)}"
        assert response.headers["Content-Length"] == str(stop - start)
        pieces.append(response.data)
    assert hashlib.sha256(b"".join(pieces)).hexdigest() == sha


def test_open_and_suffix_ranges(client, image):
    sha, data = image
    tail = client.get(f"/artifacts/{sha}", headers={"Range": "bytes=150000-"})
    assert tail.status_code == 206 and tail.data == data[150000:]
    suffix = client.get(f"/artifacts/{sha}", headers={"Range": "bytes=-10"})
    assert suffix.status_code == 206 and suffix.data == data[-10:]
    assert suffix.headers["Content-Range"] == f"bytes {len(data) - 10}-{len(data) - 1}/{len(data)}"


@pytest.mark.parametrize("range_header", ["bytes=0-1,4-5", "bytes=999999-", "bytes=5-1", "bytes=-0", "chunks=0-1"])
def test_416_names_the_length(client, image, range_header):
    sha, data = image
    response = client.get(f"/artifacts/{sha}", headers={"Range": range_header})
    assert response.status_code == 416
    assert response.headers["Content-Range"] == f"bytes */{len(data)}"
    assert response.is_json and "range not satisfiable" in response.json["error"]


def test_if_range_with_our_etag_gives_the_range(client, image):
    sha, data = image
    response = client.get(f"/artifacts/{sha}", headers={"Range": "bytes=10-19", "If-Range": f'"{sha}"'})
    assert response.status_code == 206 and response.data == data[10:20]


@pytest.mark.parametrize("if_range", ['"0000"', 'W/"{sha}"', "Wed, 21 Oct 2015 07:28:00 GMT", "{sha}"])
def test_if_range_that_does_not_match_strongly_gives_the_whole_artifact(client, image, if_range):
    sha, data = image
    response = client.get(f"/artifacts/{sha}", headers={"Range": "bytes=10-19", "If-Range": if_range.format(sha=sha)})
    assert response.status_code == 200 and response.data == data
    assert "Content-Range" not in response.headers


def test_if_range_mismatch_ignores_even_a_bad_range(client, image):
    sha, data = image
    response = client.get(f"/artifacts/{sha}", headers={"Range": "bytes=0-1,3-4", "If-Range": '"other"'})
    assert response.status_code == 200 and response.data == data


@pytest.mark.parametrize("if_none_match", ['"{sha}"', 'W/"{sha}"', '"other", "{sha}"', "*"])
def test_if_none_match_gives_304_without_body(client, image, if_none_match):
    sha, _ = image
    response = client.get(f"/artifacts/{sha}", headers={"If-None-Match": if_none_match.format(sha=sha)})
    assert response.status_code == 304 and response.data == b""
    assert response.headers["ETag"] == f'"{sha}"'


def test_if_none_match_of_another_etag_gives_the_artifact(client, image):
    sha, data = image
    response = client.get(f"/artifacts/{sha}", headers={"If-None-Match": '"other"'})
    assert response.status_code == 200 and response.data == data


def test_if_match_compares_strongly(client, image):
    sha, data = image
    assert client.get(f"/artifacts/{sha}", headers={"If-Match": f'"{sha}"'}).data == data
    refused = client.get(f"/artifacts/{sha}", headers={"If-Match": f'W/"{sha}"'})
    assert refused.status_code == 412 and refused.is_json


def test_head_has_the_headers_and_no_body(client, image):
    sha, data = image
    response = client.head(f"/artifacts/{sha}", headers={"Range": "bytes=0-9"})
    assert response.status_code == 206 and response.data == b""
    assert response.headers["Content-Length"] == "10"


def test_seed_alias_routes_serve_the_same_bytes(client, store):
    sha = store.deltas[("m4", "1.0.0", "2.0.0")]
    by_name = client.get("/updates/v1_to_v2.delta", headers={"Range": "bytes=100-"})
    assert by_name.status_code == 206 and by_name.data == store.data[sha][100:]
    assert by_name.headers["ETag"] == f'"{sha}"'
    listing = client.get("/hash/v2.sha256")
    assert listing.status_code == 200 and listing.data.decode().split()[0] == store.images[("m4", "2.0.0")]


def test_artifacts_are_read_only(client, image):
    sha, _ = image
    response = client.post(f"/artifacts/{sha}")
    assert response.status_code == 405 and response.headers["Allow"] == "GET, HEAD" and response.is_json
