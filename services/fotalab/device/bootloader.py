"""The bootloader step that runs first on every power-on: pick, verify and boot a slot.

`plan_boot` is pure: given the boot-control record and a way to check a slot, it decides
which slot to boot and what the record becomes (trial attempt counted, revert after the
limit, fall back when the chosen slot fails verification). `boot` wires it to flash.
"""
from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from ..formats.image import ImageError, ImageHeader, parse_image, verify_image
from ..formats.signing import Verifier
from ..protocol import ResetReason, RollbackCause
from .bootctl import BootControl, BootState, factory_state, other_slot, reverted, slot_file
from .flash import Flash
from .trust import ANCHOR, load_verifier


@dataclass(frozen=True)
class SlotCheck:
    slot: str
    header: ImageHeader | None
    sha256: str
    error: str = ""
    key_id: str = ""       # the key that signed the image

    @property
    def version(self) -> str:
        return self.header.version if self.header else "unknown"


@dataclass(frozen=True)
class BootPlan:
    state: BootState
    boot: SlotCheck | None       # None: no verifiable image in either slot (bricked)
    message: str


def check_slot(flash: Flash, slot: str, verifier: Verifier) -> SlotCheck:
    raw = flash.read(slot_file(slot)) or b""
    sha = hashlib.sha256(raw).hexdigest()
    if not raw:
        return SlotCheck(slot, None, sha, "slot is empty")
    try:
        return SlotCheck(slot, verify_image(raw, verifier), sha, key_id=parse_image(raw).key_id)
    except ImageError as exc:
        return SlotCheck(slot, None, sha, str(exc))


def _bootable(check: SlotCheck, state: BootState) -> str:
    """Empty if the slot may boot, else why not."""
    if check.error:
        return check.error
    if check.header.security_counter < state.security_counter:
        return (f"image {check.version} has security counter {check.header.security_counter}, "
                f"below the committed {state.security_counter} (anti-rollback)")
    return ""




def plan_boot(state: BootState, check: Callable[[str], SlotCheck], *, limit: int, reset_reason: str,
              power_cut_limit: int = 10) -> BootPlan:
    """Decide what to boot. A trial attempt is charged to the firmware only when the last reset
    was its doing (crash, watchdog, software reboot), as a real bootloader tells from the
    reset-cause register; a trial cut short by power loss counts against a larger limit, and a
    rollback for that reason does not condemn the release."""
    message = ""
    if not state.confirmed:
        if reset_reason == ResetReason.POWER_ON and state.attempts > 0:
            state = replace(state, attempts=state.attempts - 1, power_cuts=state.power_cuts + 1)
        if (state.attempts >= limit or state.power_cuts >= power_cut_limit) and state.previous:
            trial = check(state.active)
            by_firmware = state.attempts >= limit
            reason = (f"trial boot of {trial.version} in slot {state.active} was not confirmed after "
                      + (f"{state.attempts} attempts (last reset: {reset_reason})" if by_firmware else
                         f"{state.power_cuts} power cuts"))
            state = reverted(state, state.previous, version=trial.version, sha256=trial.sha256, reason=reason,
                             cause=RollbackCause.FIRMWARE if by_firmware else RollbackCause.POWER)
            message = f"reverted to slot {state.active}: {reason}"
        else:
            state = replace(state, attempts=state.attempts + 1)
            message = f"trial boot {state.attempts}/{limit} of slot {state.active}"
    chosen = check(state.active)
    problem = _bootable(chosen, state)
    if not problem:
        return BootPlan(state, chosen, message or f"booting slot {state.active}")
    fallback_slot = state.previous if (not state.confirmed and state.previous) else other_slot(state.active)
    fallback = check(fallback_slot)
    fallback_problem = _bootable(fallback, state)
    if not fallback_problem:
        reason = f"slot {state.active} failed verification: {problem}"
        state = reverted(state, fallback_slot, version=chosen.version, sha256=chosen.sha256, reason=reason,
                         cause=RollbackCause.VERIFICATION)
        return BootPlan(state, fallback, f"{reason}; booting slot {fallback_slot}")
    return BootPlan(state, None, f"no bootable image: slot {state.active}: {problem}; "
                                 f"slot {fallback_slot}: {fallback_problem}")


def provision(flash: Flash, factory_image: Path, trust_anchor: Path) -> BootState:
    """First power-on: program the factory image into slot A and the trust anchor."""
    image = factory_image.read_bytes()
    flash.replace(ANCHOR, trust_anchor.read_bytes())
    with flash.open_at(slot_file("a"), 0) as handle:
        handle.write(image)
        handle.sync()
    header = verify_image(image, Verifier(trust_anchor.read_bytes()))
    return BootControl(flash).store(factory_state(header.security_counter))


def boot(flash: Flash, *, factory_image: Path, trust_anchor: Path, limit: int,
         reset_reason: str, power_cut_limit: int = 10) -> tuple[BootPlan, Verifier]:
    flash.remove_temporaries()
    control = BootControl(flash)
    state = control.load() or provision(flash, factory_image, trust_anchor)
    verifier = load_verifier(flash)
    plan = plan_boot(state, lambda slot: check_slot(flash, slot, verifier), limit=limit,
                     reset_reason=reset_reason, power_cut_limit=power_cut_limit)
    if plan.state != state:
        plan = replace(plan, state=control.store(plan.state))
    return plan, verifier
