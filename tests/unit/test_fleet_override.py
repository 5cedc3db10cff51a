"""scripts/fleet's compose override: lab devices beyond compose.yaml's three, and SWUpdate devices
(`--swupdate M`) enrolled by a one-shot job that hands each its TargetToken in a file."""
from __future__ import annotations

import importlib.machinery
import importlib.util
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]


def load_fleet():
    loader = importlib.machinery.SourceFileLoader("fleet_script", str(REPO / "scripts" / "fleet"))
    spec = importlib.util.spec_from_loader("fleet_script", loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


class ResetLoader(yaml.SafeLoader):
    """compose's `!reset` tag (the override clears the profile swupdate-1 is parked in)."""


ResetLoader.add_constructor("!reset", lambda loader, node: ["!reset", loader.construct_sequence(node)])


def parsed(text: str) -> dict:
    return yaml.load(text, Loader=ResetLoader)


def test_swupdate_devices_leave_the_profile_get_their_own_flash_and_a_token_file():
    fleet = load_fleet()
    services = parsed(fleet.override(3, 2))["services"]
    volumes = parsed(fleet.override(3, 2))["volumes"]
    assert "device-4" not in services
    enrol = services["swupdate-enrol"]
    assert enrol["extends"] == {"file": "compose.yaml", "service": "cli"} and enrol["profiles"] == ["!reset", []]
    assert enrol["command"][:4] == ["python3", "-m", "fotalab.lab.swfleet", "enrol"]
    assert enrol["command"][-2:] == ["swupdate-1", "swupdate-2"]
    assert enrol["command"][4:6] == ["--tokens", "/credentials/{name}/ddi-token"]
    # the job writes each token into that device's own credentials volume
    assert {"swupdate-1-credentials:/credentials/swupdate-1", "swupdate-2-credentials:/credentials/swupdate-2"} \
        <= set(enrol["volumes"])
    for n in (1, 2):
        device = services[f"swupdate-{n}"]
        assert device["profiles"] == ["!reset", []]
        assert device["environment"]["FOTA_DDI_TARGET_TOKEN"] == ""
        assert device["environment"]["FOTA_DDI_TARGET_TOKEN_FILE"] == "/credentials/ddi-token"
        assert device["depends_on"] == {"swupdate-enrol": {"condition": "service_completed_successfully"}}
    # the provisioner makes swupdate-2's certificate into its volume, which the device mounts as its only credentials
    assert services["provisioner"]["environment"]["FOTA_SWUPDATE_DEVICES"] == 2
    assert "swupdate-2-credentials:/credentials/swupdate-2" in services["provisioner"]["volumes"]
    assert "swupdate-2-credentials:/credentials:ro" in services["swupdate-2"]["volumes"]
    # swupdate-1 keeps compose.yaml's flash volume; the others extend it with their own
    assert "extends" not in services["swupdate-1"]
    assert services["swupdate-2"]["extends"] == {"file": "compose.yaml", "service": "swupdate-1"}
    assert services["swupdate-2"]["environment"]["FOTA_DEVICE_ID"] == "swupdate-2"
    assert "swupdate-2-flash:/flash" in services["swupdate-2"]["volumes"]
    assert set(volumes) == {"swupdate-2-flash", "swupdate-2-credentials"}


def test_lab_devices_and_swupdate_devices_together_and_none_without_the_option():
    fleet = load_fleet()
    both = parsed(fleet.override(5, 3, base="/elsewhere/compose.yaml"))
    assert both["services"]["device-5"]["extends"]["file"] == "/elsewhere/compose.yaml"
    assert both["services"]["swupdate-3"]["extends"]["file"] == "/elsewhere/compose.yaml"
    assert set(both["volumes"]) == {f"{name}-{kind}" for name in ("device-4", "device-5", "swupdate-2", "swupdate-3")
                                    for kind in ("flash", "credentials")}
    alone = parsed(fleet.override(5))
    assert not any(name.startswith("swupdate") for name in alone["services"])
    assert set(alone["volumes"]) == {"device-4-flash", "device-5-flash", "device-4-credentials", "device-5-credentials"}


def test_each_device_mounts_only_its_own_credentials_and_the_ca_holders_see_them_all():
    services = parsed(load_fleet().override(5))["services"]
    for n in (4, 5):
        mounts = services[f"device-{n}"]["volumes"]
        assert f"device-{n}-credentials:/credentials:ro" in mounts
        assert not any(m.startswith("credentials:") for m in mounts)
        for holder in ("provisioner", "cli"):
            assert f"device-{n}-credentials:/credentials/device-{n}" in services[holder]["volumes"]


def run_fleet(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "scripts" / "fleet"), *args], capture_output=True, text=True,
                          timeout=60)


def test_the_script_writes_the_override_where_told_and_three_without_swupdate_removes_it(tmp_path):
    output = tmp_path / "fleet.yaml"
    done = run_fleet("3", "--swupdate", "2", "--output", str(output))
    assert done.returncode == 0, done.stderr
    assert "2 SWUpdate devices" in done.stdout
    services = parsed(output.read_text())["services"]
    assert {"swupdate-enrol", "swupdate-1", "swupdate-2"} <= set(services)
    # written outside the repository, it names compose.yaml by its absolute path
    assert services["swupdate-2"]["extends"]["file"] == str(REPO / "compose.yaml")
    assert run_fleet("3", "--output", str(output)).returncode == 0
    assert not output.exists()
    refused = run_fleet("3", "--swupdate", "51", "--output", str(output))
    assert refused.returncode == 2 and "outside 0-50" in refused.stderr
