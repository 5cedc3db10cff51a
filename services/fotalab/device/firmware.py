"""The simulated firmware: what runs once the bootloader has verified and chosen a slot.

Its behaviour comes from the signed image header (good, crash at boot, hang, failing
self-test, crash after N seconds), so bad releases are real and rollback is demonstrable.
A good firmware joins the broker, confirms a trial boot after its health check, and serves
update commands through the update engine.
"""
from __future__ import annotations

import logging
import os
import queue
import threading
import time
from dataclasses import asdict

from ..formats.image import Behaviour
from ..formats.signing import Verifier
from ..protocol import Command, Event, State
from .bootctl import BootControl
from .bootloader import BootPlan
from .config import DeviceConfig
from .engine import IDLE, EngineConfig, UpdateEngine
from .errors import Reboot
from .flash import Flash
from .mqttlink import MqttLink
from .patcher import sandboxed_patcher

log = logging.getLogger("fotalab.device")
CRASH_EXIT = 1
REBOOT_EXIT = 3
# A new MQTT session has no subscription until the broker has the device's SUBSCRIBE, and paho
# may send a publish between CONNECT and CONNACK, before it: a hint answering that first report
# would be dropped. So the boot is reported once connected (or after this long without a broker).
FIRST_REPORT_WAIT_S = 5.0


class LazyTransport:
    """The HTTP transport, made on first use: requests (about 5 MiB per device) is imported when an
    update or a trial needs the server, not by every idle firmware at boot."""

    def __init__(self, config: DeviceConfig) -> None:
        self._config, self._transport = config, None

    def __getattr__(self, name: str):
        if self._transport is None:
            from .transport import HttpTransport
            config = self._config
            self._transport = HttpTransport(
                config.server_url, timeout_s=config.http_timeout_s, chunk_size=config.chunk_size,
                radio_kbps=config.radio_kbps, min_rate_bps=config.min_rate_bps,
                rate_window_s=config.rate_window_s, tls=config.tls)
        return getattr(self._transport, name)


def kick_watchdog_forever(fd: int) -> None:
    while True:
        try:
            os.write(fd, b".")
        except OSError:
            return
        time.sleep(1.0)


def health_check(config: DeviceConfig, behaviour: Behaviour, link: MqttLink) -> str | None:
    """None when the trial image may be committed, else why not."""
    if behaviour is Behaviour.SELFTEST_FAIL:
        return "self-test failed (firmware reports a faulty peripheral)"
    deadline = time.monotonic() + config.health_timeout_s
    if not link.connected.wait(config.health_timeout_s):
        return f"could not reach the MQTT broker within {config.health_timeout_s:.0f} s"
    # imported here, not at boot: see LazyTransport
    import requests
    while True:
        try:
            tls = config.tls
            if requests.get(f"{config.server_url}/healthz", timeout=5, verify=str(tls.ca) if tls else True,
                            cert=tls.requests_cert if tls else None).ok:
                break
        except requests.RequestException:
            pass
        if time.monotonic() > deadline:
            return f"could not reach the update server within {config.health_timeout_s:.0f} s"
        time.sleep(1)
    soak_end = time.monotonic() + config.trial_soak_s
    while time.monotonic() < soak_end:   # a firmware that crashes early dies here, unconfirmed
        time.sleep(0.2)
    return None


def run(config: DeviceConfig, flash: Flash, plan: BootPlan, verifier: Verifier) -> int:
    """Run the firmware in the booted slot; returns the exit code for the supervisor."""
    running = plan.boot
    header = running.header
    log.info("firmware %s (%s) running from slot %s", header.version, header.behaviour.label, running.slot)
    if header.behaviour is Behaviour.CRASH_AT_BOOT:
        log.error("firmware %s crashed at boot", header.version)
        return CRASH_EXIT
    if header.behaviour is Behaviour.HANG:
        log.error("firmware %s hangs: no watchdog kicks from here on", header.version)
        threading.Event().wait()
    watchdog = config.watchdog_fd
    if watchdog is not None:
        threading.Thread(target=kick_watchdog_forever, args=(watchdog,), daemon=True).start()
    if header.behaviour is Behaviour.CRASH_AFTER:
        threading.Timer(header.behaviour_arg, lambda: os._exit(CRASH_EXIT)).start()

    bootctl = BootControl(flash)
    commands: queue.Queue[dict] = queue.Queue()

    def describe() -> dict:
        state = bootctl.load()
        fields = {"version": header.version, "slot": running.slot, "image_sha256": running.sha256,
                  "hardware": config.hardware, "group": config.group, "verified": True,
                  "confirmed": bool(state and state.confirmed),
                  "security_counter": state.security_counter if state else None}
        if state and state.rollback:
            fields["last_rollback"] = asdict(state.rollback)
        return fields

    link = MqttLink(config.device_id, config.mqtt_host, config.mqtt_port, on_command=commands.put,
                    describe=describe, username=config.mqtt_username, password=config.mqtt_password,
                    tls=config.tls)
    link.start()
    link.connected.wait(FIRST_REPORT_WAIT_S)
    engine = UpdateEngine(
        EngineConfig(config.device_id, config.hardware, chunk_size=config.chunk_size),
        flash, running, verifier,
        LazyTransport(config),
        link, sandboxed_patcher(memory_mb=config.patch_memory_mb, timeout_s=config.patch_timeout_s,
                                chunk_size=config.chunk_size))
    try:
        link.event(Event.BOOTED, reset_reason=config.reset_reason, boot=plan.message)
        outcome = engine.resume()
        if outcome == State.TRIAL:
            link.state(State.TRIAL)
            problem = health_check(config, header.behaviour, link)
            if problem:
                engine.reject_trial(problem)
            link.state(State.CONFIRMING)
            engine.confirm()
        elif outcome in (IDLE, State.FAILED):
            link.state(State.RUNNING)
        while True:
            command = commands.get()
            action = command.get("cmd")
            if action in (Command.UPDATE, Command.CHECK):
                engine.check()
            elif action == Command.REPORT:
                link.state(State.RUNNING)
            else:
                log.warning("ignoring unknown command %r", action)
    except Reboot as reason:
        log.info("rebooting: %s", reason)
        if watchdog is not None:   # like a reset-reason register: survives the reboot, not a power cut
            os.write(watchdog, f"\nreason:{reason}\n".encode())
        link.stop()
        return REBOOT_EXIT
