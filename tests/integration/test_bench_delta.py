"""scripts/bench-delta on two tiny pairs, with whichever peers are installed: a table and the exact last line.
The figures are not asserted (benchmarks never gate anything)."""
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest

from fotalab.signer.fwgen import firmware_versions

pytestmark = pytest.mark.integration

BENCH = Path(__file__).resolve().parents[2] / "scripts" / "bench-delta"


def edited(rng: random.Random, data: bytes) -> bytes:
    """A few replaced, inserted and deleted runs of bytes."""
    out = bytearray(data)
    for _ in range(6):
        at = rng.randrange(len(out) - 64)
        run = rng.randbytes(rng.randrange(1, 48))
        kind = rng.randrange(3)
        if kind == 0:
            out[at:at + len(run)] = run
        elif kind == 1:
            out[at:at] = run
        else:
            del out[at:at + len(run)]
    return bytes(out)


def test_bench_delta_prints_a_table_and_the_summary_line(tmp_path):
    thumb = tmp_path / "gen_thumb_cortex-m4"
    noise = tmp_path / "random_bytes"
    for folder in (thumb, noise):
        folder.mkdir()
    old, new = firmware_versions(7, 16 * 1024, 2, "thumb")
    (thumb / "old.bin").write_bytes(old)
    (thumb / "new.bin").write_bytes(new)
    rng = random.Random(7)
    old = rng.randbytes(24 * 1024)
    (noise / "old.bin").write_bytes(old)
    (noise / "new.bin").write_bytes(edited(rng, old))

    done = subprocess.run([sys.executable, str(BENCH), "--no-install", str(tmp_path)],
                          capture_output=True, text=True, timeout=120)
    print(done.stdout[-4000:], done.stderr[-2000:])
    lines = done.stdout.strip().splitlines()
    assert any(line.startswith("| pair | new | bsdiff4 |") for line in lines)
    rows = [line for line in lines if line.startswith(("| gen_thumb_cortex-m4 |", "| random_bytes |"))]
    assert len(rows) == 2
    assert re.fullmatch(r"bench-delta: 2 pairs, geomean size vs bsdiff4 \d+\.\d\d, vs best peer (\d+\.\d\d|n/a)",
                        lines[-1]), lines[-1]
    assert "ERROR" not in done.stdout
    assert done.returncode == 0
