"""The dashboard's view of the fleet: devices and rollouts shaped for the page, in one place.

The first message of an event stream, each batch of changes after it (live.py) and the polling
fallback (GET /api/v1/dashboard) all carry these shapes, so the page merges them the same way.
Rollouts are sent without their per-device runs: the page shows phase counts, and a fleet of
hundreds would otherwise resend every device's run on each change of the rollout.
"""
from __future__ import annotations

import time

from ..protocol import FAILED_STATES, Outcome, State
from .registry import Registry, RolloutRecord

SNAPSHOT_ROLLOUTS = 10          # the newest rollouts on the page


def last_result(device: dict) -> dict | None:
    """The outcome of the device's last update, from its last report: a failure with its reason,
    a rollback the bootloader remembers (until the next commit), or a commit."""
    report = device["report"] or {}
    if device["state"] in FAILED_STATES:          # the failed state itself is the outcome
        return {"outcome": device["state"], "version": report.get("target") or device["version"],
                "reason": device["reason"] or ""}
    rollback = report.get("last_rollback")
    if rollback:
        return {"outcome": Outcome.ROLLED_BACK, "version": rollback.get("version"),
                "reason": rollback.get("reason", "")}
    if device["state"] == State.COMMITTED:
        return {"outcome": Outcome.COMMITTED, "version": device["version"], "reason": ""}
    return None


def device_view(device: dict) -> dict:
    return {**device, "last_result": last_result(device)}


def rollout_view(record: RolloutRecord) -> dict:
    body = record.rollout.to_json()
    del body["devices"]
    return {**body, "device_count": len(record.rollout.devices), "created_at": record.created_at,
            "updated_at": record.updated_at}


def snapshot(registry: Registry) -> dict:
    """Every device, the newest rollouts and their decisions, and the server's clock."""
    records = registry.rollout_records(latest=SNAPSHOT_ROLLOUTS)
    return {"at": time.time(), "devices": [device_view(d) for d in registry.devices()],
            "rollouts": [rollout_view(r) for r in records],
            "decisions": [entry for r in records for entry in registry.rollout_log(rollout_id=r.rollout.id)]}
