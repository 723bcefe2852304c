"""torch → ONNX for the edge: one input ``input``, one output ``logits``, dynamic batch axis."""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import nn

from agent.federated.architectures import ArchConfig, example_input

INPUT_NAME, OUTPUT_NAME = "input", "logits"
OPSET = 17


def export_onnx(model: nn.Module, config: ArchConfig, path: Path) -> Path:
    """Export an eval-mode zoo model."""
    return export_module(model, example_input(config, 2), path)


def export_module(model: nn.Module, example: torch.Tensor, path: Path, input_name: str = INPUT_NAME,
                  output_name: str = OUTPUT_NAME) -> Path:
    """Export any one-input module with a dynamic batch axis.

    The TorchScript exporter: it gives small, plain graphs ONNX Runtime quantizes well.
    """
    model.eval()
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (example,),
            str(path),
            input_names=[input_name],
            output_names=[output_name],
            dynamic_axes={input_name: {0: "batch"}, output_name: {0: "batch"}},
            opset_version=OPSET,
            dynamo=False,
        )
    return path
