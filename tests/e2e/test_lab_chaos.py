"""A bounded chaos campaign on the compose lab: 20 seeded power cuts, nothing bricks, all converge."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]


def test_chaos_campaign_of_twenty_kills_bricks_nothing_and_converges(compose_lab):
    report = REPO / "test-artifacts" / "chaos-report.json"
    report.parent.mkdir(exist_ok=True)
    # the lab's published ports in the environment, as a user's shell has them: chaos reaches it over TLS
    done = subprocess.run([sys.executable, str(REPO / "scripts" / "chaos"), "--project", compose_lab.project,
                           "--kills", "20", "--seed", "7",
                           "--gap", "0.5", "2.0", "--reset-waves", "--report", str(report)],
                          capture_output=True, text=True, timeout=600, cwd=REPO, env={**os.environ, **compose_lab.env})
    print(done.stdout[-3000:], done.stderr[-2000:])
    last = done.stdout.strip().splitlines()[-1]
    match = re.fullmatch(r"chaos: (\d+) kills on (\d+) devices: (\d+) bricked, (\d+)/(\d+) converged, "
                         r"recovery p99 ([\d.]+) s", last)
    assert match, last
    kills, devices, bricked, converged, total, _ = match.groups()
    assert int(kills) >= 20 and int(devices) >= 3
    assert int(bricked) == 0 and converged == total == devices
    details = json.loads(report.read_text())
    assert all(k["recovery_s"] is not None or k["interrupted"] for k in details["kills"])
