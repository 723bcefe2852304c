"""Documents a device reads from outside (manifests, release messages, the training window): any bytes,
and any change to a valid document, give the document or the decoder's own error, never another exception.

The wire decoders (OIP JSON, raw tensor headers, user properties) have theirs in test_protocol.py.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.manifest import Manifest, ManifestError, TensorSpec, load_manifest
from agent.model_store import ModelStore
from agent.protocol import ProtocolError
from agent.protocol.window import decode_window
from agent.signing import verify
from agent.updates import Release
from agent.updates.release import check_manifest_signature, check_release_signature, parse_release
from cloud.releases.signing import sign

KEY = Ed25519PrivateKey.generate()
MANIFEST = sign(Manifest(task="mnist1d", name="mnist1d-edge", version=2, sha256="0" * 64, size_bytes=1,
                         inputs=[TensorSpec(name="input", dtype="float32", shape=[None, 40])],
                         outputs=[TensorSpec(name="logits", dtype="float32", shape=[None, 10])],
                         metrics={"test_accuracy": 0.9}, recipe={"quantization": "static-minmax"}), KEY)
RELEASE = sign(Release(action="install", group="fleet", devices=["dev-a"], manifest=MANIFEST), KEY)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(1 << 70), 1 << 70) | st.floats() | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=16,
)
raw_bytes = st.one_of(st.binary(max_size=300), st.text(max_size=200).map(str.encode))


def _mutated(doc: dict[str, Any], data: st.DataObject) -> dict[str, Any]:
    """``doc`` with one to three fields (top level or one level down) replaced, dropped or added."""
    doc = json.loads(json.dumps(doc))
    for _ in range(data.draw(st.integers(1, 3))):
        target = doc
        nested = [k for k, v in doc.items() if isinstance(v, dict)]
        if nested and data.draw(st.booleans()):
            target = doc[data.draw(st.sampled_from(nested))]
        key = data.draw(st.sampled_from([*target, "extra"]))
        if data.draw(st.integers(0, 4)) == 0:
            target.pop(key, None)
        else:
            target[key] = data.draw(json_values)
    return doc


def _verified_manifest(path: Path) -> Manifest | None:
    """The manifest in ``path``, if it loads and carries the key's signature; None after the manifest's own error."""
    try:
        manifest = load_manifest(path)
    except ManifestError as exc:
        assert str(exc).startswith(str(path))  # it names the file
        return None
    _ = manifest.precision
    try:
        verify(manifest, KEY.public_key(), "a fuzzed manifest")
    except ManifestError:
        return None
    return manifest


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(payload=raw_bytes)
def test_any_bytes_in_a_manifest_file_give_a_manifest_or_a_manifest_error(tmp_path: Path, payload: bytes) -> None:
    path = tmp_path / "manifest.json"
    path.write_bytes(payload)
    assert _verified_manifest(path) is None  # nothing random carries the key's signature


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_a_changed_manifest_verifies_only_if_it_says_what_was_signed(tmp_path: Path, data: st.DataObject) -> None:
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps(_mutated(MANIFEST.model_dump(mode="json"), data)))
    manifest = _verified_manifest(path)
    if manifest is not None:
        assert manifest.signed_bytes() == MANIFEST.signed_bytes()


def _verified_release(payload: bytes) -> Release | None:
    """The release, if it parses and verifies; None after the release's own error."""
    try:
        release = parse_release(payload, "fedge/v1/models/mnist1d/release/fleet")
        check_release_signature(release, KEY.public_key())
        check_manifest_signature(release, KEY.public_key())
    except ManifestError as exc:
        assert str(exc)
        return None
    release.targets("dev-a", "fleet")
    return release


@settings(max_examples=200, deadline=None)
@given(payload=raw_bytes)
def test_any_bytes_on_a_release_topic_give_a_release_or_a_release_error(payload: bytes) -> None:
    assert _verified_release(payload) is None  # nothing random carries the key's signature


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_a_changed_release_message_verifies_only_if_it_says_what_was_signed(data: st.DataObject) -> None:
    release = _verified_release(json.dumps(_mutated(RELEASE.model_dump(mode="json"), data)).encode())
    if release is not None:  # e.g. 2 spelled 2.0, or a field dropped that has the same default
        assert release.signed_bytes() == RELEASE.signed_bytes()
        assert release.manifest.signed_bytes() == MANIFEST.signed_bytes()


@settings(max_examples=200, deadline=None)
@given(payload=st.one_of(raw_bytes, st.dictionaries(st.sampled_from(["open", "until", "run", "task", "x"]),
                                                    json_values, max_size=5).map(lambda d: json.dumps(d).encode())))
def test_any_training_window_message_gives_a_window_or_a_protocol_error(payload: bytes) -> None:
    try:
        window = decode_window(payload)
    except ProtocolError as exc:
        assert exc.message
        return
    window.is_open()
    window.expiry_s()


def test_a_store_directory_named_in_non_ascii_digits_is_no_version(tmp_path: Path) -> None:
    """'²'.isdigit() is true and int('²') raises: listing the versions crashed on such a directory."""
    for name in ("1", "²", "٣", "x"):
        (tmp_path / "mnist1d" / "mnist1d-edge" / name).mkdir(parents=True)
    assert ModelStore(tmp_path).versions("mnist1d", "mnist1d-edge") == [1]
