"""A device's radio link as a TCP proxy: paced to a bit rate, counting the bytes it carries,
and optionally dropping connections mid-transfer at random (a flaky NB-IoT or LTE-M link).

Pacing happens in the link, not in the device, so data in flight stays as small as on a real
slow link and the byte count is what crossed it.
"""
from __future__ import annotations

import random
import socket
import threading
import time
from dataclasses import dataclass, field

PIECE = 512


@dataclass
class LinkProxy:
    target: tuple[str, int]
    kbps: float = 0.0                  # 0: unlimited
    drop_probability: float = 0.0      # chance per piece sent downstream that the link drops
    seed: int = 0
    bytes_down: int = 0
    drops: int = 0
    port: int = 0
    bind: str = "127.0.0.1"
    _server: socket.socket | None = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def start(self) -> "LinkProxy":
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

    def _pump(self, source: socket.socket, sink: socket.socket, downstream: bool) -> None:
        rate = self.kbps * 1000 / 8
        try:
            while data := source.recv(PIECE if downstream else 65536):
                if downstream:
                    with self._lock:
                        drop = self._rng.random() < self.drop_probability
                    if drop:
                        with self._lock:
                            self.drops += 1
                        break
                sink.sendall(data)
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


def main(argv: list[str] | None = None) -> int:
    """`fota-linkproxy`: the lab's radio network between the devices and the server."""
    import argparse
    import os
    parser = argparse.ArgumentParser(prog="fota-linkproxy", description=__doc__)
    parser.add_argument("--port", type=int, default=int(os.environ.get("FOTA_LINK_PORT", "8000")))
    parser.add_argument("--target", default=os.environ.get("FOTA_LINK_TARGET", "server:8000"))
    parser.add_argument("--kbps", type=float, default=float(os.environ.get("FOTA_LINK_PROXY_KBPS", "0")))
    parser.add_argument("--drop", type=float, default=float(os.environ.get("FOTA_LINK_DROP", "0")),
                        help="probability that the link drops a connection at each 512-byte piece")
    parser.add_argument("--seed", type=int, default=int(os.environ.get("FOTA_LINK_SEED", "1")))
    args = parser.parse_args(argv)
    host, _, port = args.target.rpartition(":")
    proxy = LinkProxy((host, int(port)), kbps=args.kbps, drop_probability=args.drop, seed=args.seed,
                      port=args.port, bind="0.0.0.0").start()
    print(f"fota-linkproxy: :{proxy.port} -> {args.target}, {args.kbps or 'unlimited'} kbit/s, "
          f"drop {args.drop:.4f} per piece", flush=True)
    while True:
        time.sleep(30)
        print(f"fota-linkproxy: {proxy.bytes_down} bytes carried down, {proxy.drops} connections dropped", flush=True)


if __name__ == "__main__":
    raise SystemExit(main())
