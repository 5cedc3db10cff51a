"""One virtual device's MQTT connection for one boot: aiomqtt on the simulator's event loop.

It behaves as the device's own link (device/mqttlink.py): its own identity (username = device
id, client id fota-<id>), a persistent session (clean_session False: the broker queues QoS 1
commands while the device is off), its last will `offline` on its retained status topic,
`online` once connected, commands taken only from its own command topic and the fleet's.
Reports leave in the order the device made them, each QoS 1 and awaited; one not
acknowledged when the connection drops is sent again after reconnecting.

Why aiomqtt: it is maintained, asyncio-native (no thread per client: paho's socket is
driven by the event loop's add_reader/add_writer) and wraps paho-mqtt, the MQTT
implementation the devices and the server already use, so sessions, wills and QoS behave
the same way. gmqtt was the alternative; it has its own protocol implementation and has
seen no release since 2023.

Handshakes are paced (`Gate`): at most a few dozen per simulator process between the TCP
connect and the `online` report, devices in a trial first. Unpaced, a reboot wave of thousands
started thousands of handshakes at once; each waited its turn on the one event loop, the
slowest past the 30 s CONNACK timeout, and every retry added to the wave (connect p99 97 s at
10,000 devices): queued in the gate instead, they take turns without timing out.

Power: `stop()` is a clean shutdown (a reboot: `offline` published, DISCONNECT sent);
`kill()` is a power cut: the socket is shut down without a DISCONNECT, so the broker
publishes the will at once, as it does when `docker kill` closes a device's socket.
"""
from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import json
import logging
import math
import random
import socket
import time

import aiomqtt
import paho.mqtt.client as mqtt

from ...protocol import FLEET_COMMANDS, Presence, device_topic

log = logging.getLogger("fotalab.fleetsim")
PUBLISH_TIMEOUT_S = 30.0
MAX_IN_FLIGHT = 20         # reports not yet acknowledged, as paho's default max_inflight_messages
MISC_EVERY_S = 10.0         # paho's housekeeping (keepalive pings) per client; keepalive is 60 s


class Gate:
    """At most `limit` handshakes at once; waiters by priority (lower first), then in order."""

    def __init__(self, limit: int) -> None:
        self._free = limit
        self._waiting: list[tuple[int, int, asyncio.Future]] = []
        self._order = itertools.count()

    @property
    def waiting(self) -> int:
        return sum(not future.done() for _, _, future in self._waiting)

    @contextlib.asynccontextmanager
    async def slot(self, priority: int):
        if self._free > 0 and not self._waiting:
            self._free -= 1
        else:
            future = asyncio.get_running_loop().create_future()
            heapq.heappush(self._waiting, (priority, next(self._order), future))
            try:
                await future
            except asyncio.CancelledError:
                if future.done() and not future.cancelled():   # handed the slot as it was cancelled
                    self._release()
                raise
        try:
            yield
        finally:
            self._release()

    def _release(self) -> None:
        while self._waiting:
            _, _, future = heapq.heappop(self._waiting)
            if not future.done():
                future.set_result(None)
                return
        self._free += 1


class Client(aiomqtt.Client):
    """aiomqtt's client with two changes that only matter at thousands of connections:

    - paho's housekeeping every MISC_EVERY_S (spread out) instead of every second: at 10,000
      clients the one-second timers alone kept the event loop busy. The broker allows 1.5
      keepalives of silence, so a ping up to 10 s late is on time.
    - aiomqtt registers a socket's reader and writer with the loop later (call_soon_threadsafe),
      by file descriptor number. When the socket is closed in between (a reboot, a power cut),
      the number may already belong to another device's new socket, and registering it would
      take over that socket's writer: its CONNECT or reports would never be sent (devices stuck
      in "rebooting" at 1,000). Here a registration is skipped unless the socket is still the
      client's own.
    - a client given up (`shut`) while paho's connect still ran in its executor thread would
      have connected afterwards as the device, unseen: its socket is shut down as it opens.
    - its waits run on asyncio.timeout, not asyncio.wait_for, which in Python 3.11 swallows a
      cancellation that comes as the awaited future completes: a device rebooting (or cut) as
      its CONNACK arrived carried on connecting with the session of a boot that was over.
    """

    abandoned = False

    async def _wait_for(self, fut, timeout: float | None):
        if timeout is None:
            timeout = self.timeout
        try:
            async with asyncio.timeout(None if timeout == math.inf else timeout):
                return await fut
        except TimeoutError:
            raise aiomqtt.MqttError("Operation timed out") from None

    async def _misc_loop(self) -> None:
        await asyncio.sleep(random.uniform(0, MISC_EVERY_S))
        while self._client.loop_misc() == mqtt.MQTT_ERR_SUCCESS:
            await asyncio.sleep(MISC_EVERY_S)

    def _failed(self, exc: Exception) -> None:
        if not self._disconnected.done():
            self._disconnected.set_exception(exc)

    def _on_socket_open(self, client: mqtt.Client, userdata, sock) -> None:
        fd = sock.fileno()

        def read() -> None:
            try:
                client.loop_read()
            except asyncio.CancelledError:      # aiomqtt's callbacks read a connect future that timed out
                pass
            except Exception as exc:           # a broken connection: aiomqtt's own handling
                self._failed(exc)

        def register() -> None:
            if client.socket() is sock:         # still open, so the number is still this socket's
                self._loop.add_reader(fd, read)
                self._misc_task = self._loop.create_task(self._misc_loop())
                if self.abandoned:              # paho reads the end of it and closes it
                    with contextlib.suppress(OSError):
                        sock.shutdown(socket.SHUT_RDWR)
        self._loop.call_soon_threadsafe(register)

    def _on_socket_register_write(self, client: mqtt.Client, userdata, sock) -> None:
        fd = sock.fileno()

        def write() -> None:
            try:
                client.loop_write()
            except Exception as exc:
                self._failed(exc)

        def register() -> None:
            if client.socket() is sock:
                self._loop.add_writer(fd, write)
        self._loop.call_soon_threadsafe(register)


class Session:
    def __init__(self, device_id: str, host: str, port: int, password: str, *, keepalive_s: int, gate: Gate,
                 priority: int = 0, on_error=lambda exc: None, on_sent=lambda seconds, waited: None,
                 on_connected=lambda seconds: None) -> None:
        self.device_id = device_id
        self._host, self._port, self._password, self._keepalive = host, port, password, keepalive_s
        self._gate, self._priority = gate, priority
        self._on_error, self._on_sent, self._on_connected = on_error, on_sent, on_connected
        self.commands: asyncio.Queue[dict] = asyncio.Queue()
        # (topic, payload, retain, time.time() when the device made the report)
        self.outbox: asyncio.Queue[tuple[str, str, bool, float]] = asyncio.Queue()
        self.connected = asyncio.Event()
        self._client: Client | None = None
        self._task: asyncio.Task | None = None
        self._unacked: list[tuple[str, str, bool, float]] = []   # handed to the client, no PUBACK yet
        self._acked = asyncio.Event()
        self._over = False               # stopped or killed: it never connects again

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name=f"mqtt-{self.device_id}")

    async def _run(self) -> None:
        status = device_topic(self.device_id, "status")
        delay = 1.0
        while not self._over:
            started = time.monotonic()
            client = Client(self._host, self._port, identifier=f"fota-{self.device_id}",
                            username=self.device_id, password=self._password,
                            will=aiomqtt.Will(status, Presence.OFFLINE, qos=1, retain=True),
                            clean_session=False, keepalive=self._keepalive, timeout=PUBLISH_TIMEOUT_S)
            self._client = client
            try:
                async with contextlib.AsyncExitStack() as stack:
                    async with self._gate.slot(self._priority):
                        await stack.enter_async_context(client)
                        await client.subscribe([(device_topic(self.device_id, "cmd"), 1), (FLEET_COMMANDS, 1)])
                        await client.publish(status, Presence.ONLINE, qos=1, retain=True)
                    self.connected.set()
                    self._on_connected(time.monotonic() - started)
                    delay = 1.0
                    await self._serve(client)
            except aiomqtt.MqttError as exc:
                self._on_error(exc)
                log.debug("%s: MQTT %s; reconnecting in %.0f s", self.device_id, exc, delay)
            except Exception as exc:      # aiomqtt hands a broken socket's own error on (OSError and others)
                self._on_error(exc)
                log.warning("%s: MQTT connection failed: %r; reconnecting in %.0f s", self.device_id, exc, delay)
            finally:
                self.connected.clear()
                self._client = None
                shut(client)              # a handshake that timed out leaves paho's socket open: close it
            await asyncio.sleep(delay)
            delay = min(delay * 2, 30.0)

    async def _serve(self, client: aiomqtt.Client) -> None:
        """Publish the outbox in order while taking commands; returns by raising MqttError.

        Reports are pipelined as paho does on a device (up to MAX_IN_FLIGHT not yet acknowledged,
        sent in order), not one round trip each. Those not acknowledged when the connection
        drops are sent again, first, on the next one (a duplicate is harmless: the server
        recognises a replay)."""
        loop = asyncio.get_running_loop()
        receiver = loop.create_task(self._receive(client))
        getter: asyncio.Future | None = None
        broken = loop.create_future()
        for item in list(self._unacked):
            self._send(loop, client, item, broken)
        try:
            while True:
                while len(self._unacked) >= MAX_IN_FLIGHT and not broken.done() and not receiver.done():
                    waiter = loop.create_task(self._acked.wait())
                    await asyncio.wait({receiver, broken, waiter}, return_when=asyncio.FIRST_COMPLETED)
                    waiter.cancel()
                    self._acked.clear()
                getter = loop.create_task(self.outbox.get())
                done, _ = await asyncio.wait({receiver, getter, broken}, return_when=asyncio.FIRST_COMPLETED)
                if getter not in done:
                    if receiver in done:
                        receiver.result()             # raises the connection's error
                    raise aiomqtt.MqttError("connection lost while publishing")
                item = getter.result()
                self._unacked.append(item)
                self._send(loop, client, item, broken)
        finally:
            receiver.cancel()
            if getter is not None and not getter.done():
                getter.cancel()

    def _send(self, loop, client: aiomqtt.Client, item: tuple[str, str, bool, float], broken: asyncio.Future) -> None:
        topic, payload, retain, made = item
        sending = time.time()

        async def publish() -> None:
            try:
                await client.publish(topic, payload, qos=1, retain=retain)
            except aiomqtt.MqttError:
                if not broken.done():
                    broken.set_result(None)
                return
            if item in self._unacked:
                self._unacked.remove(item)
            self._acked.set()
            self._on_sent(time.time() - made, sending - made)   # made -> PUBACK, of which queued here
        loop.create_task(publish())         # tasks start in creation order: paho sends in that order

    async def _receive(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            if message.retain:
                continue                              # commands are never retained
            try:
                command = json.loads(message.payload)
            except ValueError:
                continue
            if isinstance(command, dict):
                self.commands.put_nowait(command)

    async def drained(self, timeout_s: float) -> None:
        """Wait until every queued report has been acknowledged (or the time is up)."""
        deadline = asyncio.get_running_loop().time() + timeout_s
        while (self._unacked or not self.outbox.empty()) and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)

    async def stop(self, timeout_s: float = 10.0) -> None:
        """A reboot: report offline, let the queue drain, disconnect cleanly (no will)."""
        self.outbox.put_nowait((device_topic(self.device_id, "status"), Presence.OFFLINE, True, time.time()))
        await self.drained(timeout_s)
        self._over = True
        if self._task is not None:
            self._task.cancel()
            try:
                async with asyncio.timeout(timeout_s):
                    await asyncio.wait({self._task})
            except TimeoutError:              # no DISCONNECT acknowledged in time: drop the connection
                self.kill()

    def kill(self) -> None:
        """A power cut: the connection just dies, unsent reports with it; the broker sends the will."""
        self._over = True
        if self._client is not None:
            shut(self._client)
        if self._task is not None:
            self._task.cancel()


def shut(client: Client) -> None:
    """Shut the client's socket down without a DISCONNECT (the broker publishes the will); paho
    then closes it at its next read. Nothing happens to a socket already closed."""
    client.abandoned = True
    paho = getattr(client, "_client", None)         # aiomqtt's paho client: the one way to its socket
    sock = paho.socket() if paho is not None else None
    gone = getattr(client, "_disconnected", None)   # the error it will hold is expected: retrieve it
    if isinstance(gone, asyncio.Future):
        gone.add_done_callback(lambda f: f.cancelled() or f.exception())
    if isinstance(sock, socket.socket):
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
