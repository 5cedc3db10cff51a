"""A device's radio link as a TCP proxy: paced to a bit rate, counting the bytes it carries,
and optionally dropping connections mid-transfer at random (a flaky NB-IoT or LTE-M link).

Pacing happens in the link, not in the device, so data in flight stays as small as on a real
slow link and the byte count is what crossed it.

For the attack labs it can also play a man-in-the-middle on the (plain HTTP) link: flip bytes
in the bodies of artifact downloads (`corrupt_probability`), or tell the server that the device
runs an older version than it does (`spoof_version`), so the honest server hands out an older
signed release. Either way the device's own checks against the signed manifest must refuse.

Over TLS (the lab's default, docs/labs/05-attacks.md) the link relays the encrypted stream as
TCP: pacing and drops work as before, the version spoof cannot read or rewrite the request (it
passes it unchanged), and a flipped byte lands in a TLS record (`TlsRecords`), whose integrity
check fails at the device: a TLS error, and the engine retries the transfer.
"""
from __future__ import annotations

import argparse
import random
import socket
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, urlencode

from ..envconfig import ConfigError, Env

PIECE = 512
TLS_HANDSHAKE, TLS_APPLICATION_DATA = 0x16, 0x17     # TLS record content types
ARTIFACT_TYPE = b"application/octet-stream"     # what the server sends artifacts as
MANIFEST_PATH = b"/api/v1/manifest"


def spoof_manifest_request(data: bytes, version: str) -> bytes:
    """`data` with a device's manifest request (`GET /api/v1/manifest?...`) claiming to run
    `version` and dropping the running image's hash; anything else unchanged."""
    if data[:1] == bytes([TLS_HANDSHAKE]) or data[:1] == bytes([TLS_APPLICATION_DATA]):
        return data                     # TLS: the request cannot be read, let alone rewritten
    line, newline, rest = data.partition(b"\r\n")
    parts = line.split(b" ")
    if len(parts) != 3 or parts[0] != b"GET" or not parts[1].startswith(MANIFEST_PATH + b"?"):
        return data
    query = parse_qsl(parts[1][len(MANIFEST_PATH) + 1:].decode("ascii", "replace"))
    forged = [(key, version if key == "version" else value) for key, value in query if key != "image"]
    target = MANIFEST_PATH + b"?" + urlencode(forged).encode()
    return b" ".join((parts[0], target, parts[2])) + newline + rest


@dataclass
class ArtifactBodies:
    """Finds the artifact response bodies (application/octet-stream) in one connection's
    downstream bytes and passes each of their pieces through `tamper`; status lines, headers
    and other bodies pass unchanged, so the device still receives well-formed responses of the
    right length. A response without Content-Length ends the parsing: the rest of that
    connection passes unchanged."""
    tamper: Callable[[bytes], bytes]
    _head: bytes = b""
    _body_left: int = 0
    _artifact: bool = False
    _blind: bool = False

    def feed(self, data: bytes) -> bytes:
        out = bytearray()
        while data and not self._blind:
            if self._body_left:
                piece, data = data[:self._body_left], data[self._body_left:]
                self._body_left -= len(piece)
                out += self.tamper(piece) if self._artifact else piece
                continue
            self._head += data
            end = self._head.find(b"\r\n\r\n")
            if end < 0:
                return bytes(out)         # the rest of the head is still on its way
            head, data, self._head = self._head[:end + 4], self._head[end + 4:], b""
            out += head
            self._read_head(head)
        return bytes(out + data)

    def _read_head(self, head: bytes) -> None:
        pairs = (line.split(b":", 1) for line in head.split(b"\r\n")[1:] if b":" in line)
        fields = {name.strip().lower(): value.strip() for name, value in pairs}
        if b"content-length" not in fields:
            self._blind = True
            return
        self._body_left = int(fields[b"content-length"])
        self._artifact = fields.get(b"content-type", b"").lower().startswith(ARTIFACT_TYPE)


@dataclass
class TlsRecords:
    """Finds the application-data records in one direction of a TLS stream and passes their
    payload pieces through `tamper`; record headers and the handshake pass unchanged, so the
    connection is established and then fails its integrity check."""
    tamper: Callable[[bytes], bytes]
    _header: bytes = b""
    _left: int = 0
    _application: bool = False

    def feed(self, data: bytes) -> bytes:
        out = bytearray()
        while data:
            if self._left:
                piece, data = data[:self._left], data[self._left:]
                self._left -= len(piece)
                out += self.tamper(piece) if self._application else piece
                continue
            need = 5 - len(self._header)
            self._header += data[:need]
            out += data[:need]
            data = data[need:]
            if len(self._header) == 5:
                self._application = self._header[0] == TLS_APPLICATION_DATA
                self._left = int.from_bytes(self._header[3:5], "big")
                self._header = b""
        return bytes(out)


class Downstream:
    """The man-in-the-middle on a server-to-device stream: TLS records or plain HTTP bodies,
    decided by the first byte (a TLS stream starts with a handshake record)."""

    def __init__(self, tamper: Callable[[bytes], bytes]) -> None:
        self._tamper, self._feed = tamper, None

    def feed(self, data: bytes) -> bytes:
        if self._feed is None and data:
            tls = data[0] == TLS_HANDSHAKE
            self._feed = (TlsRecords if tls else ArtifactBodies)(self._tamper).feed
        return self._feed(data) if self._feed else data


@dataclass
class LinkProxy:
    target: tuple[str, int]
    kbps: float = 0.0                  # 0: unlimited
    drop_probability: float = 0.0      # chance per piece sent downstream that the link drops
    corrupt_probability: float = 0.0   # chance per piece of an artifact body that one byte is flipped
    spoof_version: str = ""            # claim this running version in the devices' manifest requests
    seed: int = 0
    bytes_down: int = 0
    drops: int = 0
    flipped: int = 0
    port: int = 0
    bind: str = "127.0.0.1"
    _server: socket.socket | None = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def start(self) -> LinkProxy:
        self._rng = random.Random(self.seed)
        self._server = socket.create_server((self.bind, self.port))
        self.port = self._server.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server:
            self._server.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=10)
                upstream.settimeout(None)
            except OSError:
                client.close()
                continue
            threading.Thread(target=self._pump, args=(client, upstream, False), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, True), daemon=True).start()

    def _tamper(self, downstream: bool) -> Callable[[bytes], bytes] | None:
        """What the man-in-the-middle does to one direction of a new connection (None: nothing)."""
        if downstream and self.corrupt_probability:
            return Downstream(self._flip_a_byte).feed
        if not downstream and self.spoof_version:
            return lambda data: spoof_manifest_request(data, self.spoof_version)
        return None

    def _flip_a_byte(self, piece: bytes) -> bytes:
        with self._lock:
            if not piece or self._rng.random() >= self.corrupt_probability:
                return piece
            at = self._rng.randrange(len(piece))
            self.flipped += 1
        return piece[:at] + bytes([piece[at] ^ 0xFF]) + piece[at + 1:]

    def _pump(self, source: socket.socket, sink: socket.socket, downstream: bool) -> None:
        rate = self.kbps * 1000 / 8
        tamper = self._tamper(downstream)
        try:
            while data := source.recv(PIECE if downstream else 65536):
                if downstream:
                    with self._lock:
                        drop = self._rng.random() < self.drop_probability
                    if drop:
                        with self._lock:
                            self.drops += 1
                        break
                sink.sendall(tamper(data) if tamper else data)
                if downstream:
                    with self._lock:
                        self.bytes_down += len(data)
                    if rate:
                        time.sleep(len(data) / rate)
        except OSError:
            pass
        finally:
            for end in (source, sink):
                try:
                    end.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                end.close()


@dataclass(frozen=True)
class LinkConfig:
    """The link proxy's settings (compose's `link` service); its flags default to these."""
    port: int = 8000
    target: str = "server:8000"
    kbps: float = 0.0
    drop: float = 0.0
    corrupt: float = 0.0
    spoof_version: str = ""
    seed: int = 1

    @classmethod
    def from_env(cls, env: Env | None = None) -> LinkConfig:
        env = env or Env()
        d = cls()
        return cls(port=env.integer("FOTA_LINK_PORT", d.port, minimum=1, maximum=65535),
                   target=env.text("FOTA_LINK_TARGET", d.target),
                   kbps=env.number("FOTA_LINK_PROXY_KBPS", d.kbps, minimum=0),
                   drop=env.number("FOTA_LINK_DROP", d.drop, minimum=0, maximum=1),
                   corrupt=env.number("FOTA_LINK_CORRUPT", d.corrupt, minimum=0, maximum=1),
                   spoof_version=env.text("FOTA_LINK_SPOOF_VERSION", d.spoof_version),
                   seed=env.integer("FOTA_LINK_SEED", d.seed))


def main(argv: list[str] | None = None) -> int:
    """`fota-linkproxy`: the lab's radio network between the devices and the server."""
    try:
        config = LinkConfig.from_env()
    except ConfigError as exc:
        print(f"fota-linkproxy: {exc}", file=sys.stderr)
        return 2
    parser = argparse.ArgumentParser(prog="fota-linkproxy", description=__doc__)
    parser.add_argument("--port", type=int, default=config.port)
    parser.add_argument("--target", default=config.target)
    parser.add_argument("--kbps", type=float, default=config.kbps)
    parser.add_argument("--drop", type=float, default=config.drop,
                        help="probability that the link drops a connection at each 512-byte piece")
    parser.add_argument("--corrupt", type=float, default=config.corrupt,
                        help="attack: probability that a byte is flipped in each piece of an artifact download")
    parser.add_argument("--spoof-version", default=config.spoof_version,
                        help="attack: tell the server the devices run this version (e.g. 1.0.0)")
    parser.add_argument("--seed", type=int, default=config.seed)
    args = parser.parse_args(argv)
    host, _, port = args.target.rpartition(":")
    proxy = LinkProxy((host, int(port)), kbps=args.kbps, drop_probability=args.drop,
                      corrupt_probability=args.corrupt, spoof_version=args.spoof_version, seed=args.seed,
                      port=args.port, bind="0.0.0.0").start()
    attacks = "".join([f", flips a byte per artifact piece with probability {args.corrupt:g}" if args.corrupt else "",
                       f", claims devices run {args.spoof_version}" if args.spoof_version else ""])
    print(f"fota-linkproxy: :{proxy.port} -> {args.target}, {args.kbps or 'unlimited'} kbit/s, "
          f"drop {args.drop:.4f} per piece{attacks}", flush=True)
    while True:
        time.sleep(30)
        print(f"fota-linkproxy: {proxy.bytes_down} bytes carried down, {proxy.drops} connections dropped, "
              f"{proxy.flipped} bytes flipped", flush=True)


if __name__ == "__main__":
    raise SystemExit(main())
