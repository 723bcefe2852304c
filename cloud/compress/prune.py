"""Pruning: unstructured magnitude masks, and structured pruning that really removes channels.

Unstructured (L1, per layer or global) zeroes weights but keeps dense
tensors: the ONNX file is no smaller or faster, it only helps sparse kernels
or compression of the artifact. Structured pruning ranks each conv filter
(and hidden neuron) by its L1 or L2 norm, keeps the strongest, and rebuilds
the architecture narrower with the kept weights copied, so the exported model
has fewer parameters and FLOPs. Both are fine-tuned afterwards.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn
from torch.nn.utils import prune

from agent.federated.architectures import ArchConfig, build

Norm = Literal["l1", "l2"]


def _prunable(model: nn.Module) -> list[tuple[nn.Conv1d | nn.Conv2d | nn.Linear, str]]:
    return [(m, "weight") for m in model.modules() if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Linear))]


def apply_unstructured(model: nn.Module, sparsity: float, *, scope: Literal["layer", "global"] = "global") -> nn.Module:
    """Mask the smallest-|w| fraction ``sparsity`` of weights (fine-tune with masks on, then ``make_permanent``)."""
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity}")
    targets = _prunable(model)
    if scope == "global":
        prune.global_unstructured(targets, pruning_method=prune.L1Unstructured, amount=sparsity)
    else:
        for module, name in targets:
            prune.l1_unstructured(module, name, amount=sparsity)
    return model


def make_permanent(model: nn.Module) -> nn.Module:
    """Fold pruning masks into the weights so the model exports plainly."""
    for module, name in _prunable(model):
        if prune.is_pruned(module):
            prune.remove(module, name)
    return model


def sparsity_of(model: nn.Module) -> float:
    """Fraction of zero weights over conv and linear layers."""
    weights = [m.weight for m, _ in _prunable(model)]
    total = sum(w.numel() for w in weights)
    return float(sum(int((w == 0).sum()) for w in weights) / total)


def _ranked(scores: torch.Tensor, keep_ratio: float) -> torch.Tensor:
    keep = max(1, round(len(scores) * keep_ratio))
    return torch.sort(torch.topk(scores, keep).indices).values


def _scores(weight: torch.Tensor, norm: Norm) -> torch.Tensor:
    flat = weight.detach().flatten(1)
    return flat.abs().sum(1) if norm == "l1" else flat.pow(2).sum(1).sqrt()


@torch.no_grad()
def prune_structured(model: nn.Sequential, config: ArchConfig, keep_ratio: float, *, norm: Norm = "l1",
                     ) -> tuple[nn.Sequential, ArchConfig]:
    """A narrower model keeping ``keep_ratio`` of each conv's filters and each hidden layer's neurons."""
    if not 0.0 < keep_ratio <= 1.0:
        raise ValueError(f"keep ratio must be in (0, 1], got {keep_ratio}")
    convs = [m for m in model if isinstance(m, (nn.Conv1d, nn.Conv2d))]
    norms = [m for m in model if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d))]
    linears = [m for m in model if isinstance(m, nn.Linear)]
    keep_channels = [_ranked(_scores(c.weight, norm), keep_ratio) for c in convs]
    keep_hidden = [_ranked(_scores(lin.weight, norm), keep_ratio) for lin in linears[:-1]]
    new_config = config.replace(channels=[len(k) for k in keep_channels], hidden=[len(k) for k in keep_hidden])
    narrow = build(new_config)
    new_convs = [m for m in narrow if isinstance(m, (nn.Conv1d, nn.Conv2d))]
    new_norms = [m for m in narrow if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d))]
    new_linears = [m for m in narrow if isinstance(m, nn.Linear)]

    kept_in = torch.arange(convs[0].in_channels)
    for old, new, old_bn, new_bn, kept in zip(convs, new_convs, norms, new_norms, keep_channels, strict=True):
        assert old.bias is not None and new.bias is not None  # build() gives every conv a bias
        new.weight.copy_(old.weight[kept][:, kept_in])
        new.bias.copy_(old.bias[kept])
        for attr in ("weight", "bias", "running_mean", "running_var"):
            getattr(new_bn, attr).copy_(getattr(old_bn, attr)[kept])
        kept_in = kept
    # Flatten is channel-major: each kept channel owns a block of `spatial` input features.
    spatial = linears[0].in_features // convs[-1].out_channels
    columns = (kept_in[:, None] * spatial + torch.arange(spatial)[None, :]).flatten()
    for index, (old_fc, new_fc) in enumerate(zip(linears, new_linears, strict=True)):
        rows = keep_hidden[index] if index < len(keep_hidden) else torch.arange(old_fc.out_features)
        new_fc.weight.copy_(old_fc.weight[rows][:, columns])
        new_fc.bias.copy_(old_fc.bias[rows])
        columns = rows
    return narrow.eval(), new_config
