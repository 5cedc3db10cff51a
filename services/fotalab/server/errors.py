"""The server's errors, one hierarchy: the class of an error is its HTTP status.

Code that finds a problem raises the class that names it, with a message that says what was
wrong and what to do; app.py answers every ServerError as {"error": message, "status": code}.
No status is ever chosen from a message's text, so a reworded message cannot change it.
"""
from __future__ import annotations

from typing import ClassVar


class ServerError(Exception):
    """Base: an error the server answers with `status` and its message."""
    status: ClassVar[int] = 500

    def headers(self) -> dict[str, str]:
        """Headers the answer needs besides its JSON body."""
        return {}


class InvalidRequest(ServerError):
    """Malformed: a missing or badly typed parameter or body; the client must change the request."""
    status = 400


class InvalidMessage(InvalidRequest):
    """A device message (MQTT) that cannot be stored; the ingester acknowledges and drops it with a warning."""


class Unauthorized(ServerError):
    """A state-changing request without the right bearer token."""
    status = 401

    def headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": "Bearer realm=fotalab"}


class ControllerUnauthorized(Unauthorized):
    """A DDI request without a valid TargetToken (or GatewayToken) for its controller."""

    def headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": "TargetToken realm=fotalab"}


class NotFound(ServerError):
    """Names a device, rollout, hardware or artifact the server does not know."""
    status = 404


class UnknownHardware(NotFound):
    """No release was ever built for this hardware id."""


class ControllerExists(ServerError):
    """Enrolling a DDI controller under a name that is taken."""
    status = 409


class Gone(ServerError):
    """Feedback for a DDI action that is closed (hawkBit answers 410 too)."""
    status = 410


class Unprocessable(ServerError):
    """Well-formed, but asks for what cannot be done (a release that does not exist, a bad plan)."""
    status = 422


class AssignmentError(Unprocessable):
    """An assignment that cannot be made; the message lists what can be assigned."""


class EnrollmentError(Unprocessable):
    """A controller that cannot be enrolled (unknown hardware); the message lists what can be."""


class RolloutError(Unprocessable):
    """A rollout request that cannot be honoured; the message says why and what to do."""


class RolloutConflict(RolloutError):
    """Refused by a rollout's status: another rollout is active, or this one cannot make that move."""
    status = 409


class Unavailable(ServerError):
    """Could not be done now (e.g. lost every race for a rollout); the same request may succeed later."""
    status = 503
