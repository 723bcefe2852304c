"""Flower's own strategies by the names ``fedge-cloud fl`` takes, with client-side DP as an option.

Nothing here aggregates by hand: each name is a strategy of ``flwr.serverapp.strategy``.
The server never asks devices to evaluate (``fraction_evaluate=0``): a round
trip costs a device a new ClientApp process, and the cloud judges the aggregate
on its own held-out data instead (cloud/federated/evaluation.py).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypedDict

from flwr.serverapp.strategy import (
    DifferentialPrivacyClientSideFixedClipping,
    FedAvg,
    FedAvgM,
    FedMedian,
    FedProx,
    FedTrimmedAvg,
    Krum,
    Strategy,
)

from cloud.federated.settings import FederatedSettings


def _fedavg(s: FederatedSettings) -> Strategy:
    return FedAvg(**_sampling(s))


def _fedavgm(s: FederatedSettings) -> Strategy:
    return FedAvgM(**_sampling(s), server_learning_rate=s.server_learning_rate, server_momentum=s.server_momentum)


def _fedprox(s: FederatedSettings) -> Strategy:
    return FedProx(**_sampling(s), proximal_mu=s.proximal_mu)


def _trimmed_mean(s: FederatedSettings) -> Strategy:
    return FedTrimmedAvg(**_sampling(s), beta=s.trim_beta)


def _median(s: FederatedSettings) -> Strategy:
    return FedMedian(**_sampling(s))


def _krum(s: FederatedSettings) -> Strategy:
    return Krum(**_sampling(s), num_malicious_nodes=s.krum_malicious)


#: One Flower strategy per ``--strategy`` name (settings.STRATEGIES lists them in this order).
STRATEGY_FACTORIES: dict[str, Callable[[FederatedSettings], Strategy]] = {
    "fedavg": _fedavg, "fedavgm": _fedavgm, "fedprox": _fedprox, "trimmed-mean": _trimmed_mean, "median": _median, "krum": _krum,
}


class _Sampling(TypedDict):
    fraction_train: float
    fraction_evaluate: float
    min_train_nodes: int
    min_evaluate_nodes: int
    min_available_nodes: int


def _sampling(s: FederatedSettings) -> _Sampling:
    return {"fraction_train": s.fraction, "fraction_evaluate": 0.0, "min_train_nodes": s.min_nodes,
            "min_evaluate_nodes": 0, "min_available_nodes": s.min_nodes}


def make_strategy(settings: FederatedSettings) -> Strategy:
    """The run's strategy; wrapped in Flower's client-side fixed-clipping DP when ``dp_noise`` > 0.

    The DP wrapper's ``num_sampled_clients`` is set per round by the round loop (cloud/federated/rounds.py),
    since how many devices a round samples depends on how many are online.
    """
    strategy = STRATEGY_FACTORIES[settings.strategy](settings)
    if settings.dp_noise > 0:
        return DifferentialPrivacyClientSideFixedClipping(strategy, noise_multiplier=settings.dp_noise,
                                                          clipping_norm=settings.dp_clip,
                                                          num_sampled_clients=settings.min_nodes)
    return strategy
