"""Watch the fleet's retained state over MQTT and send commands: used by the trigger script,
the tests and the crash sweep alike, so they all see the lab as an operator would."""
from __future__ import annotations

import json
import ssl
import threading
import time
from collections.abc import Callable

import paho.mqtt.client as mqtt

from ..protocol import FLEET_COMMANDS, PREFIX, device_topic
from ..tlsfiles import TlsFiles


class FleetWatcher:
    """Keeps the newest state, status and the event list of every device it hears of."""

    def __init__(self, host: str, port: int, *, client_id: str = "", username: str = "", password: str = "",
                 tls: TlsFiles | None = None) -> None:
        """With `tls`, over TLS: the broker verified against tls.ca, our identity its certificate's."""
        self.states: dict[str, dict] = {}
        self.status: dict[str, str] = {}
        self.events: dict[str, list[dict]] = {}
        self._changed = threading.Condition()
        self._client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id)
        if username:
            self._client.username_pw_set(username, password)
        self._connack: threading.Event = threading.Event()
        self._refusal = ""
        self._client.on_connect = self._connected
        self._client.on_message = self._message
        self._client.on_disconnect = self._closed
        who = username or (f"the certificate {tls.cert}" if tls and tls.cert else "an anonymous client")
        if tls:
            self._client.tls_set_context(tls.client_context())
        try:
            self._client.connect(host, port, keepalive=15)
        except ssl.SSLError as exc:
            raise ConnectionRefusedError(f"MQTT broker at {host}:{port} refused {who} in the TLS handshake ({exc}); "
                                         f"check that {tls.ca if tls else 'the CA'} is the lab CA and the certificate "
                                         "is the lab's, current and not revoked (re-provision it)") from None
        self._client.loop_start()
        if not self._connack.wait(10) or self._refusal:
            self.close()
            raise ConnectionRefusedError(f"MQTT broker at {host}:{port} refused {who}: "
                                         f"{self._refusal or 'no answer'}; check the username and password")

    def _connected(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            self._refusal = str(reason_code)
        else:
            client.subscribe(f"{PREFIX}/devices/+/+", qos=1)
        self._connack.set()

    def _closed(self, client, userdata, flags, reason_code, properties) -> None:
        """Closed before the broker's answer: with TLS 1.3 a refused certificate ends up here."""
        if not self._connack.is_set():
            self._refusal = f"connection closed before the broker answered ({reason_code})"
            self._connack.set()

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    def __enter__(self) -> FleetWatcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _message(self, client, userdata, message: mqtt.MQTTMessage) -> None:
        parts = message.topic.split("/")
        device, kind = parts[-2], parts[-1]
        with self._changed:
            if kind == "status":
                self.status[device] = message.payload.decode()
            elif kind == "state":
                # A SIGKILLed broker hands out the retained state of its last autosave again:
                # by the device's clock, an older state never replaces a newer one.
                state = json.loads(message.payload)
                if state.get("ts", 0) >= self.states.get(device, {}).get("ts", 0):
                    self.states[device] = state
            elif kind == "events":
                self.events.setdefault(device, []).append(json.loads(message.payload))
            self._changed.notify_all()

    def wait_for(self, predicate: Callable[[FleetWatcher], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        with self._changed:
            while not predicate(self):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    newest = dict(sorted(self.states.items(), key=lambda kv: -kv[1].get("ts", 0)))
                    raise TimeoutError(f"waited {timeout:.0f} s for {what}; last states, newest first: "
                                       f"{json.dumps(newest, indent=1)[:3000]}")
                self._changed.wait(min(remaining, 1.0))

    def command(self, devices: list[str] | None, command: dict) -> None:
        """Publish a command (QoS 1, never retained) to some devices or, with None, to all."""
        payload = json.dumps(command)
        topics = [FLEET_COMMANDS] if devices is None else [device_topic(d, "cmd") for d in devices]
        for topic in topics:
            self._client.publish(topic, payload, qos=1, retain=False).wait_for_publish(10)
