"""The wire between devices, server and tools: the MQTT topic layout and every word that crosses it.

Topics are versioned so the payloads can evolve: fota/v1/...

    fota/v1/devices/<id>/cmd     server -> device  commands (QoS 1, never retained): hints only
    fota/v1/devices/<id>/state   device -> all     current state (QoS 1, retained)
    fota/v1/devices/<id>/events  device -> server  transitions (QoS 1)
    fota/v1/devices/<id>/status  "online" / "offline" (retained; "offline" is the last will)
    fota/v1/fleet/cmd            server -> every device (QoS 1, never retained)

The vocabularies are StrEnums: a member is its string on the wire and in JSON, so a module
compares and sends members and never spells a state, event or cause as a literal.
"""
from __future__ import annotations

import threading
import time
from collections.abc import Callable
from enum import StrEnum

PREFIX = "fota/v1"
FLEET_COMMANDS = f"{PREFIX}/fleet/cmd"
KINDS = ("cmd", "state", "events", "status")


class ReportClock:
    """A device's report timestamps ("ts": seconds, to the millisecond), strictly increasing.

    The server keeps a state report only if its ts is newer than the stored one's, so two reports
    in one millisecond (confirming, then committed, on a fast flash) would lose the second: a
    report never carries the ts of the one before it."""

    def __init__(self, now: Callable[[], float] = time.time) -> None:
        self._now, self._last, self._lock = now, 0.0, threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            self._last = max(round(self._now(), 3), round(self._last + 0.001, 3))
            return self._last


def device_topic(device_id: str, kind: str) -> str:
    if kind not in KINDS:
        raise ValueError(f"unknown topic kind {kind!r}")
    if not device_id or any(c in device_id for c in "/+#"):
        raise ValueError(f"device id {device_id!r} must be non-empty without '/', '+' or '#'")
    return f"{PREFIX}/devices/{device_id}/{kind}"


class Command(StrEnum):
    """What the server (or an operator's trigger) asks a device on its command topic: hints only."""
    UPDATE = "update"                # check the server for an assignment and install it
    CHECK = "check"                  # the same; kept for the seed's scripts
    REPORT = "report"                # publish the current state again


class State(StrEnum):
    """What a device reports on its retained state topic."""
    CHECKING = "checking"
    UP_TO_DATE = "up_to_date"
    DOWNLOADING = "downloading"
    INSTALLING = "installing"
    REBOOTING = "rebooting"
    TRIAL = "trial"                  # booted a new image on trial, health check pending
    CONFIRMING = "confirming"
    RUNNING = "running"
    COMMITTED = "committed"
    ROLLED_BACK = "rolled_back"
    TRIAL_FAILED = "trial_failed"
    FAILED = "failed"


SUCCESS_STATES = frozenset({State.COMMITTED, State.RUNNING, State.UP_TO_DATE})
FAILED_STATES = frozenset({State.FAILED, State.TRIAL_FAILED, State.ROLLED_BACK})


class Event(StrEnum):
    """Transitions a device publishes on its events topic; the server keeps them as its history."""
    BOOTED = "booted"
    UPDATE_STARTED = "update_started"
    DOWNLOAD_RESUMED = "download_resumed"
    DOWNLOADED = "downloaded"
    DELTA_REJECTED = "delta_rejected"
    STAGED = "staged"
    UPDATE_RESUMED = "update_resumed"
    COMMITTED = "committed"
    ROLLED_BACK = "rolled_back"
    TRIAL_FAILED = "trial_failed"
    REJECTED = "rejected"
    FAILED = "failed"
    KEY_ROTATED = "key_rotated"
    RETRY = "retry"
    # recorded by the server for the operator (`fota device revoke|reprovision`), in the device's history
    CERTIFICATE_REVOKED = "certificate_revoked"
    CERTIFICATE_REISSUED = "certificate_reissued"


class Presence(StrEnum):
    """The retained status topic: the device's own word, or the broker's last will."""
    ONLINE = "online"
    OFFLINE = "offline"


class ResetReason(StrEnum):
    """Why the device's firmware booted, as its reset-cause register would say.

    Only the fixed words are members; the supervisor adds detail after them
    ("watchdog: no kick for 15 s", "crash (exit 1)", "software reboot (trial failed: ...)").
    """
    POWER_ON = "power-on"
    INSPECT = "inspect"              # `fota-device inspect` plans a boot without running one
    SOFTWARE_REBOOT = "software reboot"
    WATCHDOG = "watchdog"
    CRASH = "crash"
    HALT = "halt"


class RollbackCause(StrEnum):
    """Why the bootloader reverted: only FIRMWARE condemns (quarantines) a release."""
    FIRMWARE = "firmware"            # the image failed its trial
    POWER = "power"                  # its trial was cut by power loss too often
    VERIFICATION = "verification"    # the staged image no longer verified


class RolloutStatus(StrEnum):
    RUNNING = "running"
    PAUSED = "paused"
    ABORTED = "aborted"
    COMPLETED = "completed"


ACTIVE_ROLLOUTS = frozenset({RolloutStatus.RUNNING, RolloutStatus.PAUSED})


class Outcome(StrEnum):
    """A device's standing in a rollout (and the last result the dashboard shows)."""
    PENDING = "pending"
    OFFERED = "offered"
    COMMITTED = "committed"
    ROLLED_BACK = "rolled_back"
    FAILED = "failed"


# --- hawkBit's Direct Device Integration (DDI) API: the words a DDI client (SWUpdate's suricatta,
# rauc-hawkbit-updater, Zephyr's hawkbit...) sends and reads. They are hawkBit's, spelled as its
# DDI model classes spell them (DdiStatus.ExecutionStatus, DdiResult.FinalResult,
# DdiDeployment.HandlingType); docs/ddi.md cites them. Here, not in server/, because they cross the wire.

class DdiExecution(StrEnum):
    """status.execution of a DDI feedback."""
    CLOSED = "closed"                # finished: result.finished says how
    PROCEEDING = "proceeding"        # started, not finished
    CANCELED = "canceled"            # the client confirms a cancellation
    SCHEDULED = "scheduled"          # noticed, will run
    REJECTED = "rejected"            # the client does not accept the action (or its cancellation)
    RESUMED = "resumed"              # started again after a reset or power loss
    DOWNLOADED = "downloaded"        # the artifacts are downloaded
    DOWNLOAD = "download"            # the download starts


class DdiFinished(StrEnum):
    """status.result.finished of a DDI feedback."""
    SUCCESS = "success"
    FAILURE = "failure"
    NONE = "none"                    # not finished (yet)


class DdiHandling(StrEnum):
    """deployment.download and deployment.update of a deploymentBase: what the server asks."""
    SKIP = "skip"                    # not now (SWUpdate answers skip with closed + success: never sent here)
    ATTEMPT = "attempt"              # the client may defer it
    FORCED = "forced"                # at once
