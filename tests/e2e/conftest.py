"""E2E tier: the compose lab itself, with `docker kill` and `docker start`.

Skips with the reason where no Docker engine answers, unless FOTA_REQUIRE_DOCKER=1 (CI),
where a missing engine is a failure. The lab is always torn down (containers, volumes,
networks), on failure too.
"""
from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

import pytest

from fotalab.lab.composelab import ComposeLab, docker_problem
from fotalab.lab.labaccess import LabAccess, reach
from fotalab.lab.locallab import free_port

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "test-artifacts"
TEST_FAILED = pytest.StashKey[bool]()     # set on a test whose call failed, for fixtures that save evidence


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    report = (yield).get_result()
    if report.when == "call" and report.failed:
        item.stash[TEST_FAILED] = True


@pytest.fixture
def call_failed(request) -> Callable[[], bool]:
    """Asked at teardown: did this test's call fail? (to save evidence such as a screenshot)"""
    return lambda: request.node.stash.get(TEST_FAILED, False)


@pytest.fixture(scope="session")
def require() -> Callable[[str | None], None]:
    """Skips a test whose part is missing (the problem says what and how to get it), except
    where CI demands every tier (FOTA_REQUIRE_DOCKER=1): there a missing part fails."""
    def check(problem: str | None) -> None:
        if problem and os.environ.get("FOTA_REQUIRE_DOCKER") == "1":
            pytest.fail(f"FOTA_REQUIRE_DOCKER=1 but {problem}")
        if problem:
            pytest.skip(problem)
    return check


@pytest.fixture(scope="session")
def docker_engine(require) -> None:
    problem = docker_problem()
    require(f"e2e needs Docker: {problem}" if problem else None)


@contextmanager
def running(lab: ComposeLab, *, up_s: float, down_s: float,
            log_args: tuple[str, ...] = ("--tail", "200")) -> Iterator[ComposeLab]:
    """`lab` built and up until the block ends; then its logs (`docker compose logs --no-color
    LOG_ARGS`) go to test-artifacts/<project>.log and it is removed with its volumes, on failure too."""
    try:
        lab.compose("build")
        lab.compose("up", "-d", "--wait", timeout=up_s)
        yield lab
    finally:
        ARTIFACTS.mkdir(exist_ok=True)
        try:
            (ARTIFACTS / f"{lab.project}.log").write_text(lab.compose("logs", "--no-color", *log_args).stdout)
        except Exception as exc:   # keep tearing down even if logs fail
            print(f"could not save lab logs: {exc}")
        lab.compose("down", "-v", "--remove-orphans", timeout=down_s)


@pytest.fixture(scope="session")
def running_lab() -> Callable[..., AbstractContextManager[ComposeLab]]:
    """What starts a compose lab for a test module and tears it down (`running`)."""
    return running


@pytest.fixture(scope="session")
def compose_lab(docker_engine):
    lab = ComposeLab(f"fotalab-e2e-{uuid.uuid4().hex[:6]}", REPO, {
        **published_ports(),
        # a slow link (NB-IoT-like) so a download lasts long enough to be cut by `docker kill`
        "FOTA_RADIO_KBPS": os.environ.get("FOTA_E2E_RADIO_KBPS", "4"),
        "FOTA_CHUNK_SIZE": "1024"})
    with running(lab, up_s=300, down_s=120) as started:
        yield started


def published_ports() -> dict[str, str]:
    """Free ports on this machine for a compose lab's broker (plain and TLS) and front door."""
    return {name: str(free_port()) for name in ("MQTT_PORT", "MQTTS_PORT", "SERVER_PORT")}


def access(lab: ComposeLab, directory: Path) -> LabAccess:
    """How a test reaches a compose lab started with published_ports(): over TLS as fota-tools."""
    return reach(lab, "127.0.0.1", int(lab.env["SERVER_PORT"]), int(lab.env["MQTT_PORT"]), int(lab.env["MQTTS_PORT"]),
                 directory)


@pytest.fixture(scope="session")
def lab_ports() -> Callable[[], dict[str, str]]:
    """What picks free published ports for a test's own compose lab."""
    return published_ports


@pytest.fixture(scope="session")
def reach_lab(tmp_path_factory) -> Callable[[ComposeLab], LabAccess]:
    """What reaches a test's own compose lab (the tools' identity in a temporary directory)."""
    return lambda lab: access(lab, tmp_path_factory.mktemp("lab-identity"))


@pytest.fixture(scope="session")
def lab_access(compose_lab, reach_lab) -> LabAccess:
    return reach_lab(compose_lab)


@pytest.fixture(scope="session")
def server_url(lab_access) -> str:
    """The lab's front door, as https://127.0.0.1:<SERVER_PORT>."""
    return lab_access.server_url


@pytest.fixture(scope="session")
def http(lab_access):
    """A requests session that trusts the lab CA and presents the server's certificate."""
    with lab_access.session() as session:
        yield session


@pytest.fixture
def fleet(lab_access):
    """The fleet over MQTT, seen as the server sees it, by an identity that may send commands."""
    with lab_access.watcher() as watcher:
        yield watcher


@pytest.fixture
def factory_fleet(compose_lab, fleet) -> Callable[..., list[str]]:
    """Erase devices' flash and wait until they run the factory image 1.0.0 (every device by
    default): each test starts from a known fleet, whatever the tests before it left."""
    def reset(devices: list[str] | None = None) -> list[str]:
        devices = devices or compose_lab.services()
        for device in devices:
            compose_lab.reset_flash(device)
        fleet.wait_for(lambda f: all(f.states.get(d, {}).get("version") == "1.0.0"
                                     and f.states[d].get("state") == "running" for d in devices), 90,
                       f"{', '.join(devices)} back on the factory image 1.0.0")
        return devices
    return reset
