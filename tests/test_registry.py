"""The registry's shared suite, run against SQLite always and PostgreSQL when FEDGE_TEST_POSTGRES_URL is set.

Plus the `models promote|rollback|list` commands that drive it (on SQLite).
"""

from __future__ import annotations

import json
import multiprocessing
import os
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest

from cloud.local.mosquitto import free_port
from cloud.registry import ModelState, Registry, RegistryUnavailable, RoundRecord, existing_registry, open_registry
from cloud.registry.postgres import PostgresRegistry
from cloud.registry.sql import HEARTBEATS_KEPT
from cloud.registry.sqlite import SqliteRegistry

POSTGRES_URL = os.environ.get("FEDGE_TEST_POSTGRES_URL")
A, S, R = ModelState.ACTIVE, ModelState.STAGED, ModelState.RETIRED


@dataclass(frozen=True)
class Backend:
    """How to open one test registry, picklable so other processes can open it too."""

    kind: str
    target: str  # SQLite file or PostgreSQL URL
    schema: str | None = None

    def open(self, heartbeats_kept: int = HEARTBEATS_KEPT) -> Registry:
        if self.kind == "sqlite":
            return SqliteRegistry(Path(self.target), heartbeats_kept)
        return PostgresRegistry(self.target, self.schema, heartbeats_kept)


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.skipif(
    POSTGRES_URL is None, reason="FEDGE_TEST_POSTGRES_URL is not set (.ci/run sets it when PostgreSQL answers)"))])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    if request.param == "sqlite":
        yield Backend("sqlite", str(tmp_path / "registry.db"))
        return
    yield from _postgres_backend()


@pytest.fixture
def backend_postgres() -> Iterator[Backend]:
    yield from _postgres_backend()


def _postgres_backend() -> Iterator[Backend]:
    """A PostgreSQL backend in a fresh schema per test, dropped after it."""
    import psycopg

    assert POSTGRES_URL is not None
    schema = f"fedge_test_{uuid.uuid4().hex[:12]}"
    yield Backend("postgresql", POSTGRES_URL, schema)
    with psycopg.connect(POSTGRES_URL, autocommit=True) as db:
        db.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


@pytest.fixture
def registry(backend: Backend) -> Iterator[Registry]:
    with backend.open() as opened:
        yield opened


def states(registry: Registry, task: str = "t") -> dict[tuple[str, int], ModelState]:
    return {(m.name, m.version): m.state for m in registry.models(task)}


def heartbeat(kind: str = "raspberry-pi-4", **extra: Any) -> dict[str, Any]:
    """The shape Agent.heartbeat() sends."""
    return {"device_id": "d", "kind": kind, "models": {"mnist1d": 2}, "offload_rate": 0.125,
            "queue_depth": {"mnist1d": 0},
            "latency_ms": {"local": {"p50": 1.0, "p99": 4.5}, "offload": {"p50": 9.0, "p99": 31.0}},
            "cpu_seconds": 1.0, "rss_mb": 80.0, "uptime_s": 5.0, "sent_at": 0.0, **extra}


# -- model versions -----------------------------------------------------------------------
def test_add_is_idempotent_and_new_versions_start_staged(registry: Registry) -> None:
    registry.add_model("t", "big", 1, metrics={"accuracy": 0.9})
    registry.add_model("t", "big", 1, metrics={"accuracy": 0.1})
    registry.add_model("u", "other", 1)
    [record] = registry.models("t")
    assert (record.name, record.version, record.state, record.metrics) == ("big", 1, S, {"accuracy": 0.9})
    assert len(registry.models()) == 2
    assert [(e.version, e.state, e.reason) for e in registry.model_history("t", "big")] == [(1, S, "added")]


def test_promotion_keeps_one_active_version_per_name(registry: Registry) -> None:
    registry.add_model("t", "big", 1, A)
    registry.add_model("t", "small", 1, A)
    registry.add_model("t", "big", 2)
    registry.set_model_state("t", "big", 2, ModelState.CANARY, reason="canary 10%")
    assert states(registry)[("big", 2)] is ModelState.CANARY
    registry.set_model_state("t", "big", 2, A, reason="canary healthy")
    assert states(registry) == {("big", 1): R, ("big", 2): A, ("small", 1): A}
    assert [(m.name, m.version) for m in registry.active("t")] == [("big", 2), ("small", 1)]
    registry.add_model("t", "big", 3, A)  # added straight as active: still one per name
    assert [(m.name, m.version) for m in registry.active("t")] == [("big", 3), ("small", 1)]
    history = [(e.version, e.state, e.reason) for e in registry.model_history("t", "big")]
    assert history == [(1, A, "added"), (2, S, "added"), (2, ModelState.CANARY, "canary 10%"),
                       (1, R, "replaced by v2"), (2, A, "canary healthy"), (2, R, "replaced by v3"), (3, A, "added")]


def test_rollback_goes_to_the_previous_active_version(registry: Registry) -> None:
    for version in (1, 2, 3):
        registry.add_model("t", "big", version)
        registry.set_model_state("t", "big", version, A, reason="promote")
    assert registry.rollback("t", "big") == 2
    assert states(registry) == {("big", 1): R, ("big", 2): A, ("big", 3): R}
    assert registry.model_history("t", "big")[-1].reason == "rollback"
    assert registry.rollback("t", "big") == 1  # and again, further back; never forward to the bad v3
    with pytest.raises(LookupError, match="no earlier active version"):
        registry.rollback("t", "big")
    assert registry.rollback("t", "big", to=3) == 3
    assert [m.version for m in registry.active("t")] == [3]


def test_unknown_versions_are_a_clear_key_error(registry: Registry) -> None:
    registry.add_model("t", "big", 1)
    with pytest.raises(KeyError, match=r"t/big v7 is not in the registry"):
        registry.set_model_state("t", "big", 7, A)
    with pytest.raises(KeyError, match=r"t/nope v1 is not in the registry"):
        registry.update_model_metrics("t", "nope", 1, {"accuracy": 0.5})
    assert states(registry) == {("big", 1): S}


def test_metrics_merge_and_same_state_records_nothing(registry: Registry) -> None:
    registry.add_model("t", "big", 1, metrics={"accuracy": 0.9, "latency_ms": 5.0})
    registry.update_model_metrics("t", "big", 1, {"latency_ms": 4.0, "ewma_b8_ms": 7.5})
    assert registry.models("t")[0].metrics == {"accuracy": 0.9, "latency_ms": 4.0, "ewma_b8_ms": 7.5}
    registry.set_model_state("t", "big", 1, S, reason="again")
    assert len(registry.model_history("t", "big")) == 1


def test_registry_survives_a_restart(backend: Backend) -> None:
    with backend.open() as first:
        first.add_model("t", "big", 1, A, {"accuracy": 0.9})
        first.add_model("t", "big", 2)
        first.set_model_state("t", "big", 2, A, reason="promote")
        first.record_heartbeat("pi-1", heartbeat(), 100.0)
    with backend.open() as again:
        assert [(m.version, m.state, m.metrics) for m in again.models("t")] == [(1, R, {"accuracy": 0.9}), (2, A, {})]
        assert [e.reason for e in again.model_history("t", "big")][-1] == "promote"
        assert [(d.device_id, d.last_seen) for d in again.devices()] == [("pi-1", 100.0)]
        again.add_model("t", "big", 3)  # and it keeps working
        assert len(again.models("t")) == 3


def _writer(backend: Backend, worker: int, rounds: int, go: Any) -> None:
    """One of several processes writing the same registry at once."""
    with backend.open() as registry:
        go.wait(60)
        for i in range(rounds):
            registry.record_heartbeat(f"dev-{worker}", heartbeat(), float(i))
            version = worker * 100 + i
            registry.add_model("t", "shared", version)
            registry.set_model_state("t", "shared", version, A, reason=f"worker {worker}")


def test_concurrent_writers_in_two_processes(backend: Backend, registry: Registry) -> None:
    rounds = 20
    context = multiprocessing.get_context("spawn")
    go = context.Event()  # both start writing together, after their (slow) start-up
    processes = [context.Process(target=_writer, args=(backend, w, rounds, go)) for w in (1, 2)]
    for p in processes:
        p.start()
    go.set()
    for p in processes:
        p.join(120)
    assert [p.exitcode for p in processes] == [0, 0]
    models = registry.models("t")
    assert len(models) == 2 * rounds
    assert len(registry.active("t")) == 1
    assert sum(m.state is R for m in models) == 2 * rounds - 1
    events = registry.model_history("t", "shared")
    assert sum(e.reason.startswith("worker") for e in events) == 2 * rounds
    assert [d.device_id for d in registry.devices()] == ["dev-1", "dev-2"]
    assert all(len(registry.device_history(f"dev-{w}", 1000)) == rounds for w in (1, 2))


@pytest.mark.skipif(POSTGRES_URL is None, reason="FEDGE_TEST_POSTGRES_URL is not set")
def test_postgres_registry_reconnects_after_losing_its_connection(backend_postgres: Backend) -> None:
    import psycopg

    assert POSTGRES_URL is not None
    with backend_postgres.open() as registry:
        registry.add_model("t", "big", 1)
        assert isinstance(registry, PostgresRegistry)
        with psycopg.connect(POSTGRES_URL, autocommit=True) as admin:  # as a database restart would
            admin.execute("SELECT pg_terminate_backend(%s)", (registry._db.info.backend_pid,))
        registry.set_model_state("t", "big", 1, A, reason="after the restart")  # reconnected, in its schema
        assert states(registry) == {("big", 1): A}
        registry.record_heartbeat("pi-1", heartbeat(), 1.0)
        assert [d.device_id for d in registry.devices()] == ["pi-1"]


# -- devices ------------------------------------------------------------------------------
def test_devices_from_heartbeats_and_presence(registry: Registry) -> None:
    registry.record_heartbeat("pi-1", heartbeat(), 10.0)
    registry.record_heartbeat("gw-1", heartbeat("x86-gateway", group="plant-a",
                                                latency_ms={"local": {"p50": None, "p99": None}}), 11.0)
    registry.record_presence("pi-1", False, 12.0)
    registry.record_presence("new-1", True, 13.0)  # status before any heartbeat
    pi, gw, new = sorted(registry.devices(), key=lambda d: ["pi-1", "gw-1", "new-1"].index(d.device_id))
    assert (pi.kind, pi.group, pi.online, pi.models, pi.offload_rate, pi.p99_ms, pi.last_seen) == (
        "raspberry-pi-4", "raspberry-pi-4", False, {"mnist1d": "2"}, 0.125, 31.0, 10.0)  # worst p99; Will keeps last_seen
    assert (gw.group, gw.online, gw.p99_ms) == ("plant-a", True, None)
    assert (new.online, new.kind, new.models) == (True, "unknown", {})
    registry.record_heartbeat("pi-1", heartbeat(), 20.0)
    assert next(d for d in registry.devices() if d.device_id == "pi-1").online
    history = registry.device_history("pi-1")
    assert [(h["at"], h["event"]) for h in history] == [(20.0, "heartbeat"), (12.0, "offline"), (10.0, "heartbeat")]
    assert history[0]["data"]["latency_ms"]["offload"]["p99"] == 31.0


def test_presence_history_records_changes_only(registry: Registry) -> None:
    for at, online in ((1.0, True), (2.0, True), (3.0, False), (4.0, False), (5.0, True)):
        registry.record_presence("pi-1", online, at)
    assert [(h["at"], h["event"]) for h in registry.device_history("pi-1")] == [
        (5.0, "online"), (3.0, "offline"), (1.0, "online")]


def test_heartbeat_history_is_bounded(backend: Backend) -> None:
    with backend.open(heartbeats_kept=3) as registry:
        registry.record_presence("pi-1", False, 0.5)
        for at in range(1, 8):
            registry.record_heartbeat("pi-1", heartbeat(), float(at))
        registry.record_heartbeat("pi-2", heartbeat(), 1.0)
        assert [(h["at"], h["event"]) for h in registry.device_history("pi-1")] == [
            (7.0, "heartbeat"), (6.0, "heartbeat"), (5.0, "heartbeat"), (0.5, "offline")]
        assert len(registry.device_history("pi-2")) == 1
        assert len(registry.device_history("pi-1", limit=2)) == 2


@pytest.mark.parametrize("bad, words", [
    ({"kind": 7}, "kind"),
    ({"offload_rate": "lots"}, "offload_rate"),
    ({"offload_rate": 1.5}, "offload_rate"),
    ({"models": ["mnist1d"]}, "models"),
    ({"latency_ms": {"local": {"p99": "slow"}}}, "latency_ms.local.p99"),
])
def test_a_bad_heartbeat_names_its_field_and_changes_nothing(registry: Registry, bad: dict[str, Any],
                                                             words: str) -> None:
    with pytest.raises(ValueError, match=words):
        registry.record_heartbeat("pi-1", {**heartbeat(), **bad}, 1.0)
    assert registry.devices() == [] and registry.device_history("pi-1") == []


# -- opening by URL (no database needed beyond files and a closed port) --------------------
def test_federated_rounds_are_kept_in_order_and_a_repeated_round_replaces_its_row(registry: Registry) -> None:
    first = RoundRecord("run-1", "mnist1d", 1, 3, 1, 0, 900, 0.81, 0.30, None, 11.5, 100.0, {"train-loss": 0.9})
    registry.record_round(first)
    registry.record_round(RoundRecord("run-2", "digits", 1, 2, 0, 0, 400, None, None, None, 3.0, 101.0, {}))
    registry.record_round(replace(first, round=2, accuracy=0.84, release="mnist1d-edge v2", at=102.0))
    registry.record_round(replace(first, accuracy=0.82, at=103.0))  # round 1 again, after a resumed run
    run = registry.rounds("run-1")
    assert [(r.round, r.accuracy, r.release) for r in run] == [(2, 0.84, "mnist1d-edge v2"), (1, 0.82, None)]
    assert run[1].details == {"train-loss": 0.9} and run[1].declined == 1
    assert {r.run for r in registry.rounds()} == {"run-1", "run-2"}


def test_open_registry_by_path_url_and_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with open_registry(tmp_path / "a.db") as by_path:
        by_path.add_model("t", "big", 1)
    with open_registry(f"sqlite:///{tmp_path / 'a.db'}") as by_url:
        assert len(by_url.models()) == 1
    monkeypatch.setenv("FEDGE_REGISTRY", str(tmp_path / "env" / "r.db"))
    assert existing_registry(None) is None  # looking creates nothing
    with open_registry(None) as default:
        default.add_model("t", "big", 1)
    assert (tmp_path / "env" / "r.db").is_file()
    with pytest.raises(ValueError, match="postgresql://"):
        open_registry("mysql://db/x")
    with pytest.raises(RegistryUnavailable, match="PostgreSQL"):
        open_registry(f"postgresql://postgres@127.0.0.1:{free_port()}/nothing")


# -- the models commands ------------------------------------------------------------------
@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two versions of a real (tiny) ONNX model in a model store."""
    import onnx
    from onnx import TensorProto, helper

    from agent.model_store import ModelStore
    from cloud.store import publish

    root = tmp_path_factory.mktemp("models")
    graph = helper.make_graph([helper.make_node("Identity", ["input"], ["logits"])], "tiny",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, [None, 4])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [None, 4])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), root / "tiny.onnx")
    for accuracy in (0.8, 0.9):
        publish(ModelStore(root / "store"), "t", "t-cloud", root / "tiny.onnx", metrics={"test_accuracy": accuracy})
    return root / "store"


@dataclass(frozen=True)
class Ran:
    returncode: int
    stdout: str
    stderr: str


@pytest.fixture
def fedge_cloud(capsys: pytest.CaptureFixture[str]) -> Callable[..., Ran]:
    """`fedge-cloud ARGS` in this process (the CLI imports torch: a process per call costs seconds)."""
    from cloud.cli import main  # not at the top: the spawned writers import this module, and need no torch

    def run(*args: str) -> Ran:
        code = main(list(args))
        out, err = capsys.readouterr()
        return Ran(code, out, err)

    return run


def test_models_promote_rollback_and_list(store: Path, tmp_path: Path, fedge_cloud: Callable[..., Ran]) -> None:
    where = ["--registry", str(tmp_path / "r.db"), "--store", str(store)]
    plain = fedge_cloud("models", "list", *where)
    assert plain.returncode == 0 and "state" not in plain.stdout  # no registry yet: no state column
    for version in ("1", "2"):
        promoted = fedge_cloud("models", "promote", "--task", "t", "--name", "t-cloud", "--version", version, *where)
        assert promoted.returncode == 0, promoted.stderr
        assert f"t/t-cloud v{version} is active" in promoted.stdout
    rows = json.loads(fedge_cloud("models", "list", "--json", *where).stdout)
    assert [(r["version"], r["state"]) for r in rows] == [(1, "retired"), (2, "active")]
    back = fedge_cloud("models", "rollback", "--task", "t", "--name", "t-cloud", *where)
    assert back.returncode == 0 and "rolled back to v1" in back.stdout
    table = fedge_cloud("models", "list", *where).stdout.splitlines()
    assert "state" in table[0] and "active" in table[1] and "retired" in table[2]
    with open_registry(tmp_path / "r.db") as registry:
        assert registry.models("t")[0].metrics == {"test_accuracy": 0.8}  # taken from the manifest
        assert registry.model_history("t", "t-cloud")[-1].reason == "rollback"


@pytest.mark.parametrize("args, code, words", [
    (["promote", "--task", "t", "--name", "t-cloud", "--version", "9"], 2, "has no version 9"),
    (["rollback", "--task", "t", "--name", "t-cloud"], 2, "no earlier active version"),
    (["rollback", "--task", "t", "--name", "t-cloud", "--to", "5"], 2, "t/t-cloud v5 is not in the registry"),
    (["promote", "--task", "t", "--name", "t-cloud", "--version", "1", "--registry", "mysql://x/y"], 2, "postgresql://"),
])
def test_models_state_errors_are_clear(store: Path, tmp_path: Path, fedge_cloud: Callable[..., Ran], args: list[str],
                                       code: int, words: str) -> None:
    result = fedge_cloud("models", *args, "--store", str(store),
                         *([] if "--registry" in args else ["--registry", str(tmp_path / "r.db")]))
    assert result.returncode == code
    assert words in result.stderr and "Traceback" not in result.stderr
