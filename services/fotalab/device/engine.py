"""The update engine: check -> download -> verify -> install -> stage -> (reboot) -> trial -> commit.

All I/O sits behind small interfaces (flash, transport, reporter, patcher, clock), in the
manner of python-tuf's ngclient, so the same engine runs in a container, under the
crash-point sweep and in unit tests. Every step is journaled before it is acted on, so a
power cut at any operation resumes where it left off; nothing touches the running slot.
"""
from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Protocol

from ..formats.image import ImageError, verify_image
from ..formats.manifest import Manifest, ManifestError, parse_document, parse_manifest, verify_manifest
from ..formats.rotation import CHAIN_NAME, RotationError, parse_chain, successor
from ..formats.signing import Verifier
from ..protocol import Event, RollbackCause, State
from . import journal as jr
from .bootctl import BootControl, BootState, committed, other_slot, slot_file, staged
from .bootloader import SlotCheck
from .errors import Reboot, TransportError, UpdateFailed
from .flash import Flash
from .trust import finish_rotation, stage_successor

QUARANTINE = "quarantine.json"
IDLE = "idle"        # resume(): no update pending and nothing to report (not a wire state)


class Transport(Protocol):
    def fetch_manifest(self, *, device_id: str, hardware: str, version: str, image_sha256: str) -> bytes | None: ...
    def fetch_document(self, name: str) -> bytes: ...
    def open_range(self, url_path: str, start: int, end: int) -> Iterator[bytes]: ...


class Reporter(Protocol):
    def state(self, state: str, **fields: object) -> None: ...
    def event(self, kind: str, **fields: object) -> None: ...


# base image path, artifact path, encoding, max output -> chunks of the new image
Patcher = Callable[[str, str, str, int], Iterator[bytes]]


@dataclass(frozen=True)
class EngineConfig:
    device_id: str
    hardware: str
    chunk_size: int = 64 * 1024
    retries: int = 6
    backoff_s: float = 1.0
    backoff_max_s: float = 30.0


class UpdateEngine:
    def __init__(self, config: EngineConfig, flash: Flash, running: SlotCheck, verifier: Verifier,
                 transport: Transport, reporter: Reporter, patcher: Patcher,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.config, self.flash, self.running, self.verifier = config, flash, running, verifier
        self.transport, self.reporter, self.patcher, self.sleep = transport, reporter, patcher, sleep
        self.bootctl = BootControl(flash)

    # -- after every boot
    def resume(self) -> str:
        """Reconcile the journal with the boot record; returns State.TRIAL, IDLE or a result state."""
        state = self._boot_state()
        if not state.confirmed:
            return State.TRIAL
        job = jr.load(self.flash)
        if job is None:
            self._finish_rotation()
            return IDLE
        target_sha = self._manifest_of(job).image.sha256
        if self.running.sha256 == target_sha:
            self._finish_rotation()
            jr.clear(self.flash)   # committed before the cut that kept the journal
            self.reporter.state(State.COMMITTED, target=job.version)
            return State.COMMITTED
        if state.rollback and state.rollback.sha256 == target_sha and state.rollback.seq > job.started_seq:
            if state.rollback.cause == RollbackCause.FIRMWARE:     # power cuts or bit rot do not condemn a release
                self._quarantine(target_sha)
            self._finish_rotation()
            jr.clear(self.flash)
            self.reporter.event(Event.ROLLED_BACK, target=job.version, reason=state.rollback.reason)
            self.reporter.state(State.ROLLED_BACK, target=job.version, reason=state.rollback.reason)
            return State.ROLLED_BACK
        self.reporter.event(Event.UPDATE_RESUMED, target=job.version, phase=job.phase, offset=job.offset)
        return self._run(job)

    def confirm(self) -> None:
        """The trial image passed its health check: make it the committed image."""
        state = self._boot_state()
        if state.confirmed:
            return
        self.bootctl.store(committed(state, self.running.header.security_counter))
        self._finish_rotation()
        job = jr.load(self.flash)
        jr.clear(self.flash)
        self.reporter.event(Event.COMMITTED, version=self.running.version)
        self.reporter.state(State.COMMITTED, target=job.version if job else self.running.version)

    def reject_trial(self, reason: str) -> None:
        self.reporter.event(Event.TRIAL_FAILED, version=self.running.version, reason=reason)
        self.reporter.state(State.TRIAL_FAILED, reason=reason)
        raise Reboot(f"trial failed: {reason}")

    # -- on a command (a hint to check the server)
    def check(self) -> str:
        state = self._boot_state()
        if not state.confirmed:
            return State.TRIAL
        self.reporter.state(State.CHECKING)
        try:
            document = self._with_retries("manifest", lambda: self.transport.fetch_manifest(
                device_id=self.config.device_id, hardware=self.config.hardware,
                version=self.running.version, image_sha256=self.running.sha256))
        except UpdateFailed as exc:
            self.reporter.state(State.FAILED, reason=str(exc))
            return State.FAILED
        if document is None:
            self.reporter.state(State.UP_TO_DATE)
            return State.UP_TO_DATE
        try:
            new_key_id, chain = self._rotation_for(document)
            manifest = self._verify(document, self._verifier_for(new_key_id, chain))
        except UpdateFailed as exc:
            self.reporter.event(Event.REJECTED, reason=str(exc))
            self.reporter.state(State.FAILED, reason=str(exc))
            return State.FAILED
        job = jr.load(self.flash)
        if job is None or self._manifest_of(job).image.sha256 != manifest.image.sha256:
            jr.clear(self.flash)
            job = jr.store(self.flash, self._new_job(document, manifest, state).advance(
                new_key_id=new_key_id, rotation=chain))
            self.reporter.event(Event.UPDATE_STARTED, target=job.version, artifact=job.artifact.kind,
                                length=job.artifact.length)
        return self._run(job)

    # -- the steps
    def _run(self, job: jr.Journal) -> str:
        try:
            manifest = self._verify(job.manifest.encode(), self._verifier_for(job.new_key_id, job.rotation))
            if job.phase == "download":
                job = self._download(job)
            return self._install(job, manifest)
        except UpdateFailed as exc:
            self.reporter.event(Event.FAILED, target=job.version, reason=str(exc))
            self.reporter.state(State.FAILED, target=job.version, reason=str(exc))
            return State.FAILED

    def _new_job(self, document: bytes, manifest: Manifest, state: BootState) -> jr.Journal:
        delta = manifest.delta_for(self.running.sha256)
        if delta is not None:
            artifact = jr.Artifact("delta", delta.name, delta.sha256, delta.length, delta.encoding,
                                   delta.base_sha256)
        else:
            image = manifest.image
            artifact = jr.Artifact("image", image.name, image.sha256, image.length)
        return jr.Journal("download", manifest.version, document.decode(), artifact,
                          other_slot(self.running.slot), started_seq=state.seq)

    def _download(self, job: jr.Journal) -> jr.Journal:
        artifact = job.artifact
        offset = min(job.offset, self.flash.size(jr.DOWNLOAD))
        if offset:
            job = jr.store(self.flash, job.advance(resumes=job.resumes + 1, offset=offset))
            self.reporter.event(Event.DOWNLOAD_RESUMED, target=job.version, offset=offset, length=artifact.length)
        url = f"/artifacts/{artifact.sha256}"
        with self.flash.open_at(jr.DOWNLOAD, offset) as part:
            def fetch() -> None:
                nonlocal job
                for chunk in self.transport.open_range(url, part.position, artifact.length):
                    chunk = chunk[: artifact.length - part.position]
                    part.write(chunk)
                    part.sync()
                    job = jr.store(self.flash, job.advance(offset=part.position))
                    self.reporter.state(State.DOWNLOADING, target=job.version, offset=part.position,
                                        length=artifact.length, progress=round(part.position / artifact.length, 4))
                    if part.position >= artifact.length:
                        return
                if part.position < artifact.length:
                    raise TransportError(f"transfer ended at byte {part.position} of {artifact.length}")
            if part.position < artifact.length:     # a cut may have come after the last byte
                self._with_retries("download", fetch, progress=lambda: part.position)
        data = self.flash.read(jr.DOWNLOAD) or b""
        digest = hashlib.sha256(data).hexdigest()
        if len(data) != artifact.length or digest != artifact.sha256:
            jr.clear(self.flash)
            raise UpdateFailed(f"downloaded {artifact.kind} {artifact.name} is {len(data)} bytes with SHA-256 "
                               f"{digest[:16]}, but the signed manifest says {artifact.length} bytes, "
                               f"{artifact.sha256[:16]}: discarded, the running image is untouched; the server's "
                               "copy or the link delivered bad bytes (the next update hint downloads it again)")
        self.reporter.event(Event.DOWNLOADED, target=job.version, length=artifact.length, resumes=job.resumes)
        return jr.store(self.flash, job.advance(phase="install"))

    def _install(self, job: jr.Journal, manifest: Manifest) -> str:
        target = job.target_slot
        if target == self.running.slot:
            raise UpdateFailed(f"refusing to write slot {target}: it holds the running image")
        artifact = job.artifact
        self.reporter.state(State.INSTALLING, target=job.version, slot=target)
        if artifact.kind == "delta" and artifact.base_sha256 != self.running.sha256:
            jr.clear(self.flash)
            raise UpdateFailed("delta base does not match the running image; check again for a full image")
        chunks = self.patcher(str(self.flash.path(slot_file(self.running.slot))), str(self.flash.path(jr.DOWNLOAD)),
                              artifact.encoding if artifact.kind == "delta" else "", manifest.image.length)
        try:
            with self.flash.open_at(slot_file(target), 0) as slot:
                for chunk in chunks:
                    slot.write(chunk)
                slot.sync()
        except UpdateFailed as exc:
            if artifact.kind != "delta":
                jr.clear(self.flash)
                raise
            # a delta that verifies but does not apply is useless here: fetch the full image
            self.reporter.event(Event.DELTA_REJECTED, target=job.version, reason=str(exc))
            image = manifest.image
            full = jr.Artifact("image", image.name, image.sha256, image.length)
            job = jr.store(self.flash, job.advance(phase="download", offset=0, artifact=full))
            return self._install(self._download(job), manifest)
        image = self.flash.read(slot_file(target)) or b""
        problem = ""
        if hashlib.sha256(image).hexdigest() != manifest.image.sha256 or len(image) != manifest.image.length:
            problem = "the installed image does not match the signed length and SHA-256"
        else:
            try:
                header = verify_image(image, self._verifier_for(job.new_key_id, job.rotation))
                if (header.version, header.hardware) != (manifest.version, manifest.hardware):
                    problem = f"image header says {header.version} for {header.hardware}, manifest differs"
            except ImageError as exc:
                problem = str(exc)
        if problem:
            jr.clear(self.flash)
            raise UpdateFailed(f"installed {manifest.version} failed verification ({problem}); "
                               "slot left unbootable, running image kept")
        if job.rotation:
            stage_successor(self.flash, job.new_key_id, job.rotation)
        self.bootctl.store(staged(self._boot_state(), target))
        self.reporter.event(Event.STAGED, target=job.version, slot=target)
        self.reporter.state(State.REBOOTING, target=job.version, slot=target)
        raise Reboot(f"boot {manifest.version} from slot {target} on trial")

    # -- helpers
    def _boot_state(self) -> BootState:
        state = self.bootctl.load()
        if state is None:
            raise RuntimeError("boot-control record vanished while running")
        return state

    def _rotation_for(self, document: bytes) -> tuple[str, list]:
        """If the manifest is signed by a key the device does not trust yet, the signed chain
        of rotation statements from its anchor to that key (fetched from the server)."""
        try:
            signed_by = parse_document(document)[1][0]["keyid"]
        except (ManifestError, IndexError, KeyError, TypeError):
            return "", []          # verification names the problem
        if self.verifier.trusts(signed_by):
            return "", []
        try:
            chain = parse_chain(self._with_retries("key rotation chain",
                                                   lambda: self.transport.fetch_document(CHAIN_NAME)))
            successor(self.verifier, chain, signed_by)
        except RotationError as exc:
            raise UpdateFailed(f"manifest rejected: {exc}") from None
        return signed_by, chain

    def _verifier_for(self, new_key_id: str, chain: list) -> Verifier:
        """The device's keys, plus the successor a verified rotation chain announces."""
        if not chain:
            return self.verifier
        try:
            return Verifier(*self.verifier.public_pems, successor(self.verifier, chain, new_key_id))
        except RotationError as exc:
            raise UpdateFailed(f"manifest rejected: {exc}") from None

    def _finish_rotation(self) -> None:
        if finish_rotation(self.flash, self.running.key_id):
            self.reporter.event(Event.KEY_ROTATED, key_id=self.running.key_id)

    def _verify(self, document: bytes, verifier: Verifier) -> Manifest:
        state = self._boot_state()
        try:
            manifest = verify_manifest(document, verifier, hardware=self.config.hardware,
                                       running_version=self.running.version,
                                       security_counter=state.security_counter)
        except ManifestError as exc:
            raise UpdateFailed(f"manifest rejected: {exc}") from None
        if manifest.image.sha256 in self._quarantined():
            raise UpdateFailed(f"release {manifest.version} rolled back on this device before and is "
                               "quarantined here; publish a fixed release with a new version")
        return manifest

    def _manifest_of(self, job: jr.Journal) -> Manifest:
        return parse_manifest(job.manifest.encode())

    def _with_retries(self, what: str, action: Callable[[], object], progress: Callable[[], int] = lambda: 0):
        """Retry transient failures with exponential backoff. The budget counts failures in a row
        without `progress`, so a flaky link that drops every few KiB still gets there."""
        delay, attempt, mark = self.config.backoff_s, 0, progress()
        while True:
            try:
                return action()
            except TransportError as exc:
                if progress() != mark:
                    delay, attempt, mark = self.config.backoff_s, 0, progress()
                attempt += 1
                if attempt == self.config.retries:
                    raise UpdateFailed(f"{what} failed {attempt} times in a row, last: {exc}; the journal keeps "
                                       "the progress, send the update command again to resume") from None
                self.reporter.event(Event.RETRY, what=what, attempt=attempt, reason=str(exc), delay_s=delay)
                self.sleep(delay)
                delay = min(delay * 2, self.config.backoff_max_s)

    def _quarantined(self) -> list[str]:
        raw = self.flash.read(QUARANTINE)
        return json.loads(raw) if raw else []

    def _quarantine(self, sha256: str) -> None:
        entries = self._quarantined()
        if sha256 not in entries:
            self.flash.replace(QUARANTINE, json.dumps(entries + [sha256]).encode())
