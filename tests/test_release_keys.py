"""The release key and signed manifests on disk: replaced whole, never loosened, nothing stored without a key."""

from __future__ import annotations

import stat
from pathlib import Path

import numpy as np
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from agent.model_store import ModelStore
from agent.signing import load_public_key
from cloud.releases.keys import init_keys, load_private_key
from tests.release_support import NAME, TASK, cloud, linear_onnx


def test_keys_init_force_replaces_the_pair_whole_and_private(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    private, public = init_keys(keys)
    private.chmod(0o644)  # loosened by hand, or restored from a careless backup
    before = private.read_bytes()
    with private.open("rb") as reader:  # a reader holding the old file
        forced = cloud("keys", "init", "--dir", str(keys), "--force")
        assert forced.returncode == 0, forced.stderr
        assert reader.read() == before  # it still reads the old key whole: the new one was renamed into place
    assert private.read_bytes() != before
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    derived = load_private_key(private).public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    assert load_public_key(public).public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo) == derived
    assert sorted(p.name for p in keys.iterdir()) == ["release.key", "release.pub"]  # no temp file left


def test_models_publish_without_a_key_stores_nothing(tmp_path: Path) -> None:
    onnx_file = linear_onnx(tmp_path / "m.onnx", np.ones((40, 10)))
    store = tmp_path / "store"
    no_key = cloud("models", "publish", "--task", TASK, "--name", NAME, "--onnx", str(onnx_file), "--store",
                   str(store), "--registry", str(tmp_path / "registry.db"), "--key", str(tmp_path / "missing.key"))
    assert no_key.returncode == 2 and "keys init" in no_key.stderr and "Traceback" not in no_key.stderr
    assert ModelStore(store).versions(TASK, NAME) == []  # not an unsigned v1 to trip over later
