"""`python -m bench.training`: training throughput on this machine, img/s.

For each image size: the input pipeline alone (index the uint8 crops, augment and standardise the batch), the
optimiser step alone (forward, backward, AdamW) at fp32 and at the node's precision (bf16 where the hardware has
it), and the whole training step as `knee-node train` runs it (pipeline + step + EMA update).  Prints a markdown
table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch.optim.swa_utils import AveragedModel

from node.analysis.model import KneeGrader, autocast_dtype
from node.training import train as training
from node.training.data import load_crops
from tools import KNEE_KL, REPO


def rate(work: Callable[[], object], images_per_call: int, calls: int) -> float:
    """img/s over `calls` calls after one warm-up call."""
    work()
    started = time.perf_counter()
    for _ in range(calls):
        work()
    return images_per_call * calls / (time.perf_counter() - started)


def measure(size: int, batch_size: int, calls: int, images: torch.Tensor, grades: torch.Tensor) -> dict[str, float]:
    device = torch.device("cpu")
    generator = torch.Generator().manual_seed(0)
    module = KneeGrader().to(memory_format=torch.channels_last).train()
    optimizer = torch.optim.AdamW(module.parameters(), lr=1e-4)
    ema = AveragedModel(module, multi_avg_fn=training.ema_update(0.999), use_buffers=True)
    weights = torch.ones(5)

    def index() -> torch.Tensor:
        return torch.randint(len(grades), (batch_size,), generator=generator)

    inputs, target = training.training_batch(images, grades, index(), size, generator, device)
    fast = autocast_dtype(device)
    row = {"size": size, "batch": batch_size,
           "pipeline": rate(lambda: training.training_batch(images, grades, index(), size, generator, device),
                            batch_size, 4 * calls)}
    row["step_fp32"] = rate(lambda: training.train_step(module, optimizer, inputs, target, weights, "sord", True),
                            batch_size, calls)
    if fast:
        row["step_bf16"] = rate(
            lambda: training.train_step(module, optimizer, inputs, target, weights, "sord"), batch_size, calls)

    def whole() -> None:
        training.train_step(module, optimizer, *training.training_batch(images, grades, index(), size, generator,
                                                                        device), weights, "sord")
        ema.update_parameters(module)

    row["whole_step"] = rate(whole, batch_size, calls)
    return {k: round(v, 1) if isinstance(v, float) else v for k, v in row.items()}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.training", description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 160, 224])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--calls", type=int, default=4, help="timed optimiser steps per figure")
    parser.add_argument("--json", type=Path, default=REPO / "results" / "bench-training.json")
    args = parser.parse_args()
    if (KNEE_KL / "train" / "labels.csv").is_file():
        crops = load_crops(KNEE_KL / "train")
        images, grades = torch.from_numpy(crops.images), torch.from_numpy(crops.grades)
    else:  # the throughput does not depend on what the pixels show
        images = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (512, 224, 224), dtype=np.uint8))
        grades = torch.zeros(512, dtype=torch.int64)
    rows = [measure(size, args.batch_size, args.calls, images, grades) for size in args.sizes]
    columns = list(rows[0])
    print(f"training img/s, {torch.get_num_threads()} threads, bf16 autocast: "
          f"{autocast_dtype(torch.device('cpu')) is not None}")
    print("| " + " | ".join(columns) + " |\n|" + " --- |" * len(columns))
    for row in rows:
        print("| " + " | ".join(str(row[c]) for c in columns) + " |")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"threads": torch.get_num_threads(), "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
