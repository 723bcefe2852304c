"""MobileNetV2 (Sandler et al. 2018) in plain torch, random weights, exported to ONNX once and cached.

A realistic edge vision model for the serving benchmark: only its cost matters,
so the weights are seeded random ones. Not torchvision: its wheel is built
against CUDA and fails to load beside the CPU torch fedge installs. The export
is cached under ``~/.cache/fedge/models`` (or ``$FEDGE_BENCH_CACHE``), keyed by a
hash of this file, the torch version and the export settings, so reruns skip it.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch
from torch import nn

from cloud.export import OPSET, export_module

RESOLUTION = 96
#: The published configuration: expansion t, output channels c, repeats n, first stride s.
INVERTED_RESIDUALS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
                      (6, 320, 1, 1))
FIRST_CHANNELS, LAST_CHANNELS, CLASSES = 32, 1280, 1000


def _conv_bn(inp: int, out: int, kernel: int, stride: int, groups: int = 1, relu: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(inp, out, kernel, stride, kernel // 2, groups=groups, bias=False),
                               nn.BatchNorm2d(out)]
    if relu:
        layers.append(nn.ReLU6(inplace=True))
    return nn.Sequential(*layers)


class InvertedResidual(nn.Module):
    """Expand (1x1), depthwise 3x3, project (1x1, linear); a skip when shape is kept."""

    def __init__(self, inp: int, out: int, stride: int, expansion: int) -> None:
        super().__init__()
        hidden = inp * expansion
        layers: list[nn.Module] = [] if expansion == 1 else [_conv_bn(inp, hidden, 1, 1)]
        layers += [_conv_bn(hidden, hidden, 3, stride, groups=hidden), _conv_bn(hidden, out, 1, 1, relu=False)]
        self.block = nn.Sequential(*layers)
        self.skip = stride == 1 and inp == out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block(x) if self.skip else self.block(x)


class MobileNetV2(nn.Module):
    """Width 1.0: 3.5 M parameters, ~300 MFLOPs at 224x224 (about 55 at 96x96)."""

    def __init__(self, classes: int = CLASSES) -> None:
        super().__init__()
        layers: list[nn.Module] = [_conv_bn(3, FIRST_CHANNELS, 3, 2)]
        channels = FIRST_CHANNELS
        for t, c, n, s in INVERTED_RESIDUALS:
            for i in range(n):
                layers.append(InvertedResidual(channels, c, s if i == 0 else 1, t))
                channels = c
        layers.append(_conv_bn(channels, LAST_CHANNELS, 1, 1))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(LAST_CHANNELS, classes))
        for m in self.modules():  # the reference implementation's initialisation
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        return self.classifier(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


def calibrated(model: MobileNetV2, resolution: int, batches: int = 4) -> MobileNetV2:
    """The model in eval mode, its batch-norm statistics taken from random inputs.

    Untrained batch norm (mean 0, variance 1) shrinks activations layer after layer to ~1e-10; with
    statistics from data they stay near 1, as in a trained network, and the graph does a trained one's work.
    """
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = None  # a cumulative average over the batches below
    model.train()
    with torch.no_grad():
        for _ in range(batches):
            model(torch.randn(16, 3, resolution, resolution))
    return model.eval()


def cache_dir() -> Path:
    return Path(os.environ.get("FEDGE_BENCH_CACHE", Path.home() / ".cache" / "fedge")).expanduser() / "models"


def exported(resolution: int = RESOLUTION, seed: int = 0) -> Path:
    """The ONNX file of a seeded MobileNetV2 at 3 x ``resolution`` x ``resolution``, exported on first use."""
    key = hashlib.sha256(Path(__file__).read_bytes() + f"{torch.__version__} {OPSET} {resolution} {seed}".encode())
    path = cache_dir() / f"mobilenetv2-{resolution}-{key.hexdigest()[:12]}.onnx"
    if path.is_file():
        return path
    torch.manual_seed(seed)
    model = calibrated(MobileNetV2(), resolution)
    partial = export_module(model, torch.zeros(2, 3, resolution, resolution), path.with_suffix(f".{os.getpid()}.tmp"))
    partial.rename(path)  # whole or not at all: a run stopped mid-export leaves no half file under the name
    return path
