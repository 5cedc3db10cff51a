"""HTTP transport to the update server: the signed manifest and ranged artifact downloads."""
from __future__ import annotations

from typing import Iterator

import requests

from .engine import TransportError


class HttpTransport:
    def __init__(self, base_url: str, *, timeout_s: float, chunk_size: int) -> None:
        self._base = base_url.rstrip("/")
        self._timeout = timeout_s
        self._chunk = chunk_size
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

    def open_range(self, url_path: str, start: int, end: int) -> Iterator[bytes]:
        """Bytes [start, end) of an artifact; a stall longer than the timeout raises."""
        headers = {"Range": f"bytes={start}-{end - 1}"}
        try:
            with self._session.get(f"{self._base}{url_path}", headers=headers, stream=True,
                                   timeout=self._timeout) as response:
                if response.status_code != 206:
                    raise TransportError(f"expected 206 Partial Content for bytes {start}-{end - 1}, "
                                         f"got {response.status_code}")
                if not response.headers.get("Content-Range", "").startswith(f"bytes {start}-"):
                    raise TransportError(f"server answered range {response.headers.get('Content-Range')!r}")
                yield from response.iter_content(chunk_size=self._chunk)
        except requests.RequestException as exc:
            raise TransportError(f"download interrupted: {exc.__class__.__name__}") from None
