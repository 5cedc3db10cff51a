"""Integration tier: real mosquitto, the real signer and gunicorn server, devices as processes."""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from fotalab.lab import locallab
from fotalab.lab.provision import SERVER, Credentials

pytestmark = pytest.mark.integration


@pytest.fixture(scope="session")
def release_store(tmp_path_factory):
    """Releases 1.0.0, 2.0.0 and a bad 2.1.0 (crashes at boot), 64 KiB, signed by the real signer."""
    return locallab.build_releases(tmp_path_factory.mktemp("store"))


@pytest.fixture(scope="module")
def store(release_store):
    """A copy of the signed store for this module (a test may plant a file in it) that nginx's
    workers can read: started as root (CI), they run as nobody, who cannot enter pytest's directories."""
    with tempfile.TemporaryDirectory(prefix="fotalab-store-") as parent:
        os.chmod(parent, 0o755)
        shutil.copytree(release_store, Path(parent) / "releases")
        yield Path(parent) / "releases"


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


class Publisher:
    """Publishes as devices would (QoS 1), with the server's identity (allowed on every device topic)."""

    def __init__(self, broker: locallab.Broker) -> None:
        self._client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"publisher-{os.urandom(3).hex()}")
        self._client.username_pw_set(SERVER, Credentials(broker.credentials).password(SERVER))
        self._client.connect("127.0.0.1", broker.port)
        self._client.loop_start()

    def send(self, device: str, kind: str, payload: dict | str, *, retain: bool = False) -> None:
        body = payload if isinstance(payload, str) else json.dumps({"device": device, **payload})
        self._client.publish(f"fota/v1/devices/{device}/{kind}", body, qos=1, retain=retain).wait_for_publish(10)

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


@pytest.fixture
def publisher(broker):
    """Device messages straight onto the broker, without a device."""
    client = Publisher(broker)
    yield client
    client.close()


@pytest.fixture
def ingesting_server(release_store, broker, tmp_path):
    """Starts servers that ingest from the broker (API token in server.env), once their ingester runs."""
    servers: list[locallab.Server] = []

    def start(workers: int = 3, name: str = "server") -> locallab.Server:
        server = locallab.Server(release_store, tmp_path / f"{name}.log", workers=workers, broker=broker,
                                 env={"FOTA_API_TOKEN": "integration-token"}).start()
        servers.append(server)
        server.ingester()
        return server
    yield start
    for server in servers:
        server.stop()


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
