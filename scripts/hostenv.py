"""Host scripts run in the project's environment: `import hostenv` first thing in a script.

A script started with the system Python (its shebang) is re-executed with `.venv/bin/python`,
after `scripts/venv` has created or refreshed the environment when it is missing or stale, so
every command in the README works on a fresh clone without activating anything.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VENV = ROOT / ".venv"


def _in_venv() -> bool:
    return Path(sys.prefix).resolve() == VENV.resolve()


if not _in_venv():
    setup = subprocess.run([str(ROOT / "scripts" / "venv")], stdout=subprocess.PIPE, text=True)
    if setup.returncode != 0:
        sys.exit(f"{Path(sys.argv[0]).name}: could not prepare the project's environment "
                 f"(scripts/venv exited {setup.returncode}); run scripts/venv to see why")
    python = setup.stdout.strip().splitlines()[-1]
    os.execv(python, [python, sys.argv[0], *sys.argv[1:]])
