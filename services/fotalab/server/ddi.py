"""hawkBit's Direct Device Integration (DDI) API, so any DDI client (SWUpdate's suricatta,
rauc-hawkbit-updater, Zephyr's hawkbit subsystem, ...) is a device of the lab. docs/ddi.md says
what is implemented, what is not, and which hawkBit documents the shapes come from.

    GET  /{tenant}/controller/v1/{controllerId}                                  the base resource (poll)
    GET  .../{controllerId}/deploymentBase/{actionId}[?actionHistory=N]          what to install
    POST .../{controllerId}/deploymentBase/{actionId}/feedback                   how it goes
    PUT  .../{controllerId}/configData                                           the client's attributes
    GET  .../{controllerId}/cancelAction/{actionId}                              stop an action
    POST .../{controllerId}/cancelAction/{actionId}/feedback                     stopped, or not
    GET  .../{controllerId}/artifacts/{filename}.MD5SUM                          "<md5>  <filename>"

Artifacts are downloaded from the server's own /artifacts/<sha256> (downloads.py: Range,
If-Range, strong ETag), the links handed out in a deploymentBase.

Every request carries `Authorization: TargetToken <token>` (the controller's, from
`fota controllers add`) or `GatewayToken <token>` (FOTA_DDI_GATEWAY_TOKEN, when set). Errors
are hawkBit's ExceptionInfo: {"exceptionClass", "errorCode", "message"}.

When a poll offers what: an action (hawkBit's word for one offer of a release to one
controller) is opened on a poll when the controller has an assignment it has not been offered
yet (a rollout's phase, or `PUT /api/v1/devices/<id>/assignment`), or when the rollout engine
or an operator hinted it (`fota trigger`, a rollout's retry: ddi_store.request_offer) and it
does not run the assigned release (else the server's default) already. A release that failed
on the controller after it was installed (a rollback, ddi_feedback.py) is never offered to it
again, as the lab's own devices quarantine it. An open action whose
release is no longer assigned (an aborted rollout) is cancelled through cancelAction.
"""
from __future__ import annotations

import hmac
import time
from collections.abc import Callable
from dataclasses import replace
from urllib.parse import quote

from flask import Blueprint, Response, g, jsonify, request

from ..formats.image import parse_version
from ..protocol import DdiExecution, DdiFinished, DdiHandling
from .artifacts import Artifact
from .ddi_feedback import (
    Effect,
    Feedback,
    cancel_effect,
    deployment_effect,
    installed,
    parse_config_data,
    parse_feedback,
)
from .ddi_store import HISTORY_LIMIT, Action, ActionStatus, DdiStore, PollView, token_hash
from .errors import ControllerUnauthorized, Gone, InvalidRequest, NotFound, ServerError
from .services import Services, services

MAX_BODY = 64 * 1024
PART = "os"                     # the chunk's part: hawkBit's software module type for a firmware image
HANDLING = DdiHandling.FORCED   # never skip: SWUpdate answers skip with closed + success, which is a commit here
# hawkBit's ExceptionInfo for the statuses it has codes for (its SpServerError); the lab's own otherwise
EXCEPTIONS = {
    400: ("org.eclipse.hawkbit.rest.exception.MessageNotReadableException",
          "hawkbit.server.error.rest.body.notReadable"),
    404: ("org.eclipse.hawkbit.repository.exception.EntityNotFoundException",
          "hawkbit.server.error.repo.entitiyNotFound"),           # sic: hawkBit's spelling
    401: ("fotalab.server.errors.ControllerUnauthorized", "fotalab.ddi.unauthorized"),
    410: ("fotalab.server.errors.Gone", "fotalab.ddi.actionClosed"),
}

blueprint = Blueprint("ddi", __name__, url_prefix="/<tenant>/controller/v1")


def store() -> DdiStore:
    return DdiStore(services().registry)


def exception_info(exc: ServerError) -> dict:
    """hawkBit's error body (ExceptionInfo) for an error."""
    exception_class, code = EXCEPTIONS.get(exc.status, (f"fotalab.server.errors.{type(exc).__name__}",
                                                        f"fotalab.ddi.{type(exc).__name__}"))
    return {"exceptionClass": exception_class, "errorCode": code, "message": str(exc)}


@blueprint.errorhandler(ServerError)
def ddi_error(exc: ServerError) -> tuple[Response, int]:
    response = jsonify(exception_info(exc))
    response.headers.update(exc.headers())
    return response, exc.status


def check_tenant(found: Services, tenant: str) -> None:
    if tenant.lower() != found.config.ddi_tenant.lower():
        raise NotFound(f"no tenant {tenant[:40]!r}: this server's DDI tenant is {found.config.ddi_tenant!r} "
                       "(FOTA_DDI_TENANT)")


@blueprint.url_value_preprocessor
def known_tenant(endpoint: str | None, values: dict | None) -> None:
    g.tenant = (values or {}).pop("tenant", "")
    check_tenant(services(), g.tenant)


def authorized(controller_id: str, found: Services | None = None, authorization: str | None = None) -> PollView:
    """The controller, if the request carries its TargetToken (or the tenant's GatewayToken)."""
    found = found or services()
    if authorization is None:
        authorization = request.headers.get("Authorization", "")
    scheme, _, token = authorization.partition(" ")
    scheme, token = scheme.lower(), token.strip()
    if scheme not in ("targettoken", "gatewaytoken") or not token:
        raise ControllerUnauthorized("send 'Authorization: TargetToken <token>': `fota controllers add` prints a "
                                     "controller's token when it enrols it")
    view = DdiStore(found.registry).poll_view(controller_id)
    if scheme == "gatewaytoken":
        gateway = found.config.ddi_gateway_token
        if not gateway or not hmac.compare_digest(token.encode(), gateway.encode()):
            raise ControllerUnauthorized("wrong GatewayToken" if gateway else
                                         "this server takes no GatewayToken (FOTA_DDI_GATEWAY_TOKEN is not set): "
                                         "use the controller's TargetToken")
        if view is None:
            raise NotFound(f"no controller {controller_id[:128]!r}: enrol it first (`fota controllers add NAME`)")
        return view
    if view is None:
        hmac.compare_digest(token_hash(token), token_hash(""))      # about the same time as a wrong token
        raise ControllerUnauthorized("this TargetToken is not valid for this controller")
    if not view.token_matches(token):
        raise ControllerUnauthorized("this TargetToken is not valid for this controller")
    return view


def base_url() -> str:
    return services().config.public_url or request.host_url.rstrip("/")


def controller_url(controller_id: str, base: str | None = None, tenant: str | None = None) -> str:
    base, tenant = base or base_url(), g.tenant if tenant is None else tenant
    return f"{base}/{quote(tenant, safe='')}/controller/v1/{quote(controller_id, safe='')}"


def known_action(controller_id: str, action_id: int) -> Action:
    action = store().action(controller_id, action_id)
    if action is None:
        raise NotFound(f"controller {controller_id!r} has no action {action_id}: poll its base resource for the "
                       "current one")
    return action


def request_body() -> object:
    if (request.content_length or 0) > MAX_BODY:
        raise InvalidRequest(f"the body has {request.content_length} bytes; at most {MAX_BODY}")
    request.max_content_length = MAX_BODY
    return request.get_json(force=True, silent=True)


def ddi_artifact(hardware: str, version: str, found: Services | None = None) -> Artifact | None:
    """What a controller of `hardware` installs for `version`: the release's .swu where the signer
    built one (SWUpdate hardware), else its signed image."""
    index = (found or services()).index.get()
    release = index.release(hardware, version)
    if release is None:
        return None
    return index.by_sha.get((release.get("swu") or {}).get("sha256") or release["image"])


def newer(version: str, running: str | None) -> bool:
    try:
        return running is None or parse_version(version) > parse_version(running)
    except ValueError:
        return True                     # a version the lab cannot compare: the client decides


class WriteNeeded(Exception):
    """A poll asked not to write (on the event loop: ddi_polls.py) would have to."""


def current_action(found: Services, view: PollView, now: float, writes: bool = True) -> Action | None:
    """The action to show on this poll: the open one (cancelled when its release is no longer
    wanted), or a new one when an offer is due (the module docstring says when)."""
    config, action, controllers = found.config, view.action, DdiStore(found.registry)
    if action is not None:
        wanted = view.assigned or (config.default_release if action.source == "default" else None)
        if action.status == ActionStatus.RUNNING and not action.cancel_rejected and wanted != action.version:
            if not writes:
                raise WriteNeeded
            controllers.cancel(action, now)
            return replace(action, status=ActionStatus.CANCELING)
        return action
    target, source = (view.assigned, "device") if view.assigned else (config.default_release, "default")
    if (source == "default" and not view.offer_requested) or target in (view.version, view.rolled_back):
        return None                     # the poll's fast path: nothing assigned, nothing asked for
    offered = controllers.last_offered(view.controller_id, target)
    due = view.offer_requested > (offered or 0) if (offered is not None or source == "default") else True
    if not due or not newer(target, view.version) or ddi_artifact(view.hardware, target, found) is None:
        return None
    if not writes:
        raise WriteNeeded
    return controllers.open_action(view.controller_id, target, source, now)


def poll(found: Services, tenant: str, controller_id: str, authorization: str, host_url: str,
         writes: bool = True, seen: Callable[[str, float], None] | None = None) -> dict:
    """The base resource (a poll): `host_url` is the request's scheme and host, for the links.
    Raises a ServerError, or WriteNeeded without `writes` (before writing anything); `seen`
    records that the controller polled, when its last_seen is due (default: written at once).
    ddi_polls.py answers polls with it in front of Flask, the route below in Flask."""
    check_tenant(found, tenant)
    view, now, config = authorized(controller_id, found, authorization), time.time(), found.config
    if not view.online or now - view.last_seen >= config.ddi_seen_s:    # every ddi_seen_s at most
        (seen or DdiStore(found.registry).seen)(controller_id, now)
    links, action = {}, current_action(found, view, now, writes)
    url = controller_url(controller_id, config.public_url or host_url.rstrip("/"), tenant)
    if action is not None and action.status == ActionStatus.CANCELING:
        links["cancelAction"] = {"href": f"{url}/cancelAction/{action.id}"}
    elif action is not None:
        links["deploymentBase"] = {"href": f"{url}/deploymentBase/{action.id}"}
    if not view.attributes_at or view.finished_at > view.attributes_at:
        links["configData"] = {"href": f"{url}/configData"}
    body: dict = {"config": {"polling": {"sleep": config.ddi_sleep}}}
    if links:
        body["_links"] = links
    return body


@blueprint.get("/<controller_id>")
def controller_base(controller_id: str) -> Response:
    return jsonify(poll(services(), g.tenant, controller_id, request.headers.get("Authorization", ""),
                        request.host_url))


def artifact_json(artifact: Artifact, controller_id: str) -> dict:
    filename, base = artifact.names[0], base_url()
    secure = base.startswith("https:")                  # hawkBit: download/md5sum over TLS, -http without
    suffix = "" if secure else "-http"
    return {"filename": filename, "hashes": {"sha1": artifact.sha1, "md5": artifact.md5, "sha256": artifact.sha256},
            "size": artifact.length,
            "_links": {f"download{suffix}": {"href": f"{base}{artifact.url}"},
                       f"md5sum{suffix}": {"href": f"{controller_url(controller_id)}/artifacts/"
                                                  f"{quote(filename, safe='')}.MD5SUM"}}}


@blueprint.get("/<controller_id>/deploymentBase/<int:action_id>")
def deployment_base(controller_id: str, action_id: int) -> Response:
    view = authorized(controller_id)
    action = known_action(controller_id, action_id)
    try:
        history = int(request.args.get("actionHistory", 0))
    except ValueError:
        raise InvalidRequest("actionHistory is a number of messages (negative: as many as kept)") from None
    artifact = ddi_artifact(view.hardware, action.version)
    if artifact is None:
        raise NotFound(f"release {action.version} for hardware {view.hardware} is no longer in the release store")
    chunk = {"part": PART, "version": action.version, "name": f"{view.hardware} firmware",
             "artifacts": [artifact_json(artifact, controller_id)]}
    body: dict = {"id": str(action.id), "deployment": {"download": HANDLING, "update": HANDLING, "chunks": [chunk]}}
    if history:
        count = HISTORY_LIMIT if history < 0 else history
        body["actionHistory"] = {"status": action.status, "messages": store().messages(action.id, count)}
    return jsonify(body)


def apply(view: PollView, action: Action, channel: str, feedback: Feedback, effect: Effect) -> None:
    """Keep the feedback, move the action, and tell the registry what it means for the device:
    the same state report and events an MQTT device would send, so every view and gate sees it."""
    now, registry = time.time(), services().registry
    if not store().record_feedback(action, channel, feedback.execution, feedback.finished, list(feedback.details),
                                   effect.status, cancel_rejected=effect.cancel_rejected, now=now):
        raise Gone(f"action {action.id} was closed meanwhile")
    device = view.controller_id
    if effect.state is not None:
        report = {"device": device, "ts": now, "state": effect.state, "hardware": view.hardware,
                  "version": action.version if effect.committed else view.version, "progress": effect.progress,
                  "reason": effect.reason or None, "target": action.version,
                  "ddi": {"action": action.id, "execution": feedback.execution, "finished": feedback.finished}}
        if effect.committed:
            report["confirmed"] = True
        if effect.rollback:
            report["last_rollback"] = effect.rollback
        registry.record_state(device, report, now)
    for number, (event, payload) in enumerate(effect.events):
        registry.record_event(device, {"device": device, "ts": now + number * 1e-6, "event": event, **payload}, now)


def closed(action: Action, feedback: Feedback, repeat: tuple[ActionStatus, ...]) -> Response:
    """Feedback for a closed action: the same final word again is fine (a client's retry), anything else is 410."""
    if action.status in repeat:
        return Response(status=200)
    raise Gone(f"action {action.id} is {action.status}: it takes no more feedback ({feedback.execution}/"
               f"{feedback.finished})")


@blueprint.post("/<controller_id>/deploymentBase/<int:action_id>/feedback")
def deployment_feedback(controller_id: str, action_id: int) -> Response:
    view = authorized(controller_id)
    action = known_action(controller_id, action_id)
    feedback = parse_feedback(request_body())
    if not action.open:
        final = {DdiFinished.SUCCESS: (ActionStatus.FINISHED,), DdiFinished.FAILURE: (ActionStatus.ERROR,)}
        return closed(action, feedback, final.get(feedback.finished, ()) if feedback.execution ==
                      DdiExecution.CLOSED else ())
    earlier = store().messages(action.id, HISTORY_LIMIT)
    apply(view, action, "deploymentBase", feedback,
          deployment_effect(action, feedback, not earlier, installed([*earlier, feedback.text])))
    return Response(status=200)


@blueprint.put("/<controller_id>/configData")
def config_data(controller_id: str) -> Response:
    authorized(controller_id)
    data, mode = parse_config_data(request_body())
    store().set_attributes(controller_id, data, mode)
    return Response(status=200)


@blueprint.get("/<controller_id>/cancelAction/<int:action_id>")
def cancel_action(controller_id: str, action_id: int) -> Response:
    authorized(controller_id)
    action = known_action(controller_id, action_id)
    if action.status not in (ActionStatus.CANCELING, ActionStatus.CANCELED):
        raise NotFound(f"action {action_id} is {action.status}, not being cancelled")
    return jsonify({"id": str(action.id), "cancelAction": {"stopId": str(action.id)}})


@blueprint.post("/<controller_id>/cancelAction/<int:action_id>/feedback")
def cancel_feedback(controller_id: str, action_id: int) -> Response:
    view = authorized(controller_id)
    action = known_action(controller_id, action_id)
    feedback = parse_feedback(request_body())
    if action.status != ActionStatus.CANCELING:
        done = feedback.execution == DdiExecution.CANCELED or (feedback.execution == DdiExecution.CLOSED and
                                                                feedback.finished == DdiFinished.SUCCESS)
        return closed(action, feedback, (ActionStatus.CANCELED,) if done else ())
    effect = cancel_effect(action, feedback) or Effect(ActionStatus.CANCELING, None)
    apply(view, action, "cancelAction", feedback, effect)
    return Response(status=200)


@blueprint.get("/<controller_id>/artifacts/<filename>")
def md5sum(controller_id: str, filename: str) -> Response:
    authorized(controller_id)
    found = services().index.get().by_name.get(filename.removesuffix(".MD5SUM"))
    if not filename.endswith(".MD5SUM") or found is None:
        raise NotFound(f"no artifact {filename[:80]!r}: ask for <filename>.MD5SUM of a deploymentBase artifact")
    return Response(f"{found.md5}  {filename.removesuffix('.MD5SUM')}\n", mimetype="text/plain")
