"""The workshop pages in docs/labs/ run exactly as written, in order, with `bash -e` from the
repository root, and show the output they promise (markup: tests/labpages.py).

The pages' plain `docker compose ...` commands reach a lab of this test's own: its project name
and ports are in the environment (COMPOSE_PROJECT_NAME, SERVER_PORT, MQTT_PORT, MQTTS_PORT), and TMPDIR is
a directory of its own. Each page's lab logs (<page>.log) and what each of its blocks printed
(<page>.out) go to test-artifacts/<project>/, and the lab is torn down afterwards, on failure too.
"""
from __future__ import annotations

import os
import signal
import subprocess
import uuid
from pathlib import Path

import pytest

from fotalab.lab.composelab import ComposeLab
from fotalab.lab.locallab import free_port
from labpages import REPO, Block, blocks, first_missing, pages

pytestmark = pytest.mark.e2e

ARTIFACTS = REPO / "test-artifacts"
OUTPUT_TAIL = 6000      # characters of a failing block's output in the failure message


def student_environment(project: str, tmp: Path) -> dict[str, str]:
    """The test's environment without the lab knobs a student's shell would not have set, plus
    the name, ports and temporary directory of this test's lab."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FOTA_", "COMPOSE_"))}
    return {**env, "COMPOSE_PROJECT_NAME": project, "SERVER_PORT": str(free_port()),
            "MQTT_PORT": str(free_port()), "MQTTS_PORT": str(free_port()), "TMPDIR": str(tmp)}


@pytest.fixture(scope="module")
def labs_lab(docker_engine):
    project = f"fotalab-labs-{uuid.uuid4().hex[:6]}"
    saved = ARTIFACTS / project
    (saved / "tmp").mkdir(parents=True)
    lab = ComposeLab(project, REPO, student_environment(project, saved / "tmp"))
    try:
        lab.compose("build")                  # the pages' `up` runs the image as it is now
        yield lab
    finally:
        lab.compose("down", "-v", "--remove-orphans", timeout=180)


def run_block(block: Block, env: dict[str, str]) -> str:
    """Run one sh block like a student pasting it into a terminal at the repository root;
    returns what it printed (stdout and stderr together), or fails the test saying why."""
    process = subprocess.Popen(["bash", "-e", "-c", block.script], cwd=REPO, env=env, stdin=subprocess.DEVNULL,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        output, _ = process.communicate(timeout=block.timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        output, _ = process.communicate()
        pytest.fail(failure(block, output, f"did not finish within {block.timeout_s:.0f} s (a wait that never "
                                           "ends? raise it with timeout=<s> on the fence if it is just slow)"))
    if process.returncode != 0:
        pytest.fail(failure(block, output, f"exited with status {process.returncode}"))
    return output


def failure(block: Block, output: str, what: str) -> str:
    return (f"lab {block.page}, the sh block at {block.where()} {what}.\n"
            f"--- the block ---\n{block.script}\n--- its output (last {OUTPUT_TAIL} characters) ---\n"
            f"{output[-OUTPUT_TAIL:]}")


def save_logs(lab: ComposeLab, page: str) -> None:
    try:
        (ARTIFACTS / lab.project / f"{Path(page).stem}.log").write_text(
            lab.compose("logs", "--no-color", "--timestamps").stdout)
    except (subprocess.SubprocessError, OSError) as exc:       # keep going: the teardown matters more
        print(f"could not save the logs of {page}: {exc}")


@pytest.mark.parametrize("page", [p.name for p in pages()])
def test_lab_page_runs_as_written(labs_lab, page):
    runnable = [b for b in blocks(REPO / "docs" / "labs" / page) if b.run]
    assert runnable, f"docs/labs/{page} has no ```sh block to run"
    transcript = ARTIFACTS / labs_lab.project / f"{Path(page).stem}.out"
    try:
        for block in runnable:
            output = run_block(block, labs_lab.env)
            with transcript.open("a") as out:        # what each block printed, to paste into the page
                out.write(f"### {block.where()}\n{block.script}\n### output\n{output}\n")
            missing = first_missing(block.expected, output)
            if missing is not None:
                pytest.fail(failure(block, output, f"ran, but its output lacks the line {missing!r} "
                                                   "(or shows it out of the page's order)"))
    finally:
        save_logs(labs_lab, page)
