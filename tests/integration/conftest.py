"""Integration tier: real mosquitto, the real signer and gunicorn server, devices as processes."""
from __future__ import annotations

import shutil

import pytest

from fotalab import locallab

pytestmark = pytest.mark.integration


@pytest.fixture(scope="session")
def release_store(tmp_path_factory):
    """Releases 1.0.0, 2.0.0 and a bad 2.1.0 (crashes at boot), 64 KiB, signed by the real signer."""
    return locallab.build_releases(tmp_path_factory.mktemp("store"))


@pytest.fixture(scope="session")
def broker(tmp_path_factory):
    if not (shutil.which("mosquitto") or shutil.os.path.exists("/usr/sbin/mosquitto")):
        pytest.fail("mosquitto is not installed: scripts/test installs it (apt-get install mosquitto)")
    running = locallab.Broker(tmp_path_factory.mktemp("broker")).start()
    yield running
    running.stop()


@pytest.fixture
def update_server(release_store, tmp_path):
    running = locallab.Server(release_store, tmp_path / "server.log").start()
    yield running
    running.stop()


@pytest.fixture
def fleet(broker):
    """The server's view of the fleet over MQTT (the one identity allowed to send commands)."""
    with broker.watcher() as watcher:
        yield watcher


@pytest.fixture
def make_device(release_store, broker, update_server, tmp_path):
    devices = []

    def make(name: str = "dev-1", **env: str) -> locallab.Device:
        device = locallab.Device(f"{name}-{tmp_path.name}"[-40:], tmp_path / name / "flash", release_store,
                                 broker, update_server, env)
        device.flash_dir.mkdir(parents=True)
        devices.append(device)
        return device
    yield make
    for device in devices:
        device.power_cut()
