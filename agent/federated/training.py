"""One device's share of a federated round: fine-tune the edge model on what the device kept.

What a device keeps (agent/samples.py) is the cloud's probabilities for the
inputs it offloaded or audited, and users' labels for some answers. The loss is
distillation on the cloud's soft labels, softened by ``temperature``, mixed with
cross-entropy on a hard label: the user's where one exists, else the cloud's top
class. A seeded tenth of the rows is held out, so the device reports how well
the fine-tuned model does on rows it did not train on (against the user's label
where there is one, else against the cloud) and how often it agrees with the cloud.

BatchNorm layers normalize with the statistics the model arrived with and do not
re-estimate them: a device's kept samples are few, from a few classes, and mostly
the hard cases, so statistics measured on them describe nobody's stream, and their
average across a non-IID fleet describes the fleet's stream no better. Measured on
bench/federated.py's fleets (10 devices, Dirichlet 0.3, 10 rounds, mean of three): the
offload the edge needs fell to 1.03x its round-0 share with re-estimated statistics, to 0.72x
with them frozen. Their scale and shift (BatchNorm's weights) train as every other weight does.
Frozen statistics do not absorb large steps: lr 0.01 x 1 epoch took the aggregate from 90 % to
20 % accuracy in one round, lr 0.002 x 10 epochs (the defaults) improves it round by round.

Only float tensors travel (weights, BatchNorm statistics): the integer step counter
of BatchNorm means nothing averaged, and the device keeps its own.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from agent.samples import TrainingSet

HELD_OUT = 0.1


@dataclass(frozen=True)
class Recipe:
    """How a device trains in one round (the round's config, or the device's profile)."""

    epochs: int = 1
    batch_size: int = 32
    learning_rate: float = 0.005
    temperature: float = 2.0
    distill_weight: float = 0.8  # share of the loss on the cloud's soft labels; the rest on hard labels
    proximal_mu: float = 0.0  # FedProx: mu/2 x the squared distance from the weights the round started with
    seed: int = 0


@dataclass(frozen=True)
class LocalResult:
    """What a device reports next to its weights."""

    examples: int  # rows trained on
    held_out: int
    held_out_accuracy: float  # against the user's label where there is one, else the cloud's top class
    cloud_agreement: float  # the fine-tuned model's top class equals the cloud's, on held-out rows with soft labels
    user_labelled: int  # rows with a user's label among those trained on
    loss: float


def float_state(model: nn.Module) -> dict[str, np.ndarray]:
    """The model's float tensors (weights and BatchNorm statistics) as numpy arrays, by name."""
    return {name: t.detach().cpu().numpy().copy() for name, t in model.state_dict().items() if t.is_floating_point()}


def load_float_state(model: nn.Module, arrays: dict[str, np.ndarray]) -> None:
    """Put ``arrays`` into the model; ValueError naming the first name or shape that does not fit."""
    own = {name: t for name, t in model.state_dict().items() if t.is_floating_point()}
    if set(arrays) != set(own):
        missing, extra = sorted(set(own) - set(arrays)), sorted(set(arrays) - set(own))
        raise ValueError(f"the weights do not fit this architecture: missing {missing[:3]}, unexpected {extra[:3]}")
    for name, array in arrays.items():
        if tuple(array.shape) != tuple(own[name].shape):
            raise ValueError(f"weight {name} has shape {list(array.shape)}, the architecture {list(own[name].shape)}")
    model.load_state_dict({name: torch.from_numpy(np.asarray(a, dtype=np.float32)) for name, a in arrays.items()},
                          strict=False)


def usable(data: TrainingSet) -> TrainingSet:
    """The rows a round can learn from: with the cloud's probabilities or a user's label."""
    has_soft = ~np.isnan(data.soft).any(axis=1) if data.soft.size else np.zeros(len(data.labels), bool)
    keep = has_soft | (data.labels >= 0)
    return TrainingSet(data.x[keep], data.soft[keep] if data.soft.size else data.soft, data.labels[keep])


def _targets(data: TrainingSet, classes: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Soft targets (uniform where none), a mask of rows that have them, and hard labels."""
    n = len(data.labels)
    soft = np.full((n, classes), 1.0 / classes, np.float32)
    has_soft = np.zeros(n, bool)
    if data.soft.size:
        has_soft = ~np.isnan(data.soft).any(axis=1)
        soft[has_soft] = data.soft[has_soft]
    hard = np.where(data.labels >= 0, data.labels, soft.argmax(axis=1))
    return torch.from_numpy(soft), torch.from_numpy(has_soft), torch.from_numpy(hard.astype(np.int64))


def _soften(probabilities: torch.Tensor, temperature: float) -> torch.Tensor:
    """softmax(log p / T): the cloud's probabilities at the distillation temperature."""
    return F.softmax(torch.log(probabilities.clamp_min(1e-8)) / temperature, dim=1)


def fine_tune(model: nn.Module, data: TrainingSet, classes: int, recipe: Recipe) -> LocalResult:
    """Train ``model`` in place on ``data`` (usable rows only) and measure it on the held-out tenth."""
    generator = torch.Generator().manual_seed(recipe.seed)
    order = torch.randperm(len(data.labels), generator=generator).numpy()
    cut = max(1, int(len(order) * HELD_OUT)) if len(order) > 1 else 0
    held, train = order[:cut], order[cut:]
    x = torch.from_numpy(np.ascontiguousarray(data.x, dtype=np.float32))
    soft, has_soft, hard = _targets(data, classes)
    step = MomentumSgd(list(model.parameters()), recipe.learning_rate)
    anchor = [p.detach().clone() for p in model.parameters()] if recipe.proximal_mu > 0 else []
    total, seen = 0.0, 0
    for _ in range(recipe.epochs):
        _train_mode(model)
        shuffled = train[torch.randperm(len(train), generator=generator).numpy()]
        for start in range(0, len(shuffled), recipe.batch_size):
            index = torch.from_numpy(shuffled[start:start + recipe.batch_size])
            logits = model(x[index])
            loss = (1 - recipe.distill_weight) * F.cross_entropy(logits, hard[index])
            with_soft = has_soft[index]
            if with_soft.any():
                t = recipe.temperature
                kd = F.kl_div(F.log_softmax(logits[with_soft] / t, dim=1), _soften(soft[index][with_soft], t),
                              reduction="batchmean")
                loss = loss + recipe.distill_weight * t * t * kd
            if anchor:
                drift = sum(((p - p0) ** 2).sum() for p, p0 in zip(model.parameters(), anchor, strict=True))
                loss = loss + recipe.proximal_mu / 2 * drift
            model.zero_grad(set_to_none=True)
            loss.backward()
            step()
            total += float(loss.item()) * len(index)
            seen += len(index)
    model.eval()
    accuracy, agreement = _held_out(model, x, soft, has_soft, hard, held)
    labelled = int((data.labels[train] >= 0).sum())
    return LocalResult(len(train), len(held), accuracy, agreement, labelled, total / seen if seen else 0.0)


def _train_mode(model: nn.Module) -> None:
    """Training mode with every BatchNorm layer normalizing by its stored statistics (see the module's docstring)."""
    model.train()
    for module in model.modules():
        if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)):
            module.eval()


class MomentumSgd:
    """SGD with momentum 0.9, written out: ``torch.optim`` costs 2.2 s of imports (it loads torch._dynamo).

    Flower starts a new ClientApp process for every round, so those seconds would be paid per device
    per round; the update itself is three tensor operations per parameter.
    """

    def __init__(self, parameters: list[nn.Parameter], learning_rate: float, momentum: float = 0.9) -> None:
        self.parameters, self.learning_rate, self.momentum = parameters, learning_rate, momentum
        self.velocity = [torch.zeros_like(p) for p in parameters]

    @torch.no_grad()
    def __call__(self) -> None:
        for parameter, velocity in zip(self.parameters, self.velocity, strict=True):
            if parameter.grad is not None:
                velocity.mul_(self.momentum).add_(parameter.grad)
                parameter.sub_(velocity, alpha=self.learning_rate)


@torch.no_grad()
def _held_out(model: nn.Module, x: torch.Tensor, soft: torch.Tensor, has_soft: torch.Tensor, hard: torch.Tensor,
              held: np.ndarray) -> tuple[float, float]:
    if len(held) == 0:
        return 0.0, 0.0  # nothing held out: reported as 0 with held_out 0 (every reply needs the same keys)
    index = torch.from_numpy(held)
    predicted = model(x[index]).argmax(dim=1)
    accuracy = float((predicted == hard[index]).float().mean())
    with_soft = has_soft[index]
    agreement = float((predicted[with_soft] == soft[index][with_soft].argmax(dim=1)).float().mean()) \
        if with_soft.any() else 0.0
    return accuracy, agreement
