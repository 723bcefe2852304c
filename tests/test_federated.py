"""Federated fine-tuning with real parts: Flower's simulation engine, real SuperLink and SuperNodes, a real broker.

Sizes are small (a few devices, a few rounds): each deployment round costs ~12 s on
two cores, because Flower starts a new ClientApp process (torch, flwr) per message.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from agent import process_tree
from agent.agent import Agent
from agent.model_store import ModelStore
from agent.process_tree import descendants
from agent.protocol import Topics
from agent.samples import SampleStore
from cloud.federated.fleet_data import FleetPlan, build_fleet, dirichlet_partition
from cloud.federated.settings import FederatedSettings
from cloud.federated.simulate import Attack, simulate
from cloud.federated.window import WindowPublisher
from cloud.local.mosquitto import Mosquitto, free_port
from cloud.registry import RoundRecord, open_registry
from cloud.zoo.tasks import DataOptions
from tests.agent_support import TEST_SIZE, TRAIN_SIZE, make_profile, train_small_zoo
from tests.mqtt_helpers import eventually

FEDGE_CLOUD = str(Path(sys.executable).with_name("fedge-cloud"))
NODE = {"min-samples": 32, "local-epochs": 1, "batch-size": 32}


@pytest.fixture(scope="module")
def zoo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store with small trained MNIST-1D edge and cloud models (and their fp32 checkpoints)."""
    root = tmp_path_factory.mktemp("federated")
    train_small_zoo(root / "store")
    return root / "store"


def settings_for(zoo: Path, tmp: Path, **changes: object) -> FederatedSettings:
    base = FederatedSettings(task="mnist1d", rounds=2, min_nodes=3, store=str(zoo), registry=str(tmp / "registry.db"),
                             round_timeout_s=120, train_size=TRAIN_SIZE, test_size=TEST_SIZE, state_dir=str(tmp / "state"))
    return base.replace(**changes)


def test_settings_travel_as_a_flower_run_config_and_come_back_equal() -> None:
    settings = FederatedSettings(task="digits", rounds=7, strategy="median", dp_noise=0.5, key_file="k", run="r1")
    assert FederatedSettings.from_run_config(settings.to_run_config()) == settings
    with pytest.raises(ValueError, match="not a fedge federated setting"):
        FederatedSettings.from_run_config({"roundz": 3})
    with pytest.raises(ValueError, match="krum needs more than"):
        FederatedSettings(strategy="krum", min_nodes=3, krum_malicious=1).check()


def test_dirichlet_partitions_are_skewed_disjoint_and_full() -> None:
    labels = np.repeat(np.arange(10), 300)
    parts = dirichlet_partition(labels, 5, 0.1, 400, np.random.default_rng(0))
    rows = np.concatenate(parts)
    assert [len(p) for p in parts] == [400] * 5 and len(np.unique(rows)) == len(rows)
    top_share = [np.bincount(labels[p], minlength=10).max() / len(p) for p in parts]
    assert min(top_share) > 0.3  # alpha 0.1: each device dominated by a class or two (IID would give ~0.1)


def test_simulated_fleet_keeps_what_an_agent_would(zoo: Path, tmp_path: Path) -> None:
    plan = FleetPlan(devices=3, samples_per_device=300, threshold=0.8, audit_rate=0.2, feedback_rate=0.5)
    devices = build_fleet(ModelStore(zoo), "mnist1d", "mnist1d-edge", plan, tmp_path,
                          DataOptions(train_size=TRAIN_SIZE, test_size=TEST_SIZE))
    for device in devices:
        store = SampleStore.reader(device.store)
        kept = store.training_set("mnist1d")
        assert store.count("mnist1d") == device.kept == device.offloaded + device.audited
        assert store.count("mnist1d", "audit") == device.audited > 0
        assert not np.isnan(kept.soft).any() and 0 < (kept.labels >= 0).sum() < len(kept.labels)
        store.close()


def rounds_of(settings: FederatedSettings) -> list[RoundRecord]:
    with open_registry(settings.registry) as registry:
        return registry.rounds(settings.run)


def test_simulation_drops_nan_replies_counts_declines_and_records_every_round(zoo: Path, tmp_path: Path) -> None:
    """Flower's simulation engine: one device sends NaN (dropped, with a reason), rounds go on with the rest."""
    settings = settings_for(zoo, tmp_path, run="nan", min_nodes=3)
    plan = FleetPlan(devices=3, samples_per_device=400)
    records = simulate(settings, plan, tmp_path / "sim", attack=Attack("nan", 1), engine="simulation",
                       report=lambda _r: None, node=NODE)
    assert [r.round for r in records] == [0, 1, 2] == [r.round for r in rounds_of(settings)]
    for r in records[1:]:
        assert (r.participants, r.dropped) == (2, 1), r
        assert any("NaN" in reason for reason in r.details["dropped"]), r.details
        assert np.isfinite(r.accuracy) and r.examples > 0
    # a device below its min-samples declines politely: the round goes on without it
    few = settings.replace(run="few", rounds=1)
    declined = simulate(few, plan, tmp_path / "few", attack=Attack(), engine="simulation", report=lambda _r: None,
                        node={**NODE, "min-samples": 10_000})
    assert (declined[-1].participants, declined[-1].declined) == (0, 3)
    assert "usable samples" in declined[-1].details["declined"][0]


def test_dp_noise_trains_the_weights_and_leaves_the_batchnorm_statistics_as_the_devices_do(zoo: Path,
                                                                                          tmp_path: Path) -> None:
    """Flower's DP wrapper noises every array it aggregates; the statistics devices never change must not drift."""
    from cloud.store import load_checkpoint

    settings = settings_for(zoo, tmp_path, run="dp", rounds=1, dp_noise=0.5, dp_clip=1.0)
    simulate(settings, FleetPlan(devices=3, samples_per_device=400), tmp_path / "sim", attack=Attack(),
             engine="simulation", report=lambda _r: None, node=NODE)
    checkpoint = load_checkpoint(ModelStore(zoo).get("mnist1d", "mnist1d-edge"))
    with np.load(tmp_path / "state" / "aggregate.npz") as kept:
        aggregate = {name: kept[name] for name in kept.files if name != "meta"}
    start = {name: value.numpy() for name, value in checkpoint["state_dict"].items() if name in aggregate}
    statistics = [name for name in aggregate if name.endswith(("running_mean", "running_var"))]
    assert statistics and all(np.array_equal(aggregate[n], start[n]) for n in statistics)
    assert all(not np.array_equal(aggregate[n], start[n]) for n in aggregate if n not in statistics)


def test_a_poisoned_device_hurts_fedavg_and_not_the_median(zoo: Path, tmp_path: Path) -> None:
    """A device sending its update x100: FedAvg's aggregate collapses, the median's stays near the clean run.

    (bench/federated.py measures trimmed-mean and Krum the same way.)
    """
    plan = FleetPlan(devices=5, samples_per_device=400, dirichlet=1.0)
    accuracy = {}
    for name, strategy, attack in (("clean", "fedavg", Attack()), ("fedavg", "fedavg", Attack("scale", 1, 100.0)),
                                   ("median", "median", Attack("scale", 1, 100.0))):
        settings = settings_for(zoo, tmp_path, run=name, rounds=2, min_nodes=5, strategy=strategy, learning_rate=0.003)
        records = simulate(settings, plan, tmp_path / name, attack=attack, engine="simulation",
                           report=lambda _r: None, node=NODE)
        accuracy[name] = records[-1].accuracy
    assert accuracy["fedavg"] < accuracy["clean"] - 0.2, accuracy  # visibly broken
    assert abs(accuracy["median"] - accuracy["clean"]) <= 0.02, accuracy  # within 2 points of the clean run


@pytest.fixture
def window_agent(zoo: Path, tmp_path: Path, broker: Mosquitto) -> Iterator[Agent]:
    federated = {"enabled": True, "server_address": f"127.0.0.1:{free_port()}", "clientapp_port": free_port()}
    profile = make_profile(tmp_path, broker, federated=federated, api_port=free_port())
    with Agent(profile, store_root=zoo) as agent:
        yield agent


def test_the_agent_runs_its_supernode_only_while_the_training_window_is_open(
        window_agent: Agent, broker: Mosquitto) -> None:
    agent = window_agent
    assert agent.supernode is not None and not agent.supernode.running
    with WindowPublisher(broker.settings, Topics(), "run-7", "mnist1d") as window:
        window.open(60)
        assert eventually(lambda: agent.supernode is not None and agent.supernode.running, 15)
        pid = agent.supernode.pid
        assert pid is not None and "flower-supernode" in Path(f"/proc/{pid}/cmdline").read_text()
        assert agent.heartbeat()["federated"] == {"supernode": True, "window": "run-7"}
        window.close()
        assert eventually(lambda: not agent.supernode.running, 20)  # type: ignore[union-attr]
    assert not _cmdline(pid), "the SuperNode is gone, stopped by PID"


def test_a_window_past_its_end_stops_the_supernode_by_itself(window_agent: Agent, broker: Mosquitto) -> None:
    agent = window_agent
    with WindowPublisher(broker.settings, Topics(), "short", "mnist1d") as window:
        window.open(3)  # a coordinator that died after opening it would never close it
        assert eventually(lambda: agent.supernode is not None and agent.supernode.running, 15)
        assert eventually(lambda: not agent.supernode.running, 20)  # type: ignore[union-attr]


def _stop(process: subprocess.Popen[str]) -> str:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    try:
        out, _ = process.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
        out, _ = process.communicate(timeout=10)
    return out


def test_fl_serve_over_tls_survives_a_killed_node_and_a_superlink_restart_and_refuses_a_stranger(
        zoo: Path, tmp_path: Path) -> None:
    """Deployment engine on loopback, TLS only, node authentication; each device's argv comes from its profile.

    A registered SuperNode is killed mid-round and restarted, the SuperLink is killed between rounds (fl serve
    starts it again and the run resumes), and a SuperNode whose key nobody registered is refused.
    """
    from agent.federated import processes
    from agent.federated.supernode import supernode_argv
    from cloud.federated.node_keys import write_node_key
    from tests.tls_certs import make_certs

    certs = make_certs(tmp_path / "certs")
    keys = [write_node_key(tmp_path / "keys", f"dev-{i}") for i in range(2)]
    stranger_key, _ = write_node_key(tmp_path / "keys", "stranger")
    devices = build_fleet(ModelStore(zoo), "mnist1d", "mnist1d-edge", FleetPlan(devices=2, samples_per_device=400),
                          tmp_path / "fleet", DataOptions(train_size=TRAIN_SIZE, test_size=TEST_SIZE))
    port, registry = free_port(), tmp_path / "registry.db"
    serve = subprocess.Popen(
        [FEDGE_CLOUD, "fl", "serve", "--no-broker", "--store", str(zoo), "--registry", str(registry), "--run", "dep",
         "--rounds", "3", "--min-nodes", "2", "--round-timeout", "90", "--port", str(port), "--host", "127.0.0.1",
         "--state-dir", str(tmp_path / "fl"), "--ssl-certfile", str(certs.server_cert), "--ssl-keyfile",
         str(certs.server_key), "--ssl-ca", str(certs.ca_file), "--enable-supernode-auth",
         "--node-keys", *(str(public) for _, public in keys)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def argv(i: int, key: Path) -> list[str]:
        federated = {"enabled": True, "server_address": f"127.0.0.1:{port}", "clientapp_port": free_port(),
                     "root_certificates": str(certs.ca_file), "auth_key_file": str(key), "min_samples": 32}
        line = supernode_argv(make_profile(tmp_path / f"dev-{i}", None, federated=federated), devices[i % 2].store)
        assert "--insecure" not in line and "--root-certificates" in line
        return line

    def node(i: int) -> subprocess.Popen[bytes]:
        return processes.start(argv(i, keys[i][0]), tmp_path / f"node-{i}.log")

    def recorded() -> list[RoundRecord]:
        if not registry.exists():
            return []
        with open_registry(registry) as r:
            return r.rounds("dep")

    link_log = tmp_path / "fl" / "superlink.log"  # fl serve registers the keys, then submits the run: wait for both
    assert eventually(lambda: link_log.is_file() and "Created run" in link_log.read_text(errors="replace"), 120)
    nodes = [node(0), node(1)]
    stranger = processes.start(argv(2, stranger_key), tmp_path / "stranger.log")
    try:
        assert stranger.wait(120) != 0, "an unregistered SuperNode was let in"
        assert eventually(lambda: any(_clientapp_running(n) for n in nodes), 120), "no node ever trained"
        process_tree.stop(nodes[1])  # SIGTERM mid-round: the SuperLink answers for it at once
        assert eventually(lambda: len(recorded()) >= 2, 120), recorded()
        first = recorded()[1]  # the killed node's message came back as an error: the round went on without it
        assert (first.participants, first.dropped) == (1, 1) and first.accuracy is not None, first
        nodes[1] = node(1)  # rejoins the next round
        superlink = next(pid for pid in descendants(serve.pid) if "flower-superlink" in _cmdline(pid))
        assert eventually(lambda: len(recorded()) >= 3, 120), recorded()
        assert recorded()[2].participants == 2  # the restarted node took part again (the round waited for it)
        os.kill(superlink, signal.SIGKILL)  # between rounds: fl serve starts it again and the run resumes
        assert eventually(lambda: serve.poll() is not None, 240), "fl serve never finished"
    finally:
        for n in (*nodes, stranger):
            process_tree.stop(n)
        out = _stop(serve)
    rounds = recorded()
    assert serve.returncode == 0, out[-3000:]
    assert [r.round for r in rounds] == [0, 1, 2, 3], out[-3000:]
    assert "resum" in out and "Traceback" not in out, out[-3000:]


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_text()
    except OSError:
        return ""


def _clientapp_running(node: subprocess.Popen[bytes]) -> bool:
    return any("flwr-clientapp" in _cmdline(pid) for pid in descendants(node.pid))


def test_fl_status_prints_the_round_table_from_the_registry(tmp_path: Path) -> None:
    registry = tmp_path / "registry.db"
    with open_registry(registry) as r:
        r.record_round(RoundRecord("abc", "mnist1d", 0, 0, 0, 0, 0, 0.8, 0.5, None, 0.0, 1.0, {}))
        r.record_round(RoundRecord("abc", "mnist1d", 1, 3, 1, 0, 900, 0.85, 0.4, "mnist1d-edge v2 promoted",
                                   12.0, 2.0, {}))
    shown = subprocess.run([FEDGE_CLOUD, "fl", "status", "--registry", str(registry)], capture_output=True, text=True,
                           check=False)
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert lines[0] == "run abc (mnist1d)" and "85.0%" in lines[-1] and "mnist1d-edge v2 promoted" in lines[-1]
    as_json = json.loads(subprocess.run([FEDGE_CLOUD, "fl", "status", "--registry", str(registry), "--json"],
                                        capture_output=True, text=True, check=True).stdout)
    assert [r["round"] for r in as_json] == [0, 1]
    missing = subprocess.run([FEDGE_CLOUD, "fl", "status", "--registry", str(tmp_path / "none.db")],
                             capture_output=True, text=True, check=False)
    assert missing.returncode == 3 and "no registry" in missing.stderr


def test_a_release_is_published_and_signed_only_when_it_beats_the_serving_model(zoo: Path, tmp_path: Path) -> None:
    """Every K rounds: quantized within budget, compared with the serving release, signed; or not published, and why."""
    import shutil

    from agent.federated.architectures import ArchConfig, build
    from agent.signing import load_public_key, verify
    from cloud.federated.evaluation import held_out
    from cloud.federated.release import release_aggregate
    from cloud.federated.rounds import current_release
    from cloud.releases.keys import init_keys
    from cloud.store import load_checkpoint

    store_root = tmp_path / "store"
    shutil.copytree(zoo, store_root)
    store = ModelStore(store_root)
    private, public = init_keys(tmp_path / "keys")
    settings = settings_for(zoo, tmp_path, store=str(store_root), key_file=str(private), max_accuracy_drop=0.5)
    data = held_out(store, "mnist1d", DataOptions(train_size=TRAIN_SIZE, test_size=TEST_SIZE))
    with open_registry(tmp_path / "registry.db") as registry:
        serving = current_release(store, registry, "mnist1d", "mnist1d-edge")
        checkpoint = load_checkpoint(serving)
        arch = ArchConfig.from_dict(checkpoint["arch"])
        same = build(arch)
        same.load_state_dict(checkpoint["state_dict"])
        outcome = release_aggregate(same.eval(), arch, serving, data, settings, store, registry, 5)
        assert outcome.published is None and "beyond chance" in outcome.note  # no better than what serves
        impossible = release_aggregate(same.eval(), arch, serving, data, settings.replace(max_accuracy_drop=-5.0),
                                       store, registry, 5)
        assert impossible.published is None and "no variant within" in impossible.note
        assert store.versions("mnist1d", "mnist1d-edge") == [serving.manifest.version]  # the old model keeps serving

        better = build(arch)  # the cloud's knowledge distilled in: trained on held-out-free data until it beats v1
        better.load_state_dict(checkpoint["state_dict"])
        _distil(better, store, data)
        released = release_aggregate(better.eval(), arch, serving, data, settings, store, registry, 10)
    assert released.published is not None, released.note
    m = released.published.manifest
    assert m.version == serving.manifest.version + 1 and m.parent_version == serving.manifest.version
    assert m.recipe is not None and m.recipe["federated"]["round"] == 10
    verify(m, load_public_key(public), "the released manifest")  # signed with the release key
    assert "signed (no --broker)" in released.note


def test_a_release_must_beat_the_serving_model_by_more_than_chance() -> None:
    from cloud.federated.evaluation import beats

    def rows(gained: int, lost: int, both: int = 100) -> tuple[np.ndarray, np.ndarray]:
        new = np.array([True] * gained + [False] * lost + [True] * both)
        return new, np.array([False] * gained + [True] * lost + [True] * both)

    assert beats(*rows(0, 0)) == (False, 0, 0)  # the same answers: nothing gained
    assert beats(*rows(1, 0))[0] is False  # one row is noise (half a point on 200 rows)
    assert beats(*rows(10, 6))[0] is False  # four rows ahead of sixteen swapped: chance
    assert beats(*rows(12, 1)) == (True, 12, 1)


def _distil(model: object, store: ModelStore, data: object) -> None:
    """Fine-tune on fresh MNIST-1D inputs labelled by the cloud model until the edge clearly improves."""
    from agent.confidence import softmax
    from agent.federated.training import Recipe, fine_tune
    from agent.samples import TrainingSet
    from agent.session import open_session
    from cloud.zoo.tasks import get_task

    fresh = get_task("mnist1d").load(DataOptions(train_size=6000, test_size=100, seed=777))
    session = open_session(store.get("mnist1d", "mnist1d-cloud").model_path)
    soft = softmax(session.run(None, {"input": fresh.x_train})[0]).astype(np.float32)
    fine_tune(model, TrainingSet(fresh.x_train, soft, np.full(len(soft), -1)), 10,  # type: ignore[arg-type]
              Recipe(epochs=4, learning_rate=0.02))


def test_fine_tuning_keeps_batchnorm_statistics_and_trains_everything_else(zoo: Path) -> None:
    """A device's few, skewed, hard samples must not re-estimate the statistics every device normalizes by."""
    import torch

    from agent.federated.architectures import ArchConfig, build
    from agent.federated.training import Recipe, fine_tune, float_state
    from agent.samples import TrainingSet
    from cloud.store import load_checkpoint

    checkpoint = load_checkpoint(ModelStore(zoo).get("mnist1d", "mnist1d-edge"))
    model = build(ArchConfig.from_dict(checkpoint["arch"]))
    model.load_state_dict(checkpoint["state_dict"])
    before = float_state(model)
    rng = np.random.default_rng(0)
    x = (rng.normal(size=(36, 40)) * 5 + 3).astype(np.float32)  # far from the data the statistics came from
    result = fine_tune(model, TrainingSet(x, np.full((36, 10), np.nan, np.float32), np.full(36, 7)), 10,
                       Recipe(epochs=2, batch_size=32))
    assert (result.examples, result.held_out) == (33, 3)  # batches of 32 and 1: eval-mode BatchNorm takes one row
    after = float_state(model)
    statistics = [name for name in before if name.endswith(("running_mean", "running_var"))]
    assert statistics and all(np.array_equal(before[n], after[n]) for n in statistics)
    assert all(not np.array_equal(before[n], after[n]) for n in before if n not in statistics)
    assert not model.training and all(not m.training for m in model.modules()
                                      if isinstance(m, torch.nn.modules.batchnorm.BatchNorm1d))
