"""HTTP transport to the update server: the signed manifest and ranged artifact downloads.

The engine's one network seam (as python-tuf's fetcher is ngclient's): it maps every I/O
failure to a TransportError in one place, and never hands the engine more bytes than it
asked for, so a server or a link that sends too much cannot make the device store it.
"""
from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

import requests

from ..tlsfiles import TlsFiles
from .errors import TransportError, UpdateFailed

MAX_MANIFEST_BYTES = 1 << 20     # a signed manifest is a few KiB; more is not one
MAX_DOCUMENT_BYTES = 1 << 20     # the key rotation chain and other small store documents


class HttpTransport:
    """`radio_kbps` > 0 simulates a slow radio link (NB-IoT, LTE-M): reads are paced to that rate
    and come in pieces of about a second's worth, so progress is reported as it happens.

    A transfer that stalls (no byte for `timeout_s`) or trickles (fewer than `min_rate_bps` on
    average over `rate_window_s`) raises TransportError; the engine retries with backoff and
    resumes from the journaled offset.

    With `tls` the server is verified against the lab CA (never without) and the device presents
    its certificate: the server takes the device's identity from it."""

    def __init__(self, base_url: str, *, timeout_s: float, chunk_size: int, radio_kbps: float = 0,
                 min_rate_bps: float = 0, rate_window_s: float = 30, tls: TlsFiles | None = None) -> None:
        self._base = base_url.rstrip("/")
        self._timeout = timeout_s
        self._min_rate, self._window = min_rate_bps, rate_window_s
        self._radio_bytes_s = radio_kbps * 1000 / 8
        self._chunk = min(chunk_size, max(256, int(self._radio_bytes_s))) if radio_kbps else chunk_size
        self._session = requests.Session()
        self._tls = tls
        # per request, not on the session: REQUESTS_CA_BUNDLE in the environment would override session.verify
        self._verify: dict = {}
        if tls is not None:
            tls.check()
            self._verify = {"verify": str(tls.ca), "cert": tls.requests_cert}

    def fetch_manifest(self, *, device_id: str, hardware: str, version: str, image_sha256: str) -> bytes | None:
        params = {"device": device_id, "hardware": hardware, "version": version, "image": image_sha256}
        response = self._get("/api/v1/manifest", MAX_MANIFEST_BYTES, params=params)
        if response.status_code != 200:
            return None
        body = response.json()
        return body["manifest"].encode() if body.get("update") else None

    def fetch_document(self, name: str) -> bytes:
        """A small named document of the release store, e.g. the key rotation chain."""
        response = self._get(f"/updates/{name}", MAX_DOCUMENT_BYTES)
        return response.content if response.ok else b"[]"

    def open_range(self, url_path: str, start: int, end: int) -> Iterator[bytes]:
        """Bytes [start, end) of an artifact, never more; a stall longer than the timeout raises."""
        headers = {"Range": f"bytes={start}-{end - 1}"}
        with self._io_errors("download"), self._session.get(f"{self._base}{url_path}", headers=headers,
                                                            stream=True, timeout=self._timeout,
                                                            **self._verify) as response:
            if 400 <= response.status_code < 500:
                raise UpdateFailed(f"the server refuses {url_path} (HTTP {response.status_code}): its release "
                                   "store lacks this signed artifact or holds a damaged copy; re-run the signer")
            if response.status_code != 206:
                raise TransportError(f"expected 206 Partial Content for bytes {start}-{end - 1}, "
                                     f"got {response.status_code}")
            if not response.headers.get("Content-Range", "").startswith(f"bytes {start}-"):
                raise TransportError(f"server answered range {response.headers.get('Content-Range')!r}")
            yield from self._paced(response, limit=end - start)

    def _paced(self, response: requests.Response, *, limit: int) -> Iterator[bytes]:
        started, received = time.monotonic(), 0
        window_start, window_bytes = started, 0
        for chunk in response.iter_content(chunk_size=self._chunk):
            received += len(chunk)
            if received > limit:
                raise TransportError(f"the server sent more than the {limit} bytes asked for; "
                                     "the extra bytes were dropped and the download resumes")
            window_bytes += len(chunk)
            if self._radio_bytes_s:
                time.sleep(max(0.0, received / self._radio_bytes_s - (time.monotonic() - started)))
            now = time.monotonic()
            if now - window_start >= self._window:
                if window_bytes < self._min_rate * (now - window_start):
                    raise TransportError(
                        f"transfer trickling at {window_bytes / (now - window_start):.0f} B/s, below the "
                        f"minimum {self._min_rate:.0f} B/s over {self._window:.0f} s")
                window_start, window_bytes = now, 0
            yield chunk

    def _get(self, path: str, max_bytes: int, **kwargs: object) -> requests.Response:
        """A small document, read whole but never past `max_bytes`."""
        with self._io_errors("request"), self._session.get(f"{self._base}{path}", stream=True,
                                                           timeout=self._timeout, **self._verify,
                                                           **kwargs) as response:
            if response.status_code >= 500:
                raise TransportError(f"update server answered {response.status_code}")
            body = bytearray()
            for chunk in response.iter_content(chunk_size=64 * 1024):
                body += chunk
                if len(body) > max_bytes:
                    raise TransportError(f"{path} is over {max_bytes} bytes; the server or the link is broken")
            response._content = bytes(body)
            return response

    @contextmanager
    def _io_errors(self, what: str) -> Iterator[None]:
        """The one place where network failures become TransportError, with what happened."""
        try:
            yield
        except requests.exceptions.SSLError as exc:
            # a certificate problem, or a stream damaged in transit (a flipped byte fails TLS's integrity
            # check): either way this attempt is over; the engine retries
            files = f"CA {self._tls.ca}, certificate {self._tls.cert}" if self._tls else "no TLS files set"
            raise TransportError(f"{what} failed: TLS error ({_reason(exc)}); the stream was damaged in transit "
                                 f"or a certificate was refused ({files}): re-provision the device if it "
                                 "persists") from None
        except requests.RequestException as exc:
            if "timed out" in str(exc):      # a read timeout mid-body surfaces as a ConnectionError
                raise TransportError(f"{what} stalled: no data for {self._timeout:.0f} s") from None
            lost = isinstance(exc, requests.ConnectionError)
            raise TransportError(f"{what} failed: " + ("update server unreachable or connection lost" if lost
                                 else "the server's answer was malformed") + f" ({exc.__class__.__name__})") from None


def _reason(exc: Exception) -> str:
    """The SSL error inside a requests error (urllib3 wraps it in its retry error), short."""
    inner = getattr(exc.args[0], "reason", None) if exc.args else None
    return str(inner or exc)[:200]
