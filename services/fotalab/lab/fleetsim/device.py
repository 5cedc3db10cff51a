"""One virtual device: the lab device's supervisor, bootloader and firmware as a coroutine.

Each boot does what `fota-device run` does in two processes: the real bootloader step
(`device.bootloader.boot`: count a trial attempt, revert after the limit, verify the slot),
then the firmware its signed header describes (a crash at boot, a hang, a failing
self-test), then the real `UpdateEngine`: resume the journal, trial and commit, update
hints. The engine's blocking work (flash, verification, HTTP) runs in the fleet's bounded
thread pool, by priority: the boot and trial of a device reset mid-update first (its health
window runs), then commands, then the fleet's first power-on; MQTT is the device's own asyncio
session. Each device says what it is doing (`phase`, since when): the fleet's status counts
the phases and names the devices that stayed longest in one, which is how a device that hangs
is found.

A power cut drops everything volatile: the boot's task and MQTT connection, the engine and
the flash object with its unsynced writes; the engine thread, if one is working for the
device, dies at its next flash operation, chunk or report. The flash directory is kept,
and the next power-on boots from it with reset reason power-on, as after `docker kill`.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import random
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from ...device.bootloader import BootPlan, boot
from ...device.engine import IDLE, EngineConfig, UpdateEngine
from ...device.errors import Reboot
from ...device.firmware import CRASH_EXIT, FIRST_REPORT_WAIT_S
from ...formats.image import Behaviour
from ...protocol import Command, Event, ResetReason, State
from .parts import Power, PowerCut, Priority, SimFlash, SimReporter, SimTransport, thread_safe_sender
from .session import Session

if TYPE_CHECKING:
    from .fleet import Fleet

log = logging.getLogger("fotalab.fleetsim")
# An update from its start to its commit is about 40 flash operations on the lab's images
# (journal, download, install, boot record, trial boots): an armed cut fires at one of them.
CUT_SPAN_OPS = 40


async def waited(event: asyncio.Event, seconds: float) -> bool:
    """Whether the event was set within `seconds`. Not asyncio.wait_for, which in Python 3.11
    swallows a cancellation (a power cut) that comes as the event is set."""
    try:
        async with asyncio.timeout(seconds):
            await event.wait()
    except TimeoutError:
        return False
    return True


class VirtualDevice:
    def __init__(self, fleet: Fleet, index: int, password: str) -> None:
        config = fleet.config
        self.fleet, self.config = fleet, config
        self.device_id = config.device_id(index)
        self.password = password
        self.root = config.flash_dir / self.device_id
        self.rng = random.Random(f"{config.seed}/{self.device_id}")
        self.cut_planned = self.rng.random() < config.cut_share   # one cut in the middle of an update
        self.countdown: int | None = None                          # flash operations until that cut
        self.power = Power()
        self.state = ""                  # the last state it reported
        self.version = ""                # the version it runs
        self.cuts: list[str] = []        # the state it was in at each power cut
        self.phase = "off"               # what it is doing now (status: phases, longest)
        self.phase_since = time.monotonic()
        self.priority = Priority.FIRST_BOOT   # of its engine work and MQTT handshake now
        self._boot_task: asyncio.Task | None = None
        self._work: concurrent.futures.Future | None = None
        self._session: Session | None = None

    def enter(self, phase: str) -> None:
        self.phase, self.phase_since = phase, time.monotonic()

    @property
    def online(self) -> bool:
        """Connected to the broker now (as its retained status says)."""
        return self._session is not None and self._session.connected.is_set()

    # -- the power supply
    async def live(self) -> None:
        """Power on, run, reset; forever."""
        reason: str = ResetReason.POWER_ON
        while True:
            self.enter("waiting for its last engine work")
            await self._wait_for_engine()            # the previous power-on's thread is dead first
            self.power = Power(self._armed_cut)
            self._boot_task = asyncio.get_running_loop().create_task(self._boot(reason))
            await asyncio.wait({self._boot_task})
            self.priority = Priority.TRIAL                # every later boot is one mid-update, maybe a trial
            if self._boot_task.cancelled():          # power cut
                reason = ResetReason.POWER_ON
                self.enter("off")
                await asyncio.sleep(self.rng.uniform(0, self.config.off_s))
                continue
            try:
                reason = self._boot_task.result()
            except PowerCut:                          # the armed cut fired in an engine thread
                self._cut_now()
                reason = ResetReason.POWER_ON
                self.enter("off")
                await asyncio.sleep(self.rng.uniform(0, self.config.off_s))
                continue
            except Exception as exc:                  # a bug in the simulator or the engine: counted, logged
                self.fleet.error(self, exc)
                self.power.off()                      # as a crashed firmware process: volatile state gone
                if self._session is not None:
                    self._session.kill()
                    self._session = None
                reason = f"{ResetReason.CRASH} (exit {CRASH_EXIT})"
            if not reason.startswith(ResetReason.SOFTWARE_REBOOT):
                self.enter("in reset")
                await asyncio.sleep(self.config.reset_delay_s)

    def power_cut(self) -> bool:
        """Cut the power now (from the event loop); False if it is off already."""
        if not self.power.on or self._boot_task is None or self._boot_task.done():
            return False
        self._cut_now()
        self._boot_task.cancel()
        return True

    def _cut_now(self) -> None:
        self.power.off()
        self.cuts.append(self.state or "off")
        self.fleet.cut(self)
        if self._session is not None:
            self._session.kill()
            self._session = None

    def _armed_cut(self) -> bool:
        """Called before each flash operation (engine thread): True when the armed cut fires."""
        if self.countdown is None:
            return False
        self.countdown -= 1
        if self.countdown > 0:
            return False
        self.countdown = None
        return True

    def arm_cut(self) -> None:
        if self.cut_planned and not self.cuts:
            self.cut_planned = False
            self.countdown = self.rng.randint(1, CUT_SPAN_OPS)

    async def _wait_for_engine(self) -> None:
        if self._work is not None and not self._work.done():
            await asyncio.wait({asyncio.wrap_future(self._work)})

    async def run(self, fn: Callable, *args, **kwargs):
        """Engine work in the fleet's thread pool at the device's priority, on this power-on's rail."""
        power = self.power

        def guarded():
            power.check()
            return fn(*args, **kwargs)
        self._work = self.fleet.pool.submit(self.priority, guarded)
        return await asyncio.wrap_future(self._work)

    # -- one boot: the bootloader step, then the firmware; returns the next reset reason
    async def _boot(self, reason: str) -> str:
        config = self.config
        flash = SimFlash(self.root, self.power, writeback=config.flash_writeback)
        self.enter("booting")
        plan, verifier = await self.run(boot, flash, factory_image=self.fleet.factory_image,
                                        trust_anchor=self.fleet.trust_anchor, limit=config.boot_limit,
                                        reset_reason=reason, power_cut_limit=config.power_cut_limit)
        self.fleet.booted(self)
        if plan.boot is None:
            self.fleet.note_bricked(self, plan.message)
            self.enter("bricked")
            await asyncio.Event().wait()                 # halted until the power is cut
        self.version = plan.boot.version
        behaviour = plan.boot.header.behaviour
        if behaviour is Behaviour.CRASH_AT_BOOT:
            return f"{ResetReason.CRASH} (exit {CRASH_EXIT})"
        if behaviour is Behaviour.HANG:
            self.enter("hanging")
            await asyncio.sleep(config.watchdog_s)
            return f"{ResetReason.WATCHDOG}: no kick for {config.watchdog_s:.0f} s"
        session = self._session = Session(self.device_id, self.fleet.broker_host, config.mqtt_port, self.password,
                                          keepalive_s=config.keepalive_s, gate=self.fleet.connect_gate,
                                          priority=self.priority, on_error=self.fleet.mqtt_error,
                                          on_sent=self.fleet.sent, on_connected=self.fleet.connect_latency.add)
        session.start()
        firmware = self._firmware(flash, plan, verifier, reason, session)
        if behaviour is not Behaviour.CRASH_AFTER:
            return await firmware
        try:
            async with asyncio.timeout(plan.boot.header.behaviour_arg):
                return await firmware
        except TimeoutError:
            self.power.off()                              # the process died: its thread and unsynced writes too
            session.kill()
            return f"{ResetReason.CRASH} (exit {CRASH_EXIT})"

    async def _firmware(self, flash: SimFlash, plan: BootPlan, verifier, reason: str, session: Session) -> str:
        config, running = self.config, plan.boot
        reporter = SimReporter(self.device_id, config.hardware, config.group, flash, running, self.power,
                               thread_safe_sender(asyncio.get_running_loop(), session.outbox), self._observe)
        engine = UpdateEngine(EngineConfig(self.device_id, config.hardware, chunk_size=config.chunk_size),
                              flash, running, verifier, SimTransport(self.fleet.http, self.power), reporter,
                              self.fleet.patcher, sleep=self.power.sleep)
        self.enter("connecting")
        await waited(session.connected, FIRST_REPORT_WAIT_S)
        try:
            self.enter("resuming")
            await self.run(reporter.event, Event.BOOTED, reset_reason=reason, boot=plan.message)
            outcome = await self.run(engine.resume)
            if outcome == State.TRIAL:
                await self.run(reporter.state, State.TRIAL)
                self.enter("trial health check")
                problem = await self._health_check(running.header.behaviour, session)
                if problem:
                    await self.run(engine.reject_trial, problem)
                self.enter("confirming")
                await self.run(reporter.state, State.CONFIRMING)
                await self.run(engine.confirm)
            elif outcome in (IDLE, State.FAILED):
                await self.run(reporter.state, State.RUNNING)
            self.priority = Priority.COMMAND
            while True:
                self.enter("idle")
                command = await session.commands.get()
                action = command.get("cmd")
                self.enter(f"command {action}")
                if action in (Command.UPDATE, Command.CHECK):
                    await self.run(engine.check)
                elif action == Command.REPORT:
                    await self.run(reporter.state, State.RUNNING)
        except Reboot as request:
            self._session = None
            self.enter("rebooting")
            await session.stop()
            return f"{ResetReason.SOFTWARE_REBOOT} ({request})"

    async def _health_check(self, behaviour: Behaviour, session: Session) -> str | None:
        """firmware.health_check: self-test, broker, update server, then the soak time."""
        config = self.config
        if behaviour is Behaviour.SELFTEST_FAIL:
            return "self-test failed (firmware reports a faulty peripheral)"
        if not await waited(session.connected, config.health_timeout_s):
            return f"could not reach the MQTT broker within {config.health_timeout_s:.0f} s"
        deadline = asyncio.get_running_loop().time() + config.health_timeout_s
        while not await self.run(self.fleet.http.healthy):
            if asyncio.get_running_loop().time() > deadline:
                return f"could not reach the update server within {config.health_timeout_s:.0f} s"
            await asyncio.sleep(1)
        await asyncio.sleep(config.trial_soak_s)
        return None

    def _observe(self, kind: str, word: str | None, body: dict) -> None:
        """Every report, as it is made (engine thread or loop): the fleet's own counters."""
        if kind == "state":
            self.state = word or ""
        elif word == Event.UPDATE_STARTED:
            self.arm_cut()
        self.fleet.observe(self, kind, word, body)
