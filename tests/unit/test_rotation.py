"""Key rotation on the device: a signed statement from the current key brings its successor."""
from __future__ import annotations

import json

import pytest
from device_harness import power_on, sha

from fotalab.device.bootctl import BootControl, committed
from fotalab.device.errors import Reboot
from fotalab.device.flash import Flash
from fotalab.device.trust import ANCHOR, PENDING
from fotalab.formats.image import Behaviour
from fotalab.formats.rotation import RotationError, make_rotation, successor
from fotalab.formats.signing import Signer, Verifier, generate_private_key, private_key_pem
from samples import edit, make_image, make_payload


def rotation_chain(old: Signer, new: Signer) -> bytes:
    """The key-rotations.json document announcing `new`, signed by `old`."""
    return json.dumps([json.loads(make_rotation(old, new.public_pem))]).encode()


@pytest.fixture(scope="module")
def new_key() -> Signer:
    return Signer(private_key_pem(generate_private_key("ed25519")))


@pytest.fixture
def rotated_server(server, release, release_key, new_key):
    """The server after a rotation: 2.0.0 and its manifest signed by the new key, plus the chain."""
    image = make_image(new_key, "2.0.0", edit(make_payload(1), 2), counter=2)
    server.manifest = release["manifest_for"](image=image, deltas=(), signer=new_key)
    server.files[sha(image)] = image
    server.documents["key-rotations.json"] = rotation_chain(release_key, new_key)
    return server


def update_to_trial(tmp_path, factory_dir, server):
    engine, recorder = power_on(tmp_path / "flash", factory_dir, server)
    with pytest.raises(Reboot):
        engine.check()
    return power_on(tmp_path / "flash", factory_dir, server)


def test_rotated_release_commits_and_the_new_key_becomes_the_anchor(tmp_path, factory_dir, rotated_server,
                                                                     release, release_key, new_key):
    engine, recorder = update_to_trial(tmp_path, factory_dir, rotated_server)
    assert (engine.running.version, engine.running.key_id) == ("2.0.0", new_key.key_id)
    assert engine.resume() == "trial"
    engine.confirm()
    flash = Flash(tmp_path / "flash")
    assert flash.read(ANCHOR) == new_key.public_pem and flash.read(PENDING) is None
    assert ("key_rotated", {"key_id": new_key.key_id}) in recorder.events
    # from now on the old key is rejected
    rotated_server.manifest = release["manifest_for"](version="3.0.0", counter=3, deltas=(), signer=release_key)
    engine, recorder = power_on(tmp_path / "flash", factory_dir, rotated_server)
    assert engine.check() == "failed"
    assert "no signed rotation leads" in recorder.last[1]["reason"]


def test_cut_between_commit_and_anchor_change_finishes_at_next_boot(tmp_path, factory_dir, rotated_server, new_key):
    engine, _ = update_to_trial(tmp_path, factory_dir, rotated_server)
    control = BootControl(Flash(tmp_path / "flash"))
    control.store(committed(control.load(), 2))          # power dies right after this write
    engine, recorder = power_on(tmp_path / "flash", factory_dir, rotated_server)
    assert engine.running.version == "2.0.0"
    engine.resume()
    assert Flash(tmp_path / "flash").read(ANCHOR) == new_key.public_pem


def test_rolled_back_rotation_keeps_the_old_anchor(tmp_path, factory_dir, server, release, release_key, new_key):
    bad = make_image(new_key, "2.0.0", edit(make_payload(1), 2), counter=2, behaviour=Behaviour.CRASH_AT_BOOT)
    server.manifest = release["manifest_for"](image=bad, deltas=(), signer=new_key)
    server.files[sha(bad)] = bad
    server.documents["key-rotations.json"] = rotation_chain(release_key, new_key)
    update_to_trial(tmp_path, factory_dir, server)
    for _ in range(4):
        engine, _ = power_on(tmp_path / "flash", factory_dir, server, reset_reason="crash (exit 1)")
    assert engine.resume() == "rolled_back"
    flash = Flash(tmp_path / "flash")
    assert flash.read(ANCHOR) == release_key.public_pem and flash.read(PENDING) is None


def test_rotation_signed_by_a_foreign_key_is_refused(tmp_path, factory_dir, server, release, foreign_key):
    forged = make_image(foreign_key, "2.0.0", edit(make_payload(1), 2), counter=2)
    server.manifest = release["manifest_for"](image=forged, deltas=(), signer=foreign_key)
    server.files[sha(forged)] = forged
    server.documents["key-rotations.json"] = rotation_chain(foreign_key, foreign_key)
    engine, recorder = power_on(tmp_path / "flash", factory_dir, server)
    assert engine.check() == "failed"
    assert "no signed rotation leads" in recorder.last[1]["reason"]
    assert server.fetched == 0


def test_chain_of_two_rotations_is_followed(release_key, new_key, foreign_key):
    chain = [json.loads(make_rotation(new_key, foreign_key.public_pem)),
             json.loads(make_rotation(release_key, new_key.public_pem))]
    assert successor(Verifier(release_key.public_pem), chain, foreign_key.key_id) == foreign_key.public_pem
    with pytest.raises(RotationError):
        successor(Verifier(foreign_key.public_pem), chain, release_key.key_id)
