"""A small release store in the signer's layout, written directly (milliseconds, no signing):
the server only indexes it and serves its bytes, so its unit tests need no real signer."""
from __future__ import annotations

import hashlib
import json
import random
import re
from dataclasses import dataclass, field
from pathlib import Path

import requests
from a2wsgi import ASGIMiddleware
from flask import Flask
from werkzeug.test import Client

from fotalab.server.app import create_app
from fotalab.server.config import ServerConfig
from fotalab.server.gateway import asgi_app
from fotalab.server.main import prepare

TOKEN = "test-token-0123456789"


@dataclass
class Store:
    root: Path
    data: dict[str, bytes] = field(default_factory=dict)        # sha256 -> bytes
    images: dict[tuple[str, str], str] = field(default_factory=dict)    # (hardware, version) -> sha256
    deltas: dict[tuple[str, str, str], str] = field(default_factory=dict)  # (hardware, base, target) -> sha256

    def put(self, data: bytes, kind: str, names: list[str], index: dict) -> str:
        sha = hashlib.sha256(data).hexdigest()
        (self.root / "artifacts" / sha).write_bytes(data)
        index["artifacts"][sha] = {"length": len(data), "kind": kind, "names": names}
        self.data[sha] = data
        return sha


def make_store(root: Path, image_size: int = 200_000) -> Store:
    """m4: 1.0.0, 2.0.0 (with a delta from 1.0.0), 3.0.0 (no delta); other-hw: 1.0.0."""
    rng = random.Random(5)
    store = Store(root)
    (root / "artifacts").mkdir(parents=True)
    index: dict = {"format": 1, "key_id": "testkey", "artifacts": {}, "releases": [], "factory": {}}
    plan = [("m4", "1.0.0", []), ("m4", "2.0.0", ["1.0.0"]), ("m4", "3.0.0", []), ("other-hw", "1.0.0", [])]
    for hardware, version, bases in plan:
        image = store.put(rng.randbytes(image_size + len(store.data) * 1000), "image",
                          [f"{hardware}-{version}.img", f"v{version[0]}.bin" if hardware == "m4" else
                           f"{hardware}-{version}.bin"], index)
        store.images[(hardware, version)] = image
        deltas = []
        for base in bases:
            sha = store.put(rng.randbytes(5000), "delta", [f"v{base[0]}_to_v{version[0]}.delta"], index)
            store.deltas[(hardware, base, version)] = sha
            deltas.append({"base_version": base, "base_sha256": store.images[(hardware, base)], "sha256": sha,
                           "encoding": "bsdiff", "length": 5000})
        manifest = f"manifests/{hardware}/{version}.json"
        (root / manifest).parent.mkdir(parents=True, exist_ok=True)
        (root / manifest).write_text(json.dumps({"signed": {"hardware": hardware, "version": version},
                                                 "signatures": []}))
        index["releases"].append({"hardware": hardware, "version": version, "security_counter": 1,
                                  "behaviour": "good", "source_sha256": "0" * 64, "image": image,
                                  "manifest": manifest, "deltas": deltas})
    (root / "index.json").write_text(json.dumps(index))
    return store


def make_app(tmp_path: Path, store: Store, **settings):
    """The Flask app over `store`, with a prepared data dir and the test token."""
    config = prepare(ServerConfig(releases_dir=store.root, data_dir=tmp_path / "data", api_token=TOKEN, **settings))
    return create_app(config)


class WholeResponseClient(Client):
    """Reads every response whole, as a real client does: a response left unread would leave
    its app call waiting in the bridge's event loop (a2wsgi's ASGIMiddleware) until exit."""

    def open(self, *args, **kwargs):
        return super().open(*args, **{"buffered": True, **kwargs})


def http_client(app: Flask) -> Client:
    """A test client of the whole server app as gunicorn serves it (gateway.asgi_app: the
    downloads, then Flask), minus the sockets."""
    return WholeResponseClient(ASGIMiddleware(asgi_app(app, threads=4)))


def metric_value(text: str, name: str, **labels: str) -> float:
    """One sample of a Prometheus text exposition (0 when absent, as an unobserved counter)."""
    wanted = sorted(f'{key}="{value}"' for key, value in labels.items())
    for line in text.splitlines():
        match = re.fullmatch(rf"{name}(?:\{{(.*)\}})? (\S+)", line)
        if match and sorted(filter(None, (match.group(1) or "").split(","))) == wanted:
            return float(match.group(2))
    return 0.0


def scraped_metric(server_url: str, name: str, **labels: str) -> float:
    """One sample of a running server's GET /metrics."""
    return metric_value(requests.get(f"{server_url}/metrics", timeout=5).text, name, **labels)
