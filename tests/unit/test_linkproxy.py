"""The link proxy's man-in-the-middle attacks for the labs: flipping bytes of artifact bodies
only, and lying about the running version in a device's manifest request."""
from __future__ import annotations

from fotalab.lab.linkproxy import ArtifactBodies, spoof_manifest_request

ARTIFACT = (b"HTTP/1.1 206 Partial Content\r\nContent-Type: application/octet-stream\r\n"
            b"Content-Length: 8\r\n\r\n")
JSON = b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}'


def flip_all(piece: bytes) -> bytes:
    return bytes(b ^ 0xFF for b in piece)


def test_only_artifact_bodies_are_tampered_with_across_arbitrary_piece_boundaries():
    stream = JSON + ARTIFACT + b"\x00" * 8 + JSON
    bodies = ArtifactBodies(flip_all)
    out = b"".join(bodies.feed(stream[i:i + 5]) for i in range(0, len(stream), 5))
    assert out == JSON + ARTIFACT + b"\xff" * 8 + JSON


def test_a_response_without_content_length_passes_the_rest_of_the_connection_unchanged():
    head = b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
    bodies = ArtifactBodies(flip_all)
    assert bodies.feed(head + b"8\r\nabc") == head + b"8\r\nabc"
    assert bodies.feed(ARTIFACT + b"\x00" * 8) == ARTIFACT + b"\x00" * 8


def test_spoofed_manifest_request_claims_the_version_and_hides_the_image():
    request = (b"GET /api/v1/manifest?device=device-1&hardware=fotalab-m4&version=2.0.0&image=abc HTTP/1.1\r\n"
               b"Host: link:8000\r\n\r\n")
    assert spoof_manifest_request(request, "1.0.0") == (
        b"GET /api/v1/manifest?device=device-1&hardware=fotalab-m4&version=1.0.0 HTTP/1.1\r\nHost: link:8000\r\n\r\n")


def test_other_requests_are_not_spoofed():
    for request in (b"GET /artifacts/abc HTTP/1.1\r\n\r\n", b"POST /api/v1/manifest?version=2.0.0 HTTP/1.1\r\n\r\n",
                    b"partial"):
        assert spoof_manifest_request(request, "1.0.0") == request


def test_over_tls_only_application_data_payloads_are_tampered_with_headers_and_handshake_intact():
    from fotalab.lab.linkproxy import Downstream
    handshake = bytes([0x16, 3, 3, 0, 4]) + b"helo"
    record = bytes([0x17, 3, 3, 0, 6]) + b"secret"
    stream = handshake + record + record
    seen = []
    feed = Downstream(lambda piece: seen.append(piece) or b"X" * len(piece)).feed
    out = b"".join(feed(stream[i:i + 3]) for i in range(0, len(stream), 3))   # headers split across reads
    assert len(out) == len(stream)
    assert out[:9] == handshake and out[9:14] == record[:5] and out[14:20] == b"XXXXXX"
    assert out[20:25] == record[:5] and out[25:] == b"XXXXXX" and b"".join(seen) == b"secret" * 2


def test_a_tls_request_passes_the_version_spoof_unchanged():
    from fotalab.lab.linkproxy import spoof_manifest_request
    hello = bytes([0x16, 3, 1, 0, 5]) + b"GET /api/v1/manifest?version=2.0.0 HTTP/1.1\r\n"
    assert spoof_manifest_request(hello, "1.0.0") == hello
