"""The chaos campaign's view of SWUpdate devices (lab/swfleet.SwFleet, lab/chaos.Campaign), without
Docker: the phase of a cut from the flash and the registry, the verdict from `fota-swdevice inspect`
and the server's record, and which devices a campaign cuts."""
from __future__ import annotations

from types import SimpleNamespace

import pytest

from fotalab.formats.swu import EnvKey, UState, render_grubenv
from fotalab.lab import chaos, swfleet
from fotalab.lab.swfleet import SwFleet, is_swdevice
from fotalab.protocol import Event, State


class FakeLab:
    def __init__(self) -> None:
        self.env: dict[str, str] | None = {EnvKey.SLOT: "a", EnvKey.USTATE: UState.OK}
        self.flash: dict = {}

    def exec_text(self, service: str, *command: str, timeout: float = 10) -> str | None:
        return render_grubenv(self.env).decode() if self.env is not None else None

    def inspect_device(self, name: str) -> dict:
        return self.flash

    def device_containers(self) -> list[str]:
        return ["device-1", "device-2", "swupdate-1", "swupdate-2"]


def fleet(lab: FakeLab, state: str = "") -> SwFleet:
    sw = SwFleet(lab, ["swupdate-1"], "http://server.invalid", "token")
    sw.states["swupdate-1"] = {"state": state, "version": "1.0.0", "state_ts": 1.0}
    return sw


def test_service_names():
    assert [is_swdevice(s) for s in ("swupdate-1", "swupdate-12", "swupdate-enrol", "device-1")] == \
        [True, True, False, False]


def test_the_phase_of_a_cut_comes_from_the_flash_first_then_the_last_feedback():
    lab = FakeLab()
    assert fleet(lab, State.DOWNLOADING).phase("swupdate-1") == "downloading"
    assert fleet(lab, State.INSTALLING).phase("swupdate-1") == "installing"
    assert fleet(lab, State.COMMITTED).phase("swupdate-1") == "idle"
    lab.env = {EnvKey.SLOT: "a", EnvKey.USTATE: UState.IN_PROGRESS}      # swupdate writes the slot
    assert fleet(lab, State.COMMITTED).phase("swupdate-1") == "installing"
    lab.env = {EnvKey.SLOT: "b", EnvKey.UPGRADE_AVAILABLE: "1", EnvKey.USTATE: UState.INSTALLED}
    assert fleet(lab, State.INSTALLING).phase("swupdate-1") == "first boot"
    lab.env = None                                                         # powered off, or no answer
    assert fleet(lab, "").phase("swupdate-1") == "idle"
    # powered on after a cut: what the registry said before is stale until the device reports again
    sw = fleet(lab, State.DOWNLOADING)
    sw.states["swupdate-1"]["state_ts"] = 100.0
    sw.powered_on["swupdate-1"] = 101.0
    assert sw.phase("swupdate-1") == "booting" and not sw.in_update("swupdate-1")
    sw.boots["swupdate-1"].append(102.0)
    assert sw.phase("swupdate-1") == "idle"
    sw.states["swupdate-1"]["state_ts"] = 103.0
    assert sw.phase("swupdate-1") == "downloading" and sw.in_update("swupdate-1")


def inspected(version: str, trial: bool = False, ustate: str = UState.OK, bootable: bool = True) -> dict:
    return {"bootable": bootable, "next_boot": "no bootable slot: a: bad; b: bad" if not bootable else "",
            "boot": {"slot": "b", "version": version, "trial": trial, "ustate": ustate},
            "running": {"slot": "b", "version": version, "trial": trial}}


@pytest.fixture
def server(monkeypatch):
    """The server's record and history of swupdate-1, as SwFleet asks for them."""
    record = {"state": State.COMMITTED, "version": "2.0.0"}
    history = [{"event": Event.COMMITTED, "payload": {"version": "2.0.0"}}]

    def get(session, url, params=None, timeout=None):
        body = {"events": history} if url.endswith("/history") else record
        return SimpleNamespace(json=lambda: body)
    monkeypatch.setattr(swfleet.requests.Session, "get", get)
    monkeypatch.setattr(swfleet.time, "sleep", lambda s: None)
    return record


def test_the_verdict_bricked_converged_or_not(server, monkeypatch):
    lab = FakeLab()
    sw = fleet(lab)
    lab.flash = inspected("2.0.0")
    assert sw.check("swupdate-1", "2.0.0")[:3] == (False, True, [])
    lab.flash = inspected("2.0.0", bootable=False)
    bricked, converged, problems, _ = sw.check("swupdate-1", "2.0.0")
    assert bricked and not converged and problems[0].startswith("bricked: no bootable slot")
    lab.flash = inspected("2.0.0", trial=True, ustate=UState.INSTALLED)
    bricked, converged, problems, _ = sw.check("swupdate-1", "2.0.0")
    assert not bricked and not converged and "on trial" in problems[0]
    server["state"] = State.ROLLED_BACK                      # the flash says 2.0.0; the server disagrees
    lab.flash = inspected("2.0.0")
    clock = iter(range(0, 1000, 20))
    monkeypatch.setattr(swfleet.time, "monotonic", lambda: next(clock))   # the 30 s it waits, at once
    assert "server records 2.0.0 (rolled_back)" in sw.check("swupdate-1", "2.0.0")[2][0]


def test_a_campaign_cuts_the_devices_it_is_told_to_and_judges_them_all():
    lab, watcher = FakeLab(), SimpleNamespace(states={}, events={})
    args = dict(server_url="http://server.invalid", http=None, target="2.0.0", kills=1, seed=1, off_s=(1, 2),
                gap_s=(1, 2),
                reset_waves=True)
    only_sw = chaos.Campaign(lab, watcher, **args, which="swupdate")
    assert only_sw.targets == ["swupdate-1", "swupdate-2"] and len(only_sw.devices) == 4
    assert chaos.Campaign(lab, watcher, **args, which="lab").targets == ["device-1", "device-2"]
    assert chaos.Campaign(lab, watcher, **args).targets == lab.device_containers()
