"""A tampered release store on the real server: the device refuses before touching its flash."""
import json
import shutil

import pytest

from fotalab.lab import locallab

pytestmark = pytest.mark.integration


def flip_byte(path, where: float) -> None:
    data = bytearray(path.read_bytes())
    data[int((len(data) - 1) * where)] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.fixture
def tampered_server(release_store, tmp_path):
    servers = []

    def start(what: str, where: float, when: str) -> locallab.Server:
        store = tmp_path / f"store-{what}"
        shutil.copytree(release_store, store)
        index = json.loads((store / "index.json").read_text())
        release = next(r for r in index["releases"] if r["version"] == "2.0.0")
        target = {"delta": store / "artifacts" / release["deltas"][0]["sha256"],
                  "manifest": store / release["manifest"]}[what]
        if when == "before start":
            flip_byte(target, where)
        server = locallab.Server(store, tmp_path / f"server-{what}.log").start()
        servers.append(server)
        if when == "while serving":
            flip_byte(target, where)
        return server
    yield start
    for server in servers:
        server.stop()


@pytest.mark.parametrize("where", [0.0, 0.5, 1.0], ids=["first", "middle", "last"])
@pytest.mark.parametrize("what, when, reason", [
    ("delta", "while serving", "signed manifest says"),     # the device's own check catches it
    ("delta", "before start", "the server refuses"),        # the server's startup check catches it
    ("manifest", "before start", "manifest rejected"),
])
def test_tampered_artifact_is_refused_and_the_device_stays_on_its_image(make_device, fleet, tampered_server,
                                                                        what, when, reason, where):
    device = make_device()
    device.server = tampered_server(what, where, when)
    device.start()
    fleet.wait_for(lambda f: f.states.get(device.device_id, {}).get("state") == "running", 30, "first boot")
    before = device.inspect()["boot_copies"]
    fleet.command([device.device_id], {"cmd": "update"})
    fleet.wait_for(lambda f: f.states.get(device.device_id, {}).get("state") == "failed", 30, "refusal")
    assert reason in fleet.states[device.device_id]["reason"]
    flash = device.inspect()
    assert flash["boot_copies"] == before
    assert flash["running"]["version"] == "1.0.0"
    assert flash["slots"]["b"]["version"] == "unknown"       # nothing was installed
