"""Model architectures as plain configs, so a pruned model is the same config with fewer channels.

Every model is an ``nn.Sequential`` built from an ``ArchConfig``: conv blocks
(conv, batch norm, ReLU, optional max-pool) then fully connected layers. The
structured pruner edits ``channels``/``hidden`` and copies the kept weights.
A user's own torch model is a config too (kind ``factory``): ``package.module:function``,
called with the input shape and the number of classes wherever the model is built,
so that module must be importable there (the cloud, and devices that fine-tune it).

They live with the agent's federated client because a device rebuilds the edge
model from its config to fine-tune it; the cloud's zoo and compression import
them from here (the agent never imports the cloud).
"""

from __future__ import annotations

import importlib
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    import torch
    from torch import nn


class FactoryError(ValueError):
    """A model factory that cannot be imported, called, or gives no torch module; the message says which."""


@dataclass(frozen=True)
class ArchConfig:
    """A conv-then-dense classifier over 1-D signals or 2-D images, or a user's factory's model."""

    kind: Literal["conv1d", "conv2d", "factory"]
    input_shape: tuple[int, ...]  # one sample, without the batch dimension, as requests carry it
    channels: tuple[int, ...]
    kernels: tuple[int, ...]
    strides: tuple[int, ...]
    pools: tuple[int, ...] = field(default=())  # max-pool size after each conv block (1 = none)
    hidden: tuple[int, ...] = ()
    classes: int = 10
    factory: str = ""  # kind factory: "package.module:function", called as function(input_shape, classes)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> ArchConfig:
        fields: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in doc.items()}
        return cls(**fields)

    def replace(self, **changes: Any) -> ArchConfig:
        return ArchConfig.from_dict({**self.as_dict(), **changes})


def _spatial_after(config: ArchConfig) -> int:
    """Spatial size (length, or side of the square image) after the conv blocks."""
    size = config.input_shape[-1]
    pools = config.pools or (1,) * len(config.channels)
    for kernel, stride, pool in zip(config.kernels, config.strides, pools, strict=True):
        size = (size + 2 * (kernel // 2) - kernel) // stride + 1
        size //= pool
    return size


def build(config: ArchConfig) -> nn.Sequential:
    """The torch model for a config; input [N, *input_shape], output logits [N, classes]."""
    from torch import nn  # here: reading configs (the zoo's task list, every fedge-cloud command) needs no torch

    if config.kind == "factory":
        return nn.Sequential(_from_factory(config))
    conv, norm, pool = (
        (nn.Conv1d, nn.BatchNorm1d, nn.MaxPool1d) if config.kind == "conv1d" else (nn.Conv2d, nn.BatchNorm2d, nn.MaxPool2d)
    )
    layers: list[nn.Module] = []
    in_channels = 1
    if config.kind == "conv1d" and len(config.input_shape) == 1:
        layers.append(nn.Unflatten(1, (1, config.input_shape[0])))
    else:
        in_channels = config.input_shape[0]
    pools = config.pools or (1,) * len(config.channels)
    blocks = zip(config.channels, config.kernels, config.strides, pools, strict=True)
    for out_channels, kernel, stride, pool_size in blocks:
        layers += [conv(in_channels, out_channels, kernel, stride, kernel // 2), norm(out_channels), nn.ReLU()]
        if pool_size > 1:
            layers.append(pool(pool_size))
        in_channels = out_channels
    spatial = _spatial_after(config)
    features = in_channels * spatial ** (1 if config.kind == "conv1d" else 2)
    layers.append(nn.Flatten())
    for width in config.hidden:
        layers += [nn.Linear(features, width), nn.ReLU()]
        features = width
    layers.append(nn.Linear(features, config.classes))
    return nn.Sequential(*layers)


def _from_factory(config: ArchConfig) -> nn.Module:
    from torch import nn

    module_name, _, function = config.factory.partition(":")
    try:
        made = getattr(importlib.import_module(module_name), function)(tuple(config.input_shape), config.classes)
    except (ImportError, AttributeError) as exc:
        raise FactoryError(f"model factory {config.factory}: {exc} (its module must be importable here: installed,"
                           " or on PYTHONPATH)") from None
    if not isinstance(made, nn.Module):
        raise FactoryError(f"model factory {config.factory} returned a {type(made).__name__}, not a torch nn.Module")
    return made


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def example_input(config: ArchConfig, batch: int = 1) -> torch.Tensor:
    import torch

    return torch.zeros((batch, *config.input_shape), dtype=torch.float32)
