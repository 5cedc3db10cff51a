"""The crash-point sweep as a test: every cut in every mode recovers, nothing bricks."""
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

SWEEP = Path(__file__).resolve().parents[2] / "scripts" / "crash-sweep"


def test_power_cut_at_every_flash_operation_recovers_in_all_three_modes():
    done = subprocess.run([sys.executable, str(SWEEP), "--jobs", "3"], capture_output=True, text=True, timeout=1500)
    print(done.stdout[-4000:])
    last = done.stdout.strip().splitlines()[-1]
    match = re.fullmatch(r"crash-sweep: (\d+) points x 3 modes: (\d+) failed, (\d+) bricked", last)
    assert match, f"unexpected last line {last!r}; stderr: {done.stderr[-2000:]}"
    points, failed, bricked = map(int, match.groups())
    assert points >= 30
    assert (failed, bricked) == (0, 0), done.stdout[-4000:]
    assert done.returncode == 0
