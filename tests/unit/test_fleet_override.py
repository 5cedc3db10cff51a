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
    assert "ddi-tokens:/ddi-tokens" in enrol["volumes"]
    for n in (1, 2):
        device = services[f"swupdate-{n}"]
        assert device["profiles"] == ["!reset", []]
        assert device["environment"]["FOTA_DDI_TARGET_TOKEN"] == ""
        assert device["environment"]["FOTA_DDI_TARGET_TOKEN_FILE"] == f"/ddi-tokens/swupdate-{n}"
        assert "ddi-tokens:/ddi-tokens:ro" in device["volumes"]
        assert device["depends_on"] == {"swupdate-enrol": {"condition": "service_completed_successfully"}}
    # swupdate-1 keeps compose.yaml's flash volume; the others extend it with their own
    assert "extends" not in services["swupdate-1"]
    assert services["swupdate-2"]["extends"] == {"file": "compose.yaml", "service": "swupdate-1"}
    assert services["swupdate-2"]["environment"]["FOTA_DEVICE_ID"] == "swupdate-2"
    assert "swupdate-2-flash:/flash" in services["swupdate-2"]["volumes"]
    assert set(volumes) == {"ddi-tokens", "swupdate-2-flash"}


def test_lab_devices_and_swupdate_devices_together_and_none_without_the_option():
    fleet = load_fleet()
    both = parsed(fleet.override(5, 3, base="/elsewhere/compose.yaml"))
    assert both["services"]["device-5"]["extends"]["file"] == "/elsewhere/compose.yaml"
    assert both["services"]["swupdate-3"]["extends"]["file"] == "/elsewhere/compose.yaml"
    assert set(both["volumes"]) == {"device-4-flash", "device-5-flash", "ddi-tokens", "swupdate-2-flash",
                                    "swupdate-3-flash"}
    alone = parsed(fleet.override(5))
    assert not any(name.startswith("swupdate") for name in alone["services"])
    assert set(alone["volumes"]) == {"device-4-flash", "device-5-flash"}


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
