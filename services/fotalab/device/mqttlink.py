"""The device's MQTT link: reports state and events, receives commands (hints only).

paho-mqtt with callback API v2. A persistent session (clean_session False) lets the broker
queue QoS 1 commands while the device is off; paho reconnects by itself and the
subscriptions are renewed in on_connect, so a broker restart is survived. With `tls` it speaks
MQTT over TLS: the broker is verified against the lab CA and the device is the identity of its
certificate (the broker forces the client id to it, so the session is the device's own); a
reprovisioned certificate is picked up at the next reconnect.
"""
from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable

import paho.mqtt.client as mqtt

from ..protocol import FLEET_COMMANDS, Presence, ReportClock, device_topic
from ..tlsfiles import ReloadingIdentity, TlsFiles

log = logging.getLogger("fotalab.device.mqttlink")


class MqttLink:
    def __init__(self, device_id: str, host: str, port: int, *, on_command: Callable[[dict], None],
                 describe: Callable[[], dict], username: str = "", password: str = "",
                 tls: TlsFiles | None = None) -> None:
        self.device_id, self._describe, self._on_command = device_id, describe, on_command
        self._host, self._port = host, port
        self._clock = ReportClock()
        self.connected = threading.Event()
        self._client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"fota-{device_id}",
                                   clean_session=False)
        self._identity = ReloadingIdentity(tls) if tls is not None else None
        if self._identity is not None:
            self._client.tls_set_context(self._identity.context)
        elif username:
            self._client.username_pw_set(username, password)
        self._client.will_set(device_topic(device_id, "status"), Presence.OFFLINE, qos=1, retain=True)
        self._client.reconnect_delay_set(min_delay=1, max_delay=10)
        self._client.on_connect = self._connected
        self._client.on_disconnect = self._disconnected
        self._client.on_connect_fail = lambda client, userdata: self._refresh_identity()
        self._client.on_message = self._message

    def start(self) -> None:
        self._client.connect_async(self._host, self._port, keepalive=15)
        self._client.loop_start()

    def stop(self) -> None:
        self._client.publish(device_topic(self.device_id, "status"), Presence.OFFLINE, qos=1, retain=True)
        self._client.disconnect()
        self._client.loop_stop()

    def _connected(self, client: mqtt.Client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            log.warning("broker refused connection: %s", reason_code)
            return
        client.subscribe([(device_topic(self.device_id, "cmd"), 1), (FLEET_COMMANDS, 1)])
        client.publish(device_topic(self.device_id, "status"), Presence.ONLINE, qos=1, retain=True)
        self.connected.set()

    def _disconnected(self, *args) -> None:
        self.connected.clear()
        self._refresh_identity()

    def _refresh_identity(self) -> None:
        if self._identity is not None and self._identity.refresh():
            log.info("certificate files changed: the next connection presents the new certificate")

    def _message(self, client: mqtt.Client, userdata, message: mqtt.MQTTMessage) -> None:
        if message.retain:
            log.warning("ignoring retained command on %s: commands are never retained", message.topic)
            return
        try:
            command = json.loads(message.payload)
            if not isinstance(command, dict):
                raise ValueError("not an object")
        except ValueError:
            log.warning("ignoring malformed command on %s", message.topic)
            return
        self._on_command(command)

    def _publish(self, kind: str, payload: dict, retain: bool) -> None:
        body = {"device": self.device_id, "ts": self._clock(), **self._describe(), **payload}
        self._client.publish(device_topic(self.device_id, kind), json.dumps(body), qos=1, retain=retain)

    def state(self, state: str, **fields: object) -> None:
        log.info("state %s %s", state, fields or "")
        self._publish("state", {"state": state, **fields}, retain=True)

    def event(self, kind: str, **fields: object) -> None:
        log.info("event %s %s", kind, fields or "")
        self._publish("events", {"event": kind, **fields}, retain=False)
