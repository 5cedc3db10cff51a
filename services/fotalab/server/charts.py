"""The dashboard's chart data, computed on the server from the event history in a time window.

Every query is bounded: one event kind in a time window through the events_by_kind index
(registry.py), at most MAX_EVENTS each, plus a short look back in one device's history per
committed update; the browser never walks device histories itself.

- bandwidth: for each committed update, the bytes the device downloaded for it (its
  `downloaded` events, a rejected delta and the full image after it both count) against the
  release's full image: what delta updates save;
- rollout: devices of one rollout that committed its release over time, with the rollout
  log's decisions as marks;
- recoveries: boots after a power cut (the bootloader's reset reason), downloads resumed
  from the journal's offset and updates resumed after a reboot, per time bucket.
"""
from __future__ import annotations

import time

from ..protocol import ACTIVE_ROLLOUTS, Event, ResetReason
from .artifacts import ReleaseIndex
from .registry import Registry

MAX_EVENTS = 2000
MAX_UPDATES = 200              # committed updates in the bandwidth chart
LOOK_BACK = 30                 # download events searched before a commit
BUCKETS = 24


def image_length(index: ReleaseIndex, hardware: str | None, version: str | None) -> int | None:
    release = index.release(hardware or "", version or "")
    artifact = index.by_sha.get(release["image"]) if release else None
    return artifact.length if artifact else None


def update_download(registry: Registry, commit: dict) -> tuple[str, int] | None:
    """(artifact kind, bytes downloaded) of the update a `committed` event concluded; None when
    its download is not in the history."""
    version, downloaded, rejected = commit["payload"].get("version"), 0, False
    kinds = (Event.UPDATE_STARTED, Event.DOWNLOADED, Event.DELTA_REJECTED, Event.COMMITTED)
    for event in registry.events_before(commit["device_id"], commit["id"], kinds, LOOK_BACK):
        payload = event["payload"]
        if event["event"] == Event.COMMITTED:
            break                                      # the update before this one
        if payload.get("target") != version:
            continue
        if event["event"] == Event.DOWNLOADED:
            downloaded += int(payload.get("length") or 0)
        elif event["event"] == Event.DELTA_REJECTED:
            rejected = True
        else:
            kind = payload.get("artifact") or "image"
            return ("delta rejected, then image" if rejected else kind), downloaded or int(payload.get("length") or 0)
    return None


def bandwidth(registry: Registry, index: ReleaseIndex, since: float) -> dict:
    updates = []
    for commit in reversed(registry.recent_events(Event.COMMITTED, since=since, limit=MAX_UPDATES)):
        found = update_download(registry, commit)
        full = image_length(index, commit["payload"].get("hardware"), commit["payload"].get("version"))
        if found and full:
            updates.append({"device_id": commit["device_id"], "version": commit["payload"]["version"],
                            "at": commit["received_at"], "kind": found[0], "downloaded": found[1], "full": full})
    downloaded, full = sum(u["downloaded"] for u in updates), sum(u["full"] for u in updates)
    return {"updates": updates, "downloaded": downloaded, "full": full, "saved": full - downloaded,
            "saved_pct": round(100 * (full - downloaded) / full, 1) if full else None}


def rollout_progress(registry: Registry, rollout_id: int | None, now: float) -> dict | None:
    records = registry.rollout_records(rollout_id=rollout_id) if rollout_id else registry.rollout_records(latest=1)
    if not records:
        return None
    rollout, created_at, updated_at = records[0]
    members = {d.device_id for d in rollout.devices}
    first_commit: dict[str, float] = {}
    for event in reversed(registry.recent_events(Event.COMMITTED, since=created_at, limit=MAX_EVENTS)):
        if event["device_id"] in members and event["payload"].get("version") == rollout.release:
            first_commit.setdefault(event["device_id"], event["received_at"])
    points = [{"at": at, "committed": count} for count, at in enumerate(sorted(first_commit.values()), 1)]
    return {"id": rollout.id, "release": rollout.release, "status": rollout.status, "devices": len(members),
            "phases": list(rollout.phases), "created_at": created_at,
            "until": now if rollout.status in ACTIVE_ROLLOUTS else updated_at, "points": points,
            "marks": [{"at": d["at"], "action": d["action"], "phase": d["phase"], "reason": d["reason"]}
                      for d in registry.rollout_log(rollout_id=rollout.id)]}


def recoveries(registry: Registry, since: float, now: float) -> dict:
    bucket_s = (now - since) / BUCKETS
    series = {"power_on_boots": [0] * BUCKETS, "download_resumes": [0] * BUCKETS, "update_resumes": [0] * BUCKETS}
    sources = (("power_on_boots", Event.BOOTED), ("download_resumes", Event.DOWNLOAD_RESUMED),
               ("update_resumes", Event.UPDATE_RESUMED))
    for name, kind in sources:
        for event in registry.recent_events(kind, since=since, limit=MAX_EVENTS):
            if kind == Event.BOOTED and event["payload"].get("reset_reason") != ResetReason.POWER_ON:
                continue
            series[name][min(int((event["received_at"] - since) / bucket_s), BUCKETS - 1)] += 1
    return {"since": since, "until": now, "bucket_s": bucket_s, "series": series,
            "totals": {name: sum(counts) for name, counts in series.items()}}


def charts(registry: Registry, index: ReleaseIndex, *, hours: float, rollout_id: int | None = None,
           now: float | None = None) -> dict:
    now = time.time() if now is None else now
    since = now - hours * 3600
    return {"at": now, "hours": hours, "bandwidth": bandwidth(registry, index, since),
            "rollout": rollout_progress(registry, rollout_id, now), "recoveries": recoveries(registry, since, now)}
