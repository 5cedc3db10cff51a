"""HTTP transport to the update server: the signed manifest and ranged artifact downloads."""
from __future__ import annotations

import time
from collections.abc import Iterator

import requests

from .engine import TransportError, UpdateFailed


class HttpTransport:
    """`link_kbps` > 0 simulates a slow radio link (NB-IoT, LTE-M): reads are paced to that rate
    and come in pieces of about a second's worth, so progress is reported as it happens.

    A transfer that stalls (no byte for `timeout_s`) or trickles (fewer than `min_rate_bps` on
    average over `rate_window_s`) raises TransportError; the engine retries with backoff and
    resumes from the journaled offset."""

    def __init__(self, base_url: str, *, timeout_s: float, chunk_size: int, link_kbps: float = 0,
                 min_rate_bps: float = 0, rate_window_s: float = 30) -> None:
        self._base = base_url.rstrip("/")
        self._timeout = timeout_s
        self._min_rate, self._window = min_rate_bps, rate_window_s
        self._link_bytes_s = link_kbps * 1000 / 8
        self._chunk = min(chunk_size, max(256, int(self._link_bytes_s))) if link_kbps else chunk_size
        self._session = requests.Session()

    def fetch_manifest(self, *, device_id: str, hardware: str, version: str, image_sha256: str) -> bytes | None:
        params = {"device": device_id, "hardware": hardware, "version": version, "image": image_sha256}
        try:
            response = self._session.get(f"{self._base}/api/v1/manifest", params=params, timeout=self._timeout)
        except requests.RequestException as exc:
            raise TransportError(f"update server unreachable: {exc.__class__.__name__}") from None
        if response.status_code >= 500:
            raise TransportError(f"update server answered {response.status_code}")
        if response.status_code != 200:
            return None
        body = response.json()
        return body["manifest"].encode() if body.get("update") else None

    def fetch_document(self, name: str) -> bytes:
        """A small named document of the release store, e.g. the key rotation chain."""
        try:
            response = self._session.get(f"{self._base}/updates/{name}", timeout=self._timeout)
        except requests.RequestException as exc:
            raise TransportError(f"update server unreachable: {exc.__class__.__name__}") from None
        if response.status_code >= 500:
            raise TransportError(f"update server answered {response.status_code}")
        return response.content if response.ok else b"[]"

    def open_range(self, url_path: str, start: int, end: int) -> Iterator[bytes]:
        """Bytes [start, end) of an artifact; a stall longer than the timeout raises."""
        headers = {"Range": f"bytes={start}-{end - 1}"}
        try:
            with self._session.get(f"{self._base}{url_path}", headers=headers, stream=True,
                                   timeout=self._timeout) as response:
                if 400 <= response.status_code < 500:
                    raise UpdateFailed(f"the server refuses {url_path} (HTTP {response.status_code}): its release "
                                       "store lacks this signed artifact or holds a damaged copy; re-run the signer")
                if response.status_code != 206:
                    raise TransportError(f"expected 206 Partial Content for bytes {start}-{end - 1}, "
                                         f"got {response.status_code}")
                if not response.headers.get("Content-Range", "").startswith(f"bytes {start}-"):
                    raise TransportError(f"server answered range {response.headers.get('Content-Range')!r}")
                started, received = time.monotonic(), 0
                window_start, window_bytes = started, 0
                for chunk in response.iter_content(chunk_size=self._chunk):
                    received += len(chunk)
                    window_bytes += len(chunk)
                    if self._link_bytes_s:
                        time.sleep(max(0.0, received / self._link_bytes_s - (time.monotonic() - started)))
                    now = time.monotonic()
                    if now - window_start >= self._window:
                        if window_bytes < self._min_rate * (now - window_start):
                            raise TransportError(
                                f"transfer trickling at {window_bytes / (now - window_start):.0f} B/s, below the "
                                f"minimum {self._min_rate:.0f} B/s over {self._window:.0f} s")
                        window_start, window_bytes = now, 0
                    yield chunk
        except requests.RequestException as exc:
            stalled = "timed out" in str(exc)
            raise TransportError(f"download stalled: no data for {self._timeout:.0f} s" if stalled else
                                 f"download interrupted: {exc.__class__.__name__}") from None
