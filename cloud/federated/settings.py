"""What a federated run is asked to do, and how it travels to the ServerApp.

``fedge-cloud fl serve`` starts Flower's SuperLink, which runs the ServerApp in
a process of its own: the settings cross as the run's config (Flower's
``run_config``, TOML scalars under kebab-case keys). ``fl simulate`` hands them
to the same ServerApp in-process. Unset optional values travel as "".
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, fields
from typing import Any

STRATEGIES = ("fedavg", "fedavgm", "fedprox", "trimmed-mean", "median", "krum")


@dataclass(frozen=True)
class FederatedSettings:
    """One federated run: rounds, sampling, the strategy, the devices' recipe, releases, and where things are."""

    task: str = "mnist1d"
    model: str = ""  # the edge model fine-tuned: "" means <task>-edge
    rounds: int = 10
    rounds_per_release: int = 0  # every K rounds the aggregate is compressed, signed and rolled out; 0: never
    min_nodes: int = 2
    fraction: float = 1.0
    round_timeout_s: float = 120.0
    strategy: str = "fedavg"
    server_momentum: float = 0.9  # fedavgm: momentum of the server's update (non-IID fleets drift less)
    server_learning_rate: float = 1.0  # fedavgm
    proximal_mu: float = 0.01  # fedprox
    trim_beta: float = 0.2  # trimmed-mean: the share cut from each end
    krum_malicious: int = 1  # krum: devices assumed malicious
    local_epochs: int = 0  # 0: each device's federated.local_epochs
    learning_rate: float = 0.002  # with 10 local epochs (the profile default): bench/federated.py measured why
    temperature: float = 2.0
    distill_weight: float = 0.8
    dp_noise: float = 0.0  # client-side fixed-clipping DP: the noise multiplier; 0 is no DP
    dp_clip: float = 1.0  # the clipping norm of the update
    max_accuracy_drop: float = 0.5  # points a release may lose against the current edge release (held-out data)
    store: str = "store"
    registry: str = ""  # "": $FEDGE_REGISTRY or ./var/registry.db
    run: str = ""  # fedge's run id (rounds in the registry); "": made up at start
    state_dir: str = ""  # where the aggregate is kept after every round, so a run can resume; "": none
    key_file: str = ""  # the release signing key; "" with rounds_per_release > 0: releases are stored, unsigned
    broker: str = ""  # mqtt://host:port for rollouts; "": no rollout (the release is published and signed only)
    broker_username: str = ""
    broker_password_env: str = ""
    group: str = "default"  # the device group releases go to
    canary: float = 0.1
    rollout_timeout_s: float = 120.0
    poll_s: float = 0.2  # how often the server looks for replies (Flower's own grid waits 3 s between looks)
    train_size: int = 4000  # the zoo task's data: the held-out part is what rounds and releases are judged on
    test_size: int = 1000
    data_seed: int = 42

    @property
    def model_name(self) -> str:
        return self.model or f"{self.task}-edge"

    def to_run_config(self) -> dict[str, str | int | float | bool]:
        """The settings as Flower run config: kebab-case keys, TOML scalars."""
        return {f.name.replace("_", "-"): getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_run_config(cls, config: dict[str, Any]) -> FederatedSettings:
        """Settings from a run config; keys it lacks keep their defaults, unknown keys are an error."""
        known = {f.name: f for f in fields(cls)}
        values: dict[str, Any] = {}
        for key, value in config.items():
            name = key.replace("-", "_")
            if name not in known:
                raise ValueError(f"run config key {key!r} is not a fedge federated setting")
            kind = type(getattr(cls(), name))
            values[name] = kind(value)
        return cls(**values)

    def replace(self, **changes: Any) -> FederatedSettings:
        return dataclasses.replace(self, **changes)

    def check(self) -> None:
        """ValueError naming the first setting out of range."""
        rules = [
            (self.strategy in STRATEGIES, f"strategy {self.strategy!r}: use one of {', '.join(STRATEGIES)}"),
            (self.rounds >= 1, "rounds must be at least 1"),
            (self.rounds_per_release >= 0, "rounds per release must be 0 (never) or more"),
            (self.min_nodes >= 1, "min nodes must be at least 1"),
            (0 < self.fraction <= 1, "fraction must be above 0 and at most 1"),
            (self.round_timeout_s > 0, "the round timeout must be positive"),
            (self.learning_rate > 0, "the learning rate must be positive"),
            (self.temperature > 0, "the distillation temperature must be positive"),
            (0 <= self.distill_weight <= 1, "the distillation weight must be in [0, 1]"),
            (self.local_epochs >= 0, "local epochs must be 0 (each device's own) or more"),
            (self.dp_noise >= 0 and self.dp_clip > 0, "DP needs a noise multiplier >= 0 and a clipping norm > 0"),
            (0 <= self.trim_beta < 0.5, "the trimmed share must be in [0, 0.5)"),
            (self.strategy != "krum" or self.min_nodes > 2 * self.krum_malicious + 2,
             "krum needs more than 2 x (malicious devices) + 2 nodes per round: raise --min-nodes"),
        ]
        for ok, problem in rules:
            if not ok:
                raise ValueError(problem)
