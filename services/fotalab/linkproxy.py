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
    _server: socket.socket | None = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def start(self) -> "LinkProxy":
        self._rng = random.Random(self.seed)
        self._server = socket.create_server(("127.0.0.1", self.port))
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
