"""Your own model: a published architecture served as imported, and an edge model made from a classifier fedge did not train.

* ``mobilenet``: a MobileNetV2 at 3x96x96 with random weights (bench/mobilenet.py), imported as a
  user imports theirs, the agent's whole local path against bare ``session.run`` on the same file,
  batch 1, the paths taking turns in short blocks (bench/local_infer.py's measurement). Goal ``ratio_batch1_mobilenet``
  >= 0.95.
* ``student``: a labelled task of the user's, declared as docs/TASKS.md says: MNIST-1D written to
  an .npz (fresh rows under a seed no zoo model uses; x_val held out), its cloud model a 1-D
  residual network trained here in plain torch and exported with a final Softmax, then the user's
  steps through ``fedge-cloud``: ``models import``, ``train --model edge`` (distilled from the
  imported ONNX file), ``compress`` (the default grid, budget 1 point). The released student
  against the fp32 teacher, both measured by ONNX Runtime the way compress measures (one thread):
  ``student_size_ratio``, ``student_latency_b32_ratio``, ``student_accuracy_drop_points`` on the
  test rows. A record: the issue names no target for them.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch import nn

from agent.model_store import ModelStore
from bench import mobilenet
from bench.local_infer import mobilenet_rates
from bench.results_file import Goal, bench_arguments, write_result
from cloud.compress.measure import measure
from cloud.export import export_module
from cloud.zoo.mnist1d import Mnist1dParams, generate

TASK = "signals"
QUICK_RECIPE = {"pruning": {"structured": {"keep_ratios": [1.0, 0.5]}, "unstructured": {"sparsities": []},
                            "finetune_epochs": 1},
                "quantization": {"modes": ["fp32", "dynamic"], "per_channel": [False]}, "latency_repeats": 5}


class Residual(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv1d(width, width, 3, padding=1), nn.BatchNorm1d(width), nn.ReLU(),
                                  nn.Conv1d(width, width, 3, padding=1), nn.BatchNorm1d(width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x + self.body(x))


def teacher(width: int = 64, blocks: int = 3) -> nn.Module:
    """The user's cloud model: a small 1-D ResNet over [batch, 40] signals, not one of fedge's architectures."""
    return nn.Sequential(nn.Unflatten(1, (1, 40)), nn.Conv1d(1, width, 5, padding=2), nn.BatchNorm1d(width), nn.ReLU(),
                         *(Residual(width) for _ in range(blocks)), nn.AdaptiveAvgPool1d(1), nn.Flatten(),
                         nn.Linear(width, 10))


def user_data(folder: Path, train: int, test: int) -> dict[str, np.ndarray]:
    """The user's labelled rows: MNIST-1D under its own seed, a tenth of the training rows held out as x_val."""
    x, y, x_test, y_test = generate(Mnist1dParams(num_samples=train + test, train_split=train / (train + test),
                                                  seed=7))
    held = len(x) // 10
    arrays = {"x_train": x[held:], "y_train": y[held:], "x_val": x[:held], "y_val": y[:held],
              "x_test": x_test, "y_test": y_test}
    np.savez(folder / f"{TASK}.npz", x_train=arrays["x_train"], y_train=arrays["y_train"], x_val=arrays["x_val"],
             y_val=arrays["y_val"], x_test=arrays["x_test"], y_test=arrays["y_test"])
    return arrays


def train_teacher(arrays: dict[str, np.ndarray], epochs: int, path: Path) -> Path:
    """Plain torch, as a user trains theirs; exported with its Softmax, as many are."""
    torch.manual_seed(0)
    model = teacher()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    xs, ys = torch.from_numpy(arrays["x_train"]), torch.from_numpy(arrays["y_train"])
    for _ in range(epochs):
        model.train()
        for index in torch.randperm(len(ys)).split(100):
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(xs[index]), ys[index]).backward()
            optimizer.step()
    return export_module(nn.Sequential(model.eval(), nn.Softmax(dim=-1)), torch.zeros(2, 40), path,
                         input_name="signal", output_name="probabilities")


def fedge_cloud(work: Path, *args: str) -> float:
    """One of the user's commands, its output shown; seconds it took."""
    env = {**os.environ, "FEDGE_TASKS": str(work / "tasks"), "FEDGE_STORE": str(work / "store"),
           "FEDGE_REGISTRY": str(work / "registry.db")}
    started = time.monotonic()
    ran = subprocess.run([str(Path(sys.executable).parent / "fedge-cloud"), *args], env=env, check=False,
                         capture_output=True, text=True)
    print("\n".join(f"    {line}" for line in ran.stdout.splitlines()[-4:]), flush=True)
    if ran.returncode != 0:
        raise RuntimeError(f"fedge-cloud {' '.join(args)} exited {ran.returncode}: {ran.stderr.strip()[-1500:]}")
    return time.monotonic() - started


def student(work: Path, quick: bool) -> dict[str, Any]:
    train_rows, test_rows, teacher_epochs, edge_epochs = (600, 300, 2, 2) if quick else (4000, 1000, 20, 30)
    (work / "tasks").mkdir(parents=True)
    arrays = user_data(work, train_rows, test_rows)
    (work / "tasks" / f"{TASK}.yaml").write_text(yaml.safe_dump({
        "description": "the user's signals", "data": {"npz": f"../{TASK}.npz"}, "input": {"shape": [40]},
        "classes": 10, "epochs": {"edge": edge_epochs, **({"finetune": 1} if quick else {})}}))
    started = time.monotonic()
    onnx_file = train_teacher(arrays, teacher_epochs, work / "teacher.onnx")
    print(f"  the user's cloud model trained ({time.monotonic() - started:.0f} s)", flush=True)
    seconds = {"import": fedge_cloud(work, "models", "import", "--task", TASK, "--onnx", str(onnx_file)),
               "train_edge": fedge_cloud(work, "train", "--task", TASK, "--model", "edge", "--no-progress")}
    recipe = []
    if quick:
        (work / "recipe.yaml").write_text(yaml.safe_dump(QUICK_RECIPE))
        recipe = ["--recipe", str(work / "recipe.yaml")]
    seconds["compress"] = fedge_cloud(work, "compress", "--task", TASK, *recipe, "--max-accuracy-drop", "1",
                                      "--out", str(work / "report"))
    released = ModelStore(work / "store").get(TASK, f"{TASK}-edge")
    test, validation = (arrays["x_test"], arrays["y_test"]), (arrays["x_val"], arrays["y_val"])
    repeats = 20 if quick else 200
    big, small = measure(onnx_file, test, validation, repeats=repeats), measure(released.model_path, test, validation,
                                                                                 repeats=repeats)
    return {"teacher": {"size_bytes": big.size_bytes, "latency_b32_ms": round(big.latency_b32_ms, 4),
                        "accuracy": big.accuracy, "parameters": big.parameters},
            "student": {"size_bytes": small.size_bytes, "latency_b32_ms": round(small.latency_b32_ms, 4),
                        "accuracy": small.accuracy, "parameters": small.parameters,
                        "version": released.manifest.version, "variant": (released.manifest.recipe or {}).get("variant")},
            "student_size_ratio": round(small.size_bytes / big.size_bytes, 4),
            "student_latency_b32_ratio": round(small.latency_b32_ms / big.latency_b32_ms, 4),
            "student_accuracy_drop_points": round((big.accuracy - small.accuracy) * 100, 2),
            "seconds": {k: round(v, 1) for k, v in seconds.items()}}


def main(argv: list[str] | None = None) -> Path:
    args = bench_arguments("own_model", __doc__, argv)
    blocks = 4 if args.quick else 200
    resolution = 32 if args.quick else mobilenet.RESOLUTION
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        metrics: dict[str, Any] = {**mobilenet_rates(ModelStore(work / "store"), work, resolution, blocks),
                                   **student(work / "student", args.quick)}
    goals = {"ratio_batch1_mobilenet": Goal(metrics["ratio_batch1_mobilenet"], ">=", 0.95)}
    path = write_result("own_model", {"mobilenet": f"MobileNetV2 3x{resolution}x{resolution}, imported",
                                      "mobilenet_blocks": blocks, "task": "MNIST-1D as a user's .npz",
                                      "teacher": "1-D ResNet (3 residual blocks, width 64), trained in plain torch",
                                      "budget_points": 1.0, "quick": args.quick},
                        metrics, goals, results_dir=args.results_dir)
    print(f"own_model: wrote {path}")
    return path


if __name__ == "__main__":
    main()
