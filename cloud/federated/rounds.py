"""The server's round loop: sample who is online, train on the devices, check, aggregate, judge, release.

Flower's ``Strategy.start`` waits without a deadline for its minimum of nodes and
aggregates whatever comes back. Here each round is driven with the strategy's
own ``configure_train`` and ``aggregate_train`` (Flower does the federated
averaging, or the median, or Krum), around them what a fleet needs:

* Sampling never waits forever: a round starts with the nodes online within the
  round timeout if there are at least ``min_nodes`` of them, and is skipped with
  a clear message otherwise.
* Replies come in by polling the grid every ``poll_s`` (Flower's grid sleeps 3 s
  between looks); replies missing at the round timeout are left out.
* Every reply is checked on its own before aggregation (cloud/federated/checks.py).
* The aggregate is judged on the cloud's held-out data, recorded in the registry
  (``fedge-cloud fl status``), kept on disk so a run can resume, and every K
  rounds offered as a release (cloud/federated/release.py).
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message
from flwr.serverapp import Grid
from flwr.serverapp.strategy import DifferentialPrivacyClientSideFixedClipping, Strategy

from agent.federated.architectures import ArchConfig, build
from agent.federated.training import float_state
from agent.model_store import ModelStore, StoredModel
from cloud.federated.checks import Sorted, sort_replies
from cloud.federated.evaluation import HeldOut, edge_model, held_out, judge
from cloud.federated.release import release_aggregate
from cloud.federated.settings import FederatedSettings
from cloud.federated.strategies import make_strategy
from cloud.registry import ModelState, Registry, RoundRecord
from cloud.store import load_checkpoint
from cloud.zoo.tasks import DataOptions

log = logging.getLogger(__name__)
CHECKPOINT = "aggregate.npz"
#: BatchNorm statistics: frozen on the devices (agent/federated/training.py), so what an aggregate says of them is
#: only DP noise or a poisoner's: noise on a running variance of 0.03 (the edge model's smallest) took 10 DP rounds
#: from 89 % to 21 % accuracy in bench/federated.py.
FROZEN = ("running_mean", "running_var")


class _Online:
    """The nodes found online, as ``configure_train`` sees the grid: its sampling then never waits."""

    def __init__(self, nodes: list[int]) -> None:
        self._nodes = nodes

    def get_node_ids(self) -> list[int]:
        return list(self._nodes)


@dataclass
class _Start:
    """Where a run starts: its base release, the weights, and the round they come from (0: the release)."""

    base: StoredModel
    arch: ArchConfig
    arrays: dict[str, np.ndarray]
    round: int


def current_release(store: ModelStore, registry: Registry, task: str, name: str) -> StoredModel:
    """The edge release serving now: the registry's active version of ``name``, else the store's newest."""
    active = [m for m in registry.active(task) if m.name == name]
    return store.get(task, name, active[0].version if active else None)


class RoundLoop:
    """Runs one federated run's rounds on a Flower grid."""

    def __init__(self, grid: Grid, settings: FederatedSettings, registry: Registry,
                 report: Callable[[RoundRecord], None] = lambda _r: None) -> None:
        settings.check()
        self.grid, self.registry, self.report = grid, registry, report
        self.settings = settings if settings.run else settings.replace(run=uuid.uuid4().hex[:12])
        self.store = ModelStore(Path(self.settings.store))
        self.strategy: Strategy = make_strategy(self.settings)
        data = DataOptions(self.settings.train_size, self.settings.test_size, self.settings.data_seed)
        self.data: HeldOut = held_out(self.store, self.settings.task, data)

    def run(self) -> list[RoundRecord]:
        s = self.settings
        start = self._start()
        log.info("federated run %s: %s/%s from v%s, rounds %d to %d, strategy %s", s.run, s.task, s.model_name,
                 start.base.manifest.version, start.round + 1, s.rounds, s.strategy)
        arrays, base, records = start.arrays, start.base, []
        if start.round == 0:
            records.append(self._record(0, arrays, start.arch, Sorted(), 0, 0.0, None, {}))
        for number in range(start.round + 1, s.rounds + 1):
            began = time.monotonic()
            nodes = self._online()
            if len(nodes) < s.min_nodes:
                skipped = f"skipped: {len(nodes)} of {s.min_nodes} nodes online within {s.round_timeout_s:g} s"
                log.warning("round %d %s", number, skipped)
                records.append(self._record(number, arrays, start.arch, Sorted(), 0, time.monotonic() - began,
                                            skipped, {}))
                continue
            sent = ArrayRecord({name: Array(value) for name, value in arrays.items()})
            replies, asked = self._train(number, nodes, sent, start.arch)
            checked = sort_replies(replies, sent)
            details = _round_details(checked, sent, time.monotonic() - began)
            arrays = self._aggregate(number, checked, arrays)
            note: str | None = None
            if s.rounds_per_release and number % s.rounds_per_release == 0 and checked.kept:
                outcome = release_aggregate(edge_model(start.arch.as_dict(), arrays), start.arch, base, self.data,
                                            s, self.store, self.registry, number)
                # the next release must beat what serves now: not a release its canary rolled back
                note, base = outcome.note, current_release(self.store, self.registry, s.task, s.model_name)
            records.append(self._record(number, arrays, start.arch, checked, asked, time.monotonic() - began,
                                        note, details))
            self._keep(number, arrays, base, start.arch)
        return records

    # -- one round ------------------------------------------------------------------------
    def _online(self) -> list[int]:
        """The nodes online, once ``min_nodes`` are (or whoever is there when the round timeout passes)."""
        deadline = time.monotonic() + self.settings.round_timeout_s
        while True:
            nodes = sorted(self.grid.get_node_ids())
            if len(nodes) >= self.settings.min_nodes or time.monotonic() >= deadline:
                return nodes
            time.sleep(self.settings.poll_s)

    def _train(self, number: int, nodes: list[int], sent: ArrayRecord, arch: ArchConfig
               ) -> tuple[list[Message], int]:
        """The replies of the nodes the strategy sampled, and how many it sampled."""
        s = self.settings
        config = ConfigRecord({"task": s.task, "arch": json.dumps(arch.as_dict()), "classes": arch.classes,
                               "learning-rate": s.learning_rate, "temperature": s.temperature,
                               "distill-weight": s.distill_weight, "local-epochs": s.local_epochs})
        if isinstance(self.strategy, DifferentialPrivacyClientSideFixedClipping):
            self.strategy.num_sampled_clients = max(int(len(nodes) * s.fraction), s.min_nodes)
        messages = list(self.strategy.configure_train(number, sent, config, cast(Grid, _Online(nodes))))
        return self._send_and_receive(messages), len(messages)

    def _send_and_receive(self, messages: list[Message]) -> list[Message]:
        """Every reply that arrives within the round timeout, looking every ``poll_s``."""
        pending = set(self.grid.push_messages(messages))
        deadline = time.monotonic() + self.settings.round_timeout_s
        replies: list[Message] = []
        while pending and time.monotonic() < deadline:
            for reply in self.grid.pull_messages(list(pending)):
                replies.append(reply)
                pending.discard(reply.metadata.reply_to_message_id)
            if pending:
                time.sleep(self.settings.poll_s)
        if pending:
            log.warning("%d of %d nodes did not answer within %g s; the round goes on without them", len(pending),
                        len(messages), self.settings.round_timeout_s)
        return replies

    def _aggregate(self, number: int, checked: Sorted, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The strategy's aggregate of the kept replies, BatchNorm statistics as they were; with none kept, as before."""
        if not checked.kept:
            log.warning("round %d: no reply to aggregate; the weights stay as they were", number)
            return arrays
        aggregated, _ = self.strategy.aggregate_train(number, checked.kept)
        if aggregated is None:
            return arrays
        return {name: arrays[name] if name.endswith(FROZEN) else np.asarray(array.numpy(), dtype=np.float32)
                for name, array in aggregated.items()}

    def _record(self, number: int, arrays: dict[str, np.ndarray], arch: ArchConfig, checked: Sorted, asked: int,
                seconds: float, release: str | None, details: dict[str, float]) -> RoundRecord:
        verdict = judge(edge_model(arch.as_dict(), arrays), self.data)
        fleet = [d.offload_rate for d in self.registry.devices() if d.online and d.offload_rate is not None]
        unanswered = max(0, asked - len(checked.kept) - len(checked.declined) - len(checked.dropped))
        record = RoundRecord(
            run=self.settings.run, task=self.settings.task, round=number, participants=len(checked.kept),
            declined=len(checked.declined), dropped=len(checked.dropped) + unanswered,
            examples=int(sum(_metric(r, "num-examples") for r in checked.kept)), accuracy=verdict.test_accuracy,
            offload_rate=verdict.offload_needed, release=release, seconds=seconds, at=time.time(),
            details={**details, "validation_accuracy": verdict.validation_accuracy,
                     "cloud_accuracy": self.data.cloud_accuracy,
                     **({"fleet_offload_rate": float(np.mean(fleet))} if fleet else {}),
                     **({"declined": checked.declined[:5]} if checked.declined else {}),
                     **({"dropped": checked.dropped[:5]} if checked.dropped else {})})
        self.registry.record_round(record)
        self.report(record)
        return record

    # -- start and resume -----------------------------------------------------------------
    def _start(self) -> _Start:
        """The base release's fp32 weights, or the run's kept aggregate when it resumes."""
        s = self.settings
        kept = Path(s.state_dir) / CHECKPOINT if s.state_dir else None
        if kept is not None and kept.is_file():
            with np.load(kept) as saved:
                meta = json.loads(str(saved["meta"]))
                if meta["run"] == s.run:
                    base = self.store.get(s.task, s.model_name, int(meta["base_version"]))
                    arrays = {k: saved[k] for k in saved.files if k != "meta"}
                    log.info("run %s resumes after round %d", s.run, meta["round"])
                    return _Start(base, ArchConfig.from_dict(meta["arch"]), arrays, int(meta["round"]))
        base = current_release(self.store, self.registry, s.task, s.model_name)
        if self.registry.model(s.task, s.model_name, base.manifest.version) is None:
            self.registry.add_model(s.task, s.model_name, base.manifest.version, ModelState.ACTIVE,
                                    base.manifest.metrics)
        checkpoint = load_checkpoint(base)
        arch = ArchConfig.from_dict(checkpoint["arch"])
        model = build(arch)
        model.load_state_dict(checkpoint["state_dict"])
        return _Start(base, arch, float_state(model), 0)

    def _keep(self, number: int, arrays: dict[str, np.ndarray], base: StoredModel, arch: ArchConfig) -> None:
        """The aggregate after ``number``, written whole (temp file, rename), for a resumed run."""
        if not self.settings.state_dir:
            return
        folder = Path(self.settings.state_dir)
        folder.mkdir(parents=True, exist_ok=True)
        meta = {"run": self.settings.run, "round": number, "base_version": base.manifest.version,
                "arch": arch.as_dict()}
        temp = folder / f".{CHECKPOINT}"
        save = cast(Callable[..., None], np.savez)  # numpy's stub types **kwds as its own flags
        with temp.open("wb") as handle:
            save(handle, meta=json.dumps(meta), **arrays)
        temp.replace(folder / CHECKPOINT)


def _metric(reply: Message, key: str) -> float:
    value = next(iter(reply.content.metric_records.values())).get(key, 0.0)
    return float(value) if isinstance(value, (int, float)) else 0.0


def _round_details(checked: Sorted, sent: ArrayRecord, seconds: float) -> dict[str, float]:
    """The devices' mean metrics, the longest local training and Flower's share, and bytes per client each way."""
    kept = checked.kept
    if not kept:
        return {}
    mean = {key: float(np.mean([_metric(r, key) for r in kept]))
            for key in ("held-out-accuracy", "cloud-agreement", "train-loss")}
    training = max(_metric(r, "train-seconds") for r in kept)
    down = float(sum(array.numpy().nbytes for array in sent.values()))
    return {**{k.replace("-", "_"): v for k, v in mean.items()}, "train_seconds": training,
            "flower_seconds": max(0.0, seconds - training), "bytes_down_per_client": down,
            "bytes_up_per_client": float(np.mean([sum(a.numpy().nbytes for a in _arrays(r)) for r in kept]))}


def _arrays(reply: Message) -> Iterable[Array]:
    return next(iter(reply.content.array_records.values())).values()

