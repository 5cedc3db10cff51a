"""The release index follows the signer: a rewritten index.json is picked up, a broken one is not."""
import json

from fotalab.server.artifacts import LiveIndex
from server_samples import make_store


def test_a_rewritten_index_is_reloaded_and_a_broken_one_ignored(tmp_path):
    store = make_store(tmp_path / "store")
    live = LiveIndex(store.root, check_every_s=0)
    assert live.get().versions("m4") == ["1.0.0", "2.0.0", "3.0.0"]

    index = json.loads((store.root / "index.json").read_text())
    index["releases"] = [r for r in index["releases"] if r["version"] != "3.0.0"]
    (store.root / "index.json").write_text(json.dumps(index, indent=1))
    assert live.get().versions("m4") == ["1.0.0", "2.0.0"]

    (store.root / "index.json").write_text("{ half written")
    assert live.get().versions("m4") == ["1.0.0", "2.0.0"]


def test_the_index_is_checked_at_most_once_per_interval(tmp_path):
    store = make_store(tmp_path / "store")
    live = LiveIndex(store.root, check_every_s=3600)
    before = live.get()
    (store.root / "index.json").write_text(json.dumps({**json.loads((store.root / "index.json").read_text()),
                                                       "key_id": "rotated"}))
    assert live.get() is before and live.get().key_id == "testkey"
