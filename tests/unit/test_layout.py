"""The code's map, enforced by import analysis: who may import whom (docs/architecture.md)."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "services" / "fotalab"
MAX_LINES = 600
# Modules that start a process: they may read the environment and reach into lab/.
ENTRY_POINTS = {"cli", "device.main", "device.swdevice", "server.main", "signer.main"}
ENVIRONMENT_READERS = {"envconfig"} | ENTRY_POINTS


def modules() -> dict[str, Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imported(name: str, path: Path) -> set[str]:
    """The fotalab modules `name` imports, as dotted names below fotalab."""
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    targets = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            elif node.module and node.module.startswith("fotalab"):
                target = node.module.removeprefix("fotalab").lstrip(".")
            else:
                continue
            targets |= {f"{target}.{alias.name}".strip(".") for alias in node.names} | {target}
        elif isinstance(node, ast.Import):
            targets |= {a.name.removeprefix("fotalab.") for a in node.names if a.name.startswith("fotalab.")}
    return {t for t in targets if t}


def room(module: str) -> str:
    return module.split(".")[0]


GRAPH = {name: imported(name, path) for name, path in modules().items()}


def offenders(rooms: set[str], forbidden: set[str]) -> list[str]:
    return sorted(f"{name} imports {target}" for name, targets in GRAPH.items() if room(name) in rooms
                  for target in targets if room(target) in forbidden)


def test_formats_import_no_service_package():
    assert offenders({"formats"}, {"device", "server", "signer", "lab", "cli"}) == []


def test_the_server_never_imports_device_or_signer_code():
    assert offenders({"server"}, {"device", "signer", "lab"}) == []


def test_the_device_never_imports_server_or_signer_code():
    assert offenders({"device"}, {"server", "signer", "lab"}) == []


def test_the_signer_imports_no_device_or_server_code():
    assert offenders({"signer"}, {"device", "server", "lab"}) == []


def test_the_front_door_imports_no_other_room():
    """It is nginx and its configuration: what it serves is the store's layout, not the server's code."""
    assert offenders({"frontdoor"}, {"formats", "device", "server", "signer", "lab", "cli"}) == []


def test_only_lab_tooling_and_entry_points_import_lab():
    outside = {room(name) for name in GRAPH} - {"lab"}
    found = [line for line in offenders(outside, {"lab"}) if line.split()[0] not in ENTRY_POINTS]
    assert found == []


def test_no_module_below_an_entry_point_reads_the_environment():
    readers = sorted(name for name, path in modules().items()
                     if room(name) != "lab" and name not in ENVIRONMENT_READERS
                     and ("os.environ" in path.read_text() or "getenv(" in path.read_text()))
    assert readers == [], "read settings in the service's config dataclass (envconfig.Env), not here"


@pytest.mark.parametrize("name", sorted(modules()))
def test_every_module_stays_readable_in_size(name):
    lines = modules()[name].read_text().count("\n")
    assert lines <= MAX_LINES, f"{name} has {lines} lines; split it by job (docs/architecture.md)"


def test_the_import_graph_sees_imports():
    """The analysis itself: it must see the device's known dependencies, or every rule passes vacuously."""
    assert {"formats.manifest", "device.flash", "protocol"} <= GRAPH["device.engine"]
    assert "lab.chaos" in GRAPH["cli"]
