"""Device profiles: shipped ones validate, bad ones get their exact message, exit 2, no traceback.

Bad profiles live in tests/bad_profiles/, each stating what it expects:
`# expect: LINE:COL: path: message` (located in that file), `# expect: environment variable
...` (caused by an override), or `# expect: message` (about the file as a whole), and
`# env: NAME=value` for overrides to apply. The real console script is run for each one.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper

from agent.config.introspect import is_model
from agent.config.reference import update
from agent.profile import (
    ConfigError,
    Profile,
    load_profile,
    parse_profile,
)
from agent.profile.hardware import CudaProvider
from agent.session import available_providers, open_session

REPO = Path(__file__).resolve().parents[1]
PROFILES = sorted((REPO / "edge_profiles").glob("*.yaml"))
BAD_DIR = REPO / "tests" / "bad_profiles"
BAD = sorted(BAD_DIR.glob("*.yaml"))
CLI = Path(sys.executable).parent / "fedge-agent"
SECTIONS = ["device", "hardware", "models", "offload", "broker", "api", "storage", "federated",
            "logging", "metrics", "updates"]
MINIMAL = "device: {id: t-1}\nmodels:\n  mnist1d: {name: mnist1d-edge, input: {shape: [-1, 40]}}\n"


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """The installed `fedge-agent`, from the repo root, without inherited FEDGE__ overrides."""
    if not CLI.exists():
        pytest.fail(f"{CLI} is missing: install the package with `make install`")
    clean = {k: v for k, v in os.environ.items() if not k.upper().startswith("FEDGE__")}
    return subprocess.run(
        [str(CLI), *args],
        cwd=REPO,
        env={**clean, **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@dataclass(frozen=True)
class BadCase:
    """A bad profile, the lines `validate` must print for it, and its env overrides."""

    relpath: str
    expected: list[str]
    env: dict[str, str]


def bad_case(path: Path) -> BadCase:
    relpath = str(path.relative_to(REPO))
    expected, env = [], {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("# expect: "):
            text = line.removeprefix("# expect: ")
            if text[0].isdigit():
                expected.append(f"{relpath}:{text}")
            elif text.startswith("environment variable "):
                expected.append(text)
            else:
                expected.append(f"{relpath}: {text}")
        elif line.startswith("# env: "):
            name, value = line.removeprefix("# env: ").split("=", 1)
            env[name] = value
    return BadCase(relpath, expected, env)


# --- shipped profiles -------------------------------------------------------------------------


def test_the_four_issue_profiles_exist() -> None:
    names = {p.stem for p in PROFILES}
    assert {"raspberry-pi-4", "jetson-orin-nano", "x86-gateway", "pi-zero-2w"} <= names


@pytest.mark.parametrize("path", PROFILES, ids=lambda p: p.stem)
def test_shipped_profile_validates(path: Path) -> None:
    profile = load_profile(path, env={})
    assert profile.device.kind == path.stem
    assert profile.models["mnist1d"].input.shape == [-1, 40]
    assert profile.models["digits"].input.shape == [-1, 1, 8, 8]
    assert {m.input.dtype for m in profile.models.values()} == {"float32"}
    assert set(profile.offload) <= set(profile.models)


def test_shipped_profiles_validate_through_the_console_script() -> None:
    result = run_cli("validate", *(str(p.relative_to(REPO)) for p in PROFILES))
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    expected = []
    for path in PROFILES:
        profile = load_profile(path, env={})
        expected.append(
            f"ok  {path.relative_to(REPO)}  ({profile.device.kind}, device {profile.device.id})"
        )
    assert result.stdout.splitlines() == expected


def test_profiles_match_their_hardware() -> None:
    by_name = {p.stem: load_profile(p, env={}) for p in PROFILES}
    pi4, jetson = by_name["raspberry-pi-4"], by_name["jetson-orin-nano"]
    gateway, zero = by_name["x86-gateway"], by_name["pi-zero-2w"]

    assert [p.type for p in pi4.hardware.execution_providers] == ["cpu"]
    assert pi4.hardware.intra_op_threads == 4
    assert {m.precision for m in pi4.models.values()} == {"int8"}

    assert [p.type for p in jetson.hardware.execution_providers] == ["tensorrt", "cuda", "cpu"]
    assert {m.precision for m in jetson.models.values()} == {"fp16"}

    assert [p.type for p in gateway.hardware.execution_providers] == ["openvino", "cpu"]
    for task, policy in gateway.offload.items():
        assert policy.max_queue_depth > pi4.offload[task].max_queue_depth
        assert policy.max_inflight > pi4.offload[task].max_inflight

    assert zero.hardware.intra_op_threads == 1
    assert not zero.federated.enabled
    for task, policy in zero.offload.items():
        assert policy.max_queue_depth < pi4.offload[task].max_queue_depth


# --- bad profiles -----------------------------------------------------------------------------


def test_there_are_enough_bad_profiles_and_each_states_its_message() -> None:
    assert len(BAD) >= 8
    for path in BAD:
        assert bad_case(path).expected, f"{path} has no '# expect:' line"


@pytest.mark.parametrize("path", BAD, ids=lambda p: p.stem)
def test_bad_profile_gets_its_message_and_exit_2(path: Path) -> None:
    case = bad_case(path)
    result = run_cli("validate", case.relpath, env=case.env)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stdout == ""
    assert result.stderr.splitlines() == case.expected


def test_env_cases_are_valid_files_without_their_overrides() -> None:
    """So the failure above comes from the variable, not from the file."""
    for case in map(bad_case, BAD):
        if case.env:
            load_profile(REPO / case.relpath, env={})


def test_missing_file_and_mixed_arguments() -> None:
    good = str(PROFILES[0].relative_to(REPO))
    result = run_cli("validate", good, "no/such/profile.yaml")
    assert result.returncode == 2
    assert result.stdout.startswith(f"ok  {good}  (")
    assert result.stderr.splitlines() == ["no/such/profile.yaml: file not found"]
    assert "Traceback" not in result.stderr


def test_every_problem_is_a_profile_error_never_another_exception() -> None:
    cases = {
        "[1, 2]": "not a list",
        "device: {id: x}\nmodels: {}\n": "models: needs at least 1 entry, got 0",
        MINIMAL + "offload:\n  mnist1d: {mode: threshold, metric: entropy, threshold: -0.1}\n":
            "offload.mnist1d.threshold: -0.1 is out of range: must be >= 0",
        MINIMAL + "offload:\n  mnist1d: {threshold: 0.5}\n":
            "offload.mnist1d: missing 'mode': say which offload mode this is, one of:"
            " threshold, budget",
        "device: {id: x}\nmodels:\n  mnist1d: {name: m, version: '4', input: {shape: [-1, 40]}}\n":
            "models.mnist1d.version: wrong type: expected an integer, got text '4'",
        MINIMAL + "broker: {password_env: PW}\n":
            "broker.password_env: password_env is set but username is not: add username",
        MINIMAL + "federated: {enabled: true, server_address: fl:9092}\n"
        "storage: {samples: {enabled: false}}\n":
            "federated.enabled: federated.enabled needs stored samples",
    }
    for text, message in cases.items():
        with pytest.raises(ConfigError) as info:
            parse_profile(text, "t.yaml", env={})
        assert message in str(info.value), str(info.value)


def test_yaml_merge_keys_share_settings_and_own_keys_win() -> None:
    text = (
        "device: {id: m-1}\n"
        "models:\n"
        "  mnist1d: &model {name: mnist1d-edge, precision: int8, input: {shape: [-1, 40]}}\n"
        "  digits: {<<: *model, name: digits-edge, input: {shape: [-1, 1, 8, 8]}}\n"
        "offload:\n"
        "  mnist1d: &limits {mode: threshold, threshold: 0.8, max_inflight: 2}\n"
        "  digits: {<<: *limits, threshold: 0.7}\n"
    )
    profile = parse_profile(text, "merge.yaml", env={})
    assert profile.models["digits"].precision == "int8"
    assert profile.models["digits"].name == "digits-edge"
    assert profile.offload["digits"].max_inflight == 2
    assert profile.offload["digits"].threshold == 0.7  # type: ignore[union-attr]


# --- environment overrides -------------------------------------------------------------------


def test_env_overrides_are_typed_case_insensitive_and_win_over_the_file() -> None:
    env = {
        "FEDGE__BROKER__HOST": "10.0.0.5",
        "fedge__broker__port": "8883",
        "FEDGE__Offload__MNIST1D__THRESHOLD": "0.65",
        "FEDGE__LOGGING__LEVEL": "debug",
        "FEDGE__API__ENABLED": "false",
        "FEDGE__HARDWARE__EXECUTION_PROVIDERS": "[{type: cpu}]",
        "FEDGE_MQTT_PASSWORD": "not an override",
    }
    profile = load_profile(REPO / "edge_profiles" / "jetson-orin-nano.yaml", env=env)
    assert profile.broker.host == "10.0.0.5"
    assert profile.broker.port == 8883
    assert profile.offload["mnist1d"].threshold == 0.65  # type: ignore[union-attr]
    assert profile.logging.level == "DEBUG"
    assert profile.api.enabled is False
    assert [p.type for p in profile.hardware.execution_providers] == ["cpu"]


def test_env_overrides_reach_list_entries_and_create_sections() -> None:
    path = REPO / "edge_profiles" / "jetson-orin-nano.yaml"
    profile = load_profile(path, env={"FEDGE__HARDWARE__EXECUTION_PROVIDERS__1__DEVICE_ID": "1"})
    cuda = profile.hardware.execution_providers[1]
    assert cuda == CudaProvider(device_id=1, gpu_mem_limit_mb=2048)

    with pytest.raises(ConfigError) as info:
        load_profile(path, env={"FEDGE__HARDWARE__EXECUTION_PROVIDERS__7__FP16": "true"})
    assert str(info.value) == (
        "environment variable FEDGE__HARDWARE__EXECUTION_PROVIDERS__7__FP16:"
        " hardware.execution_providers: is a list of 3: use an index from 0 to 2"
    )

    minimal = parse_profile(MINIMAL, "t.yaml", env={"FEDGE__METRICS__HEARTBEAT_INTERVAL_S": "5"})
    assert minimal.metrics.heartbeat_interval_s == 5


def test_env_override_through_the_console_script() -> None:
    path = "edge_profiles/pi-zero-2w.yaml"
    result = run_cli("validate", path, env={"FEDGE__DEVICE__ID": "zero-from-env"})
    assert result.stdout == f"ok  {path}  (pi-zero-2w, device zero-from-env)\n"
    result = run_cli("validate", "--no-env", path, env={"FEDGE__DEVICE__ID": "zero-from-env"})
    assert result.stdout == f"ok  {path}  (pi-zero-2w, device zero-door-01)\n"


# --- schema, reference, help ------------------------------------------------------------------


def test_schema_is_json_with_every_section() -> None:
    result = run_cli("schema")
    assert result.returncode == 0
    schema = json.loads(result.stdout)
    assert list(schema["properties"]) == SECTIONS
    assert set(schema["required"]) == {"device", "models"}
    assert schema["additionalProperties"] is False
    providers = schema["$defs"]["HardwareConfig"]["properties"]["execution_providers"]["items"]
    assert set(providers["discriminator"]["mapping"]) == {"tensorrt", "cuda", "openvino", "cpu"}
    assert "password" not in schema["$defs"]["BrokerConfig"]["properties"]


def test_profile_reference_doc_matches_the_schema() -> None:
    doc = REPO / "docs" / "PROFILES.md"
    assert update(doc, Profile, check=True), "run: fedge-agent schema --reference docs/PROFILES.md"
    text = doc.read_text(encoding="utf-8")
    pending = [Profile]
    while pending:
        model = pending.pop()
        for name, info in model.model_fields.items():
            assert f"`{name}`" in text, f"{model.__name__}.{name} is not documented"
            assert info.description, f"{model.__name__}.{name} has no description"
            pending.extend(_models_in(info.annotation))


def _models_in(annotation: object) -> list[type]:
    found = [annotation] if is_model(annotation) else []
    for arg in getattr(annotation, "__args__", ()):
        found.extend(_models_in(arg))
    return found  # type: ignore[return-value]


def test_help_explains_each_subcommand() -> None:
    result = run_cli("--help")
    assert result.returncode == 0
    assert "validate" in result.stdout and "schema" in result.stdout
    for command in ("validate", "schema"):
        sub = run_cli(command, "--help")
        assert sub.returncode == 0 and "usage: fedge-agent " + command in sub.stdout
    assert run_cli().returncode == 2


# --- runtime resolution (outside validation) -------------------------------------------------


def _identity_model() -> bytes:
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, [None, 40])
    y = helper.make_tensor_value_info("output", TensorProto.FLOAT, [None, 40])
    graph = helper.make_graph([helper.make_node("Identity", ["input"], ["output"])], "id", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def test_provider_list_is_accepted_by_onnxruntime(tmp_path: Path) -> None:
    gateway = load_profile(REPO / "edge_profiles" / "x86-gateway.yaml", env={})
    model = tmp_path / "identity.onnx"
    model.write_bytes(_identity_model())
    session = open_session(model, gateway.hardware.ort_providers())
    assert session.get_providers()[-1] == "CPUExecutionProvider"
    if "OpenVINOExecutionProvider" not in onnxruntime.get_available_providers():
        assert "OpenVINOExecutionProvider" not in session.get_providers()
    x = np.arange(80, dtype=np.float32).reshape(2, 40)
    np.testing.assert_array_equal(session.run(None, {"input": x})[0], x)


def test_a_missing_provider_is_warned_about_once_per_process(caplog: pytest.LogCaptureFixture) -> None:
    wanted = [("NoSuchTestExecutionProvider", {}), ("CPUExecutionProvider", {})]
    with caplog.at_level(logging.WARNING, logger="agent.session"):
        for _ in range(3):  # e.g. three tasks' models on one device
            assert available_providers(wanted) == [("CPUExecutionProvider", {})]
    assert [r.getMessage().count("NoSuchTestExecutionProvider") for r in caplog.records] == [1]


def test_provider_options_follow_the_profile() -> None:
    jetson = load_profile(REPO / "edge_profiles" / "jetson-orin-nano.yaml", env={})
    names = [name for name, _ in jetson.hardware.ort_providers()]
    assert names == ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    trt = dict(jetson.hardware.ort_providers())["TensorrtExecutionProvider"]
    assert trt["trt_fp16_enable"] == "True"
    assert trt["trt_engine_cache_path"] == "/var/cache/fedge/trt"


def test_password_is_resolved_from_env_or_file_next_to_the_profile(tmp_path: Path) -> None:
    (tmp_path / "secret").write_text("s3cret\n", encoding="utf-8")
    by_file_path = tmp_path / "file.yaml"
    by_file_path.write_text(MINIMAL + "broker: {username: u, password_file: secret}\n", encoding="utf-8")
    by_file = load_profile(by_file_path, env={})
    assert by_file.broker.password("broker", by_file.resolve_path, {}) == "s3cret"

    by_env = parse_profile(MINIMAL + "broker: {username: u, password_env: PW}\n", "e.yaml", env={})
    assert by_env.broker.password("broker", by_env.resolve_path, {"PW": "from-env"}) == "from-env"
    with pytest.raises(ConfigError, match="environment variable PW is not set"):
        by_env.broker.password("broker", by_env.resolve_path, {})
    anonymous = parse_profile(MINIMAL, "m.yaml", env={})
    assert anonymous.broker.password("broker", anonymous.resolve_path, {}) is None


# --- robustness -------------------------------------------------------------------------------

_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-5, 70000), st.floats(-2, 2, allow_nan=False),
    st.sampled_from(["cpu", "cuda", "threshold", "budget", "mnist1d", "", "a/b", "fp16"]),
)
_keys = st.sampled_from([*SECTIONS, "id", "type", "mode", "threshold", "input", "shape", "name",
                         "execution_providers", "mnist1d", "port", "tls", "offlaod"])
_trees = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_keys, inner, max_size=4),
    max_leaves=12,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tree=st.dictionaries(_keys, _trees, max_size=6), junk=st.text(max_size=20))
def test_any_input_gives_a_profile_or_a_profile_error(tree: dict[str, object], junk: str) -> None:
    for text in (yaml.safe_dump(tree), junk, yaml.safe_dump(tree)[:-3] + junk):
        try:
            parse_profile(text, "fuzz.yaml", env={})
        except ConfigError as exc:
            assert exc.problems and all(str(p) for p in exc.problems)
