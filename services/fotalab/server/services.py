"""What the request handlers work with: one Services object per app, on app.extensions.

The handlers (api.py, dashboard.py, app.py) are plain module-level functions; they reach the
configuration, the release index, the registry and the live hub through services(), so no
handler is a closure over them and the same handler serves every app (tests make many).
"""
from __future__ import annotations

from dataclasses import dataclass

from flask import current_app

from .artifacts import LiveIndex
from .assignment import Assignment, assigned
from .config import ServerConfig
from .errors import NotFound
from .live import LiveHub
from .registry import Registry
from .rollouts import Rollout

EXTENSION = "fotalab"           # app.extensions[EXTENSION]; gateway.py and tests read it too


@dataclass(frozen=True)
class Services:
    config: ServerConfig
    index: LiveIndex
    registry: Registry
    live: LiveHub

    def assigned(self, device_id: str) -> Assignment:
        """The release the device is offered: its own assignment, else the server's default."""
        return assigned(self.registry, device_id, self.config.default_release)

    def known_rollout(self, rollout_id: int) -> Rollout:
        found = self.registry.rollout(rollout_id)
        if found is None:
            raise NotFound(f"no rollout {rollout_id}: GET /api/v1/rollouts lists them")
        return found


def services() -> Services:
    """The current app's services (in a request)."""
    return current_app.extensions[EXTENSION]
