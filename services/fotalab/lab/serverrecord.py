"""What the server recorded of a device, asked until it agrees with the device's flash.

A chaos verdict compares a device's flash with the registry and the history; the server learns
of a device's last boot only from its next report, so a disagreement is asked about again once a
second for a while before it counts.
"""
from __future__ import annotations

import time
from collections.abc import Callable

import requests

from ..protocol import Event

Check = Callable[[dict, list[dict]], list[str]]     # (registry record, history) -> problems


def until_server_agrees(server_url: str, device: str, check: Check, within_s: float,
                        http: requests.Session | None = None) -> list[str]:
    """`check`'s problems with the server's record and history of `device`, none once it agrees
    (`http`: the session that reaches the server, e.g. over TLS; default a plain one)."""
    http = http or requests.Session()
    deadline, problems = time.monotonic() + within_s, ["server not reachable"]
    while problems and time.monotonic() < deadline:
        try:
            record = http.get(f"{server_url}/api/v1/devices/{device}", timeout=5).json()
            history = http.get(f"{server_url}/api/v1/devices/{device}/history",
                                   params={"limit": 1000}, timeout=5).json()["events"]
        except (requests.RequestException, ValueError, KeyError):
            time.sleep(1)
            continue
        problems = check(record, history)
        if problems:
            time.sleep(1)
    return problems


def last_commit(history: list[dict]) -> str | None:
    """The version of the history's last commit, if any."""
    commits = [e["payload"].get("version") for e in history if e["event"] == Event.COMMITTED]
    return commits[-1] if commits else None
