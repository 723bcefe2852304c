"""Release signing: `fedge-cloud keys init`, Ed25519 signatures on manifests, `fedge-cloud models publish`."""

from __future__ import annotations

import stat
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from agent.manifest import Manifest, ManifestError
from agent.model_store import ModelStore
from agent.signing import KeyFileError, SignatureError, load_public_key, verify
from agent.updates.install import stage
from cloud.registry import ModelState, open_registry
from cloud.releases.keys import init_keys, load_private_key
from cloud.releases.signing import sign
from cloud.store import publish
from tests.release_support import NAME, TASK, cloud, linear_onnx


@pytest.fixture
def manifest(tmp_path: Path) -> Manifest:
    onnx_file = linear_onnx(tmp_path / "m.onnx", np.ones((40, 10)))
    return publish(ModelStore(tmp_path / "store"), TASK, NAME, onnx_file, metrics={"test_accuracy": 0.5}).manifest


def test_keys_init_writes_a_private_key_only_its_owner_reads_and_never_overwrites(tmp_path: Path) -> None:
    made = cloud("keys", "init", "--dir", str(tmp_path / "keys"))
    assert made.returncode == 0, made.stderr
    private, public = tmp_path / "keys" / "release.key", tmp_path / "keys" / "release.pub"
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    before = private.read_bytes()
    again = cloud("keys", "init", "--dir", str(tmp_path / "keys"))
    assert again.returncode == 2 and "--force" in again.stderr and private.read_bytes() == before
    forced = cloud("keys", "init", "--dir", str(tmp_path / "keys"), "--force")
    assert forced.returncode == 0 and private.read_bytes() != before
    load_public_key(public)


def test_a_signed_manifest_verifies_and_any_change_breaks_it(tmp_path: Path, manifest: Manifest) -> None:
    private, public = init_keys(tmp_path / "keys")
    signed = sign(manifest, load_private_key(private))
    verify(signed, load_public_key(public), "manifest")
    tampered = signed.model_copy(update={"sha256": "0" * 64})
    with pytest.raises(SignatureError, match="bad signature"):
        verify(tampered, load_public_key(public), "manifest")
    other_public = init_keys(tmp_path / "other")[1]
    with pytest.raises(SignatureError, match="signed with another key"):
        verify(signed, load_public_key(other_public), "manifest")
    with pytest.raises(SignatureError, match="not signed"):
        verify(manifest, load_public_key(public), "manifest")
    with pytest.raises(SignatureError, match="not valid base64"):
        verify(manifest.model_copy(update={"signature": "%%%"}), load_public_key(public), "manifest")


@pytest.mark.parametrize("content, words", [(None, "not found"), (b"hello", "not a PEM public key")])
def test_a_bad_public_key_file_is_named(tmp_path: Path, content: bytes | None, words: str) -> None:
    path = tmp_path / "release.pub"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(KeyFileError, match=words) as caught:
        load_public_key(path)
    assert str(path) in str(caught.value)


def test_models_publish_signs_a_file_into_the_store_and_stages_it(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    init_keys(keys)
    onnx_file = linear_onnx(tmp_path / "m.onnx", np.ones((40, 10)))
    registry = tmp_path / "registry.db"
    common = ["--store", str(tmp_path / "store"), "--registry", str(registry), "--key", str(keys / "release.key")]
    done = cloud("models", "publish", "--task", TASK, "--name", NAME, "--onnx", str(onnx_file), *common)
    assert done.returncode == 0, done.stderr
    assert f"signed {TASK}/{NAME} v1" in done.stdout
    stored = ModelStore(tmp_path / "store").verified(TASK, NAME, 1)
    verify(stored.manifest, load_public_key(keys / "release.pub"), "manifest")
    with open_registry(registry) as reg:
        assert [(m.version, m.state) for m in reg.models(TASK)] == [(1, ModelState.STAGED)]
    no_key = cloud("models", "publish", "--task", TASK, "--name", NAME, "--store", str(tmp_path / "store"),
                   "--registry", str(registry), "--key", str(tmp_path / "missing.key"))
    assert no_key.returncode == 2 and "keys init" in no_key.stderr and "Traceback" not in no_key.stderr
    missing = cloud("models", "publish", "--task", TASK, "--name", "nope", *common)
    assert missing.returncode == 2 and "no model mnist1d/nope" in missing.stderr


@pytest.mark.parametrize("field, value", [("file", "../evil.onnx"), ("file", "/etc/cron.d/evil"),
                                          ("file", "manifest.json"), ("task", ".."), ("name", "a/b")])
def test_a_manifest_names_only_plain_path_segments(manifest: Manifest, field: str, value: str) -> None:
    with pytest.raises(ValidationError, match=field):
        Manifest.model_validate({**manifest.model_dump(mode="json"), field: value})


def test_staging_never_writes_outside_its_directory(tmp_path: Path, manifest: Manifest) -> None:
    data = ModelStore(tmp_path / "store").verified(TASK, NAME, 1).model_path.read_bytes()
    escaping = manifest.model_copy(update={"file": "../evil.onnx"})  # as if validation had been skipped
    with pytest.raises(ManifestError, match="not a plain file name"):
        stage(ModelStore(tmp_path / "agent"), escaping, data)
    assert not list(tmp_path.rglob("evil.onnx"))
