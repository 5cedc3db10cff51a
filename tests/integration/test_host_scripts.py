"""Every host script works on a fresh clone without an activated environment.

A fresh `git clone` of this repository (what is committed, at HEAD) and a shell whose PATH has
only the system Python's directory and /usr/bin:/bin (no .venv on it, no VIRTUAL_ENV): each
script answers `--help` with its usage and exit status 0. The Python scripts get there by
themselves (`import hostenv` makes the clone's own .venv with scripts/venv and re-runs them in
it); scripts/fleet needs only the standard library, scripts/lab only bash.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
WHEELHOUSE = REPO / "services" / "wheelhouse"
# The Python this project's .venv was made from: the one a fresh shell finds, without the venv.
SYSTEM_PYTHON_DIR = Path(sys.base_prefix) / "bin"
SETUP_TIMEOUT_S = 900      # the clone's .venv: one `pip install -e '.[test]'`
HELP_TIMEOUT_S = 120


def committed_benches() -> list[str]:
    """The bench-* scripts at HEAD (the clone has those, whatever the working tree adds)."""
    try:
        listed = subprocess.run(["git", "-C", str(REPO), "ls-tree", "--name-only", "HEAD", "scripts/"],
                                capture_output=True, text=True, check=True).stdout.split()
    except (OSError, subprocess.CalledProcessError):
        return sorted(p.name for p in (REPO / "scripts").glob("bench-*"))
    return sorted(Path(p).name for p in listed if Path(p).name.startswith("bench-"))


SCRIPTS = ["chaos", "crash-sweep", *committed_benches(), "lab", "fleet", "stack", "swarm-chaos"]


def bare_environment() -> dict[str, str]:
    """A fresh login's environment: no virtual environment, PATH with only the system Python's
    directory and /usr/bin:/bin. pip may use the lab's wheelhouse, where it exists, to go faster."""
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONHOME", "PYTHONPATH")}
    env["PATH"] = os.pathsep.join(dict.fromkeys([str(SYSTEM_PYTHON_DIR), "/usr/bin", "/bin"]))
    if any(WHEELHOUSE.glob("*.whl")):
        env["PIP_FIND_LINKS"] = " ".join(filter(None, [str(WHEELHOUSE), os.environ.get("PIP_FIND_LINKS")]))
    return env


def run(clone: Path, command: list[str], timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run(command, cwd=clone, env=bare_environment(), stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def clone(tmp_path_factory) -> Path:
    """A fresh clone of HEAD, with its own .venv made the way every Python script makes it."""
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("needs git and a git checkout of the repository")
    if not any((SYSTEM_PYTHON_DIR / name).exists() for name in ("python3", "python3.11", "python3.12", "python3.13")):
        pytest.skip(f"no python3 in {SYSTEM_PYTHON_DIR} (this interpreter's base installation)")
    target = tmp_path_factory.mktemp("clone") / "fota-lab"
    subprocess.run(["git", "clone", "--quiet", str(REPO), str(target)], check=True, timeout=300)
    assert not (target / ".venv").exists()
    setup = run(target, ["scripts/venv"], SETUP_TIMEOUT_S)
    assert setup.returncode == 0, f"scripts/venv failed on a fresh clone:\n{setup.stderr[-4000:]}"
    assert Path(setup.stdout.strip().splitlines()[-1]).parent.parent == target / ".venv", setup.stdout
    return target


def test_the_fresh_environment_has_no_venv():
    env = bare_environment()
    assert "VIRTUAL_ENV" not in env
    assert ".venv" not in env["PATH"]


@pytest.mark.parametrize("script", SCRIPTS)
def test_script_answers_help_on_a_fresh_clone(clone, script):
    assert (clone / "scripts" / script).exists(), f"scripts/{script} is not committed"
    done = run(clone, [f"scripts/{script}", "--help"], HELP_TIMEOUT_S)
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"scripts/{script} --help exited {done.returncode}:\n{output[-4000:]}"
    assert re.search(r"^usage: ", done.stdout, re.MULTILINE | re.IGNORECASE), (
        f"scripts/{script} --help printed no usage line:\n{output[-4000:]}")
