"""DDI feedback: what a client may send (checked before anything is stored), and what it means
for the device in the lab's words (protocol.State and Event). Pure: no request, no database.

hawkBit's feedback body (DdiActionFeedback, DdiStatus, DdiResult, DdiProgress):

    {"time": "20140511T121314",                       optional, kept out of the registry
     "status": {"execution": "proceeding",            DdiExecution
                "result": {"finished": "none",         DdiFinished
                           "progress": {"cnt": 2, "of": 5}},   optional
                "code": 200,                           optional
                "details": ["Installing"]}}            optional list of strings

Unknown fields are ignored, as hawkBit ignores them (SWUpdate sends "id" as well). The server
clock orders the device's state reports (a DDI client's "time" is local time without a zone).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from ..protocol import DdiExecution, DdiFinished, Event, RollbackCause, State
from .ddi_store import Action, ActionStatus
from .errors import InvalidRequest

MAX_DETAILS = 50                 # messages per feedback
MAX_DETAIL = 1000                # characters per message (longer ones are cut, not refused)
MAX_ATTRIBUTES = 100             # configData entries
MAX_ATTRIBUTE = 128              # characters per configData key and value (hawkBit's limit)
CONFIG_MODES = ("merge", "replace", "remove")


@dataclass(frozen=True)
class Feedback:
    execution: DdiExecution
    finished: DdiFinished
    progress: float | None = None          # cnt / of, when `of` is given
    details: tuple[str, ...] = ()

    @property
    def text(self) -> str:
        return "; ".join(self.details)


def _int(value: object, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise InvalidRequest(f"{what} must be a whole number >= 0, got {str(value)[:40]!r}")
    return value


def parse_feedback(body: object) -> Feedback:
    """The feedback of a request body; raises InvalidRequest (400) saying what is wrong."""
    example = ('send {"status": {"execution": "proceeding", "result": {"finished": "none", '
               '"progress": {"cnt": 1, "of": 2}}, "details": ["..."]}}')
    if not isinstance(body, dict) or not isinstance(body.get("status"), dict):
        raise InvalidRequest(f"feedback needs a JSON object with a 'status' object: {example}")
    status = body["status"]
    if status.get("execution") not in tuple(DdiExecution):
        raise InvalidRequest(f"status.execution must be one of {', '.join(DdiExecution)}, "
                             f"got {str(status.get('execution'))[:40]!r}")
    result = status.get("result")
    if not isinstance(result, dict) or result.get("finished") not in tuple(DdiFinished):
        raise InvalidRequest(f"status.result.finished must be one of {', '.join(DdiFinished)}: {example}")
    execution, finished = DdiExecution(status["execution"]), DdiFinished(result["finished"])
    if execution == DdiExecution.CLOSED and finished == DdiFinished.NONE:
        raise InvalidRequest("a closed action needs status.result.finished 'success' or 'failure'")
    progress = None
    if result.get("progress") is not None:
        if not isinstance(result["progress"], dict):
            raise InvalidRequest('status.result.progress must be an object {"cnt": <done>, "of": <total>}')
        cnt = _int(result["progress"].get("cnt"), "status.result.progress.cnt")
        of = result["progress"].get("of")
        if of is not None and _int(of, "status.result.progress.of") > 0:
            progress = min(cnt / of, 1.0)
    details = status.get("details", [])
    if details is None:
        details = []
    if not isinstance(details, list) or not all(isinstance(d, str) for d in details):
        raise InvalidRequest("status.details must be a list of strings")
    if len(details) > MAX_DETAILS:
        raise InvalidRequest(f"status.details has {len(details)} messages; at most {MAX_DETAILS}")
    if "code" in status and status["code"] is not None and (not isinstance(status["code"], int)
                                                            or isinstance(status["code"], bool)):
        raise InvalidRequest("status.code must be an integer")
    return Feedback(execution, finished, progress, tuple(d[:MAX_DETAIL] for d in details))


def parse_config_data(body: object) -> tuple[dict[str, str], str]:
    """(data, mode) of a configData body (DdiConfigData); raises InvalidRequest (400)."""
    if not isinstance(body, dict) or not isinstance(body.get("data"), dict) or not body["data"]:
        raise InvalidRequest('configData needs a JSON object {"data": {"<key>": "<value>", ...}, "mode": "merge"} '
                             "with at least one entry")
    data, mode = body["data"], body.get("mode") or "merge"
    if mode not in CONFIG_MODES:
        raise InvalidRequest(f"mode must be one of {', '.join(CONFIG_MODES)}, got {str(mode)[:40]!r}")
    if len(data) > MAX_ATTRIBUTES:
        raise InvalidRequest(f"configData has {len(data)} entries; at most {MAX_ATTRIBUTES}")
    for key, value in data.items():
        if not isinstance(value, str) or not key or len(key) > MAX_ATTRIBUTE or len(value) > MAX_ATTRIBUTE:
            raise InvalidRequest(f"configData entry {key[:40]!r}: keys and values are strings of 1-{MAX_ATTRIBUTE} "
                                 "characters (values may be empty)")
    return dict(data), mode


@dataclass(frozen=True)
class Effect:
    """What a feedback does: the action's next status, and the device's state report and events."""
    status: ActionStatus
    state: State | None                    # None: no state report (the device's state is unchanged)
    progress: float | None = None
    reason: str = ""
    committed: bool = False
    events: tuple[tuple[Event, dict], ...] = field(default_factory=tuple)
    cancel_rejected: bool = False
    rollback: dict | None = None           # the report's last_rollback: the release failed after it was installed


def _running_state(feedback: Feedback) -> State:
    if feedback.execution == DdiExecution.SCHEDULED:
        return State.CHECKING
    if feedback.execution == DdiExecution.PROCEEDING and "install" in feedback.text.lower():
        return State.INSTALLING
    return State.DOWNLOADING


def installed(messages: list[str]) -> bool:
    """Whether a client said it had installed the update (SWUpdate: "All Chunks Installed.",
    "Update Installed, Testing Pending."): a failure after that is the new image failing."""
    return any("installed" in message.lower() for message in messages)


def deployment_effect(action: Action, feedback: Feedback, first: bool, was_installed: bool = False) -> Effect:
    """A feedback on deploymentBase/{action}: `first` when the action had none before,
    `was_installed` when an earlier one said the update was installed.

    closed + failure after the update was installed is a rollback (SWUpdate reports it after its
    bootloader fell back): the report's last_rollback names the release, so a rollout
    quarantines it for the device and counts it at its failure gate, as for an MQTT device
    that rolled back. Before that it is a failure (download, install), which a rollout retries."""
    target = {"target": action.version, "ddi_action": action.id}
    started = ((Event.UPDATE_STARTED, target),) if first else ()
    execution, finished = feedback.execution, feedback.finished
    if execution == DdiExecution.CLOSED and finished == DdiFinished.SUCCESS:
        # SWUpdate says success only after its post-reboot check: the lab's commit
        return Effect(ActionStatus.FINISHED, State.COMMITTED, committed=True,
                      events=(*started, (Event.COMMITTED, {"version": action.version, "ddi_action": action.id})))
    if execution == DdiExecution.CLOSED:
        reason = feedback.text or "the client closed the action with failure, giving no details"
        if was_installed:
            return Effect(ActionStatus.ERROR, State.ROLLED_BACK, reason=reason,
                          rollback={"version": action.version, "reason": reason, "cause": RollbackCause.FIRMWARE},
                          events=(*started, (Event.ROLLED_BACK, {**target, "reason": reason})))
        return Effect(ActionStatus.ERROR, State.FAILED, reason=reason,
                      events=(*started, (Event.FAILED, {**target, "reason": reason})))
    if execution == DdiExecution.CANCELED:
        reason = "canceled: " + (feedback.text or "the client stopped the update")
        return Effect(ActionStatus.CANCELED, State.FAILED, reason=reason,
                      events=(*started, (Event.FAILED, {**target, "reason": reason})))
    if execution == DdiExecution.REJECTED:      # hawkBit keeps the action open (a warning)
        reason = "rejected: " + (feedback.text or "the client did not accept the update")
        return Effect(action.status, State.FAILED, reason=reason,
                      events=(*started, (Event.REJECTED, {**target, "reason": reason})))
    events = list(started)
    if execution == DdiExecution.RESUMED:
        events.append((Event.UPDATE_RESUMED, target))
    if execution == DdiExecution.DOWNLOADED:
        events.append((Event.DOWNLOADED, target))
    progress = 1.0 if execution == DdiExecution.DOWNLOADED else feedback.progress
    return Effect(action.status, _running_state(feedback), progress=progress, events=tuple(events))


def cancel_effect(action: Action, feedback: Feedback) -> Effect | None:
    """A feedback on cancelAction/{action}: the cancellation done, refused, or going on (None)."""
    execution, finished = feedback.execution, feedback.finished
    target = {"target": action.version, "ddi_action": action.id}
    if execution == DdiExecution.CANCELED or (execution == DdiExecution.CLOSED and finished == DdiFinished.SUCCESS):
        reason = "canceled by the server" + (f": {feedback.text}" if feedback.text else "")
        return Effect(ActionStatus.CANCELED, State.FAILED, reason=reason,
                      events=((Event.FAILED, {**target, "reason": reason}),))
    if execution in (DdiExecution.REJECTED, DdiExecution.CLOSED):     # the update goes on (hawkBit: CANCEL_REJECTED)
        return Effect(ActionStatus.RUNNING, None, cancel_rejected=True,
                      reason="the client refused the cancellation" + (f": {feedback.text}" if feedback.text else ""))
    return None
