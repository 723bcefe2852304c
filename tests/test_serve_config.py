"""`fedge-cloud serve --config`: the shipped example validates, every bad field is named at file:line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from agent.config.problems import ConfigError
from agent.model_store import ModelStore
from cloud.cli import main
from cloud.registry import ModelState, open_registry
from cloud.serving.config import load_cloud_config
from cloud.store import publish
from tests.release_support import TASK, linear_onnx

EXAMPLE = Path(__file__).resolve().parent.parent / "docs" / "cloud.example.yaml"


def test_the_shipped_example_validates() -> None:
    config = load_cloud_config(str(EXAMPLE))
    assert config.broker.username == "worker" and config.broker.coordinator is not None
    assert config.models == {"mnist1d": ["mnist1d-cloud", "mnist1d-cloud-small"]}
    assert config.resolve_path("x") == EXAMPLE.parent / "x"  # relative paths follow the file
    assert main(["serve", "--config", str(EXAMPLE), "--validate"]) == 0


@pytest.mark.parametrize(("text", "line", "field", "says"), [
    ("broker:\n  port: 70000\n", 2, "broker.port", "<= 65535"),
    ("broker:\n  host: localhost\n  password: hunter2\n", 3, "broker.password", "password_env"),
    ("broker:\n  password_env: PW\n", 2, "broker.password_env", "add username"),
    ("broker:\n  topic_prefix: fedge/#\n", 2, "broker.topic_prefix", "without wildcards"),
    ("broker:\n  tls:\n    cert_file: c.pem\n", 2, "broker.tls", "both cert_file and key_file"),
    ("broker:\n  coordinator:\n    username: ''\n", 3, "broker.coordinator.username", "must not be empty"),
    ("workers:\n  count: 0\n", 2, "workers.count", ">= 1"),
    ("workers:\n  max_batch: many\n", 2, "workers.max_batch", "expected an integer"),
    ("workers:\n  max_delay_ms: -1\n", 2, "workers.max_delay_ms", ">= 0"),
    ("workers:\n  share_group: a/b\n", 2, "workers.share_group", "not valid"),
    ("workers:\n  threds: 2\n", 2, "workers.threds", "did you mean 'threads'"),
    ("store: ''\n", 1, "store", "must not be empty"),
    ("registry: 5\n", 1, "registry", "expected text"),
    ("models:\n  mnist1d: []\n", 2, "models.mnist1d", "at least 1"),
    ("models:\n  MNIST: [x]\n", 2, "models.MNIST", "not a valid key"),
    ("workers: {count: 2}\nworkers: {count: 3}\n", 2, "workers", "duplicate key"),
])
def test_each_bad_field_is_named_at_its_line(tmp_path: Path, text: str, line: int, field: str, says: str) -> None:
    path = tmp_path / "cloud.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_cloud_config(str(path))
    problem = str(caught.value)
    assert problem.startswith(f"{path}:{line}:") and f" {field}: " in problem and says in problem, problem


def test_flags_override_the_file_and_a_bad_flag_is_named(tmp_path: Path) -> None:
    path = tmp_path / "cloud.yaml"
    path.write_text("workers:\n  count: 3\n  max_batch: 8\n")
    config = load_cloud_config(str(path), {"--workers": (("workers", "count"), 5)})
    assert (config.workers.count, config.workers.max_batch) == (5, 8)
    with pytest.raises(ConfigError, match=r"command-line flag --max-batch: workers\.max_batch: 0 is out of range"):
        load_cloud_config(str(path), {"--max-batch": (("workers", "max_batch"), 0)})


def test_serve_exits_2_on_a_bad_config_without_a_traceback(tmp_path: Path) -> None:
    path = tmp_path / "cloud.yaml"
    path.write_text("broker:\n  port: 0\nworkers:\n  count: [1]\n")
    for extra in ([], ["--validate"]):
        done = subprocess.run([sys.executable, "-m", "cloud.cli", "serve", "--config", str(path), *extra],
                              capture_output=True, check=False, text=True, timeout=120)
        assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
        assert f"{path}:2:9: broker.port" in done.stderr and f"{path}:4:3: workers.count" in done.stderr


def test_unreadable_config_and_unset_password_say_what_is_wrong(tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "--config", str(tmp_path / "missing.yaml")]) == 2
    assert "missing.yaml: file not found" in capsys.readouterr().err
    path = tmp_path / "cloud.yaml"
    path.write_text("broker:\n  username: worker\n  password_env: FEDGE_TEST_UNSET_PASSWORD\n")
    assert main(["serve", "--config", str(path), "--store", str(tmp_path)]) == 2
    assert "broker.password_env: environment variable FEDGE_TEST_UNSET_PASSWORD is not set" in capsys.readouterr().err


def test_a_config_that_is_no_mapping_is_called_a_cloud_config_and_an_empty_one_means_defaults(tmp_path: Path) -> None:
    path = tmp_path / "cloud.yaml"
    path.write_text("- broker\n- workers\n")
    with pytest.raises(ConfigError) as caught:
        load_cloud_config(str(path))
    assert "a cloud config is a mapping of sections (broker, workers" in str(caught.value)
    assert "profile" not in str(caught.value)
    path.write_text("# nothing set yet\n")
    assert load_cloud_config(str(path)).model_dump() == load_cloud_config(None).model_dump()


def test_validate_names_the_registry_s_active_versions_and_creates_no_registry(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = ModelStore(tmp_path / "store")
    for seed in (0, 1):
        weights = np.random.default_rng(seed).normal(size=(40, 10))
        publish(store, TASK, f"{TASK}-cloud", linear_onnx(tmp_path / f"cloud{seed}.onnx", weights), metrics={})
    registry_file = tmp_path / "registry.db"
    flags = ["serve", "--validate", "--store", str(store.root), "--registry", str(registry_file)]
    assert main(flags) == 0
    assert f"{TASK}-cloud v2" in capsys.readouterr().out  # no registry: the newest, as serve would
    assert not registry_file.exists()  # checking a config leaves no database behind
    with open_registry(registry_file) as registry:
        registry.add_model(TASK, f"{TASK}-cloud", 1, ModelState.ACTIVE)
    assert main(flags) == 0
    out = capsys.readouterr().out
    assert f"{TASK}-cloud v1" in out and f"{TASK}-cloud v2" not in out, out  # serve runs the active v1
