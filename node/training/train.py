"""Train the KL grader on train/, select on val/ by quadratic weighted kappa, calibrate, ship weights."""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch.optim.swa_utils import AveragedModel
from tqdm import tqdm

from node.analysis.model import KneeGrader, ModelSpec, autocast, forward_in_batches, save_model, softmax, standardize
from node.training.calibrate import calibrate
from node.training.data import KNEE_KL_FIELD_MM, augment, load_crops
from node.training.metrics import grading_metrics

Loss = Literal["ce", "sord"]
KL_CLASSES = ("KL0", "KL1", "KL2", "KL3", "KL4")


@dataclass(frozen=True)
class TrainOptions:
    data: Path
    out: Path
    name: str = "kl-densenet121"
    version: str = "1.0.0"
    epochs: int = 30
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.05
    image_size: int = 224  # the model's input size, validated and shipped at
    low_res_size: int = 0  # > 0: train the first low_res_epochs at this size (progressive resizing: CPU-cheap)
    low_res_epochs: int = 0
    loss: Loss = "sord"
    field_mm: float = KNEE_KL_FIELD_MM
    seed: int = 0
    ema_decay: float = 0.999  # per step, once warmed up; the averaged and the raw weights are validated
    device: str = "auto"
    resume: bool = False


def ordinal_targets(grades: torch.Tensor, num_classes: int, sharpness: float = 2.0) -> torch.Tensor:
    """Soft ordinal labels (SORD, Diaz and Marathe 2019): softmax of -sharpness * (k - grade)^2."""
    distance = (torch.arange(num_classes, device=grades.device)[None, :] - grades[:, None]).float() ** 2
    return torch.softmax(-sharpness * distance, dim=1)


def class_weights(grades: np.ndarray, num_classes: int) -> torch.Tensor:
    """Inverse square-root frequency, mean weight 1 over the training samples."""
    counts = np.bincount(grades, minlength=num_classes).astype(np.float64)
    weights = (len(grades) / np.maximum(counts, 1)) ** 0.5
    weights /= (weights[grades]).mean()
    return torch.tensor(weights, dtype=torch.float32)


def warmup_cosine(total_steps: int, warmup_fraction: float = 0.05) -> Callable[[int], float]:
    """Learning-rate factor: linear warm-up, then cosine decay to zero."""
    warmup = max(1, round(total_steps * warmup_fraction))
    return lambda step: min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(step, total_steps)
                                                                            / total_steps))


def training_batch(images: torch.Tensor, grades: torch.Tensor, index: torch.Tensor, size: int,
                   generator: torch.Generator, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Augmented, standardised model inputs (B, 1, size, size), channels_last, and their grades: the uint8 crops
    decoded once at start-up, everything after on whole batches in torch."""
    batch = images[index].to(device, torch.float32)[:, None] / 255.0
    inputs = standardize(augment(batch, size, generator))
    return inputs.contiguous(memory_format=torch.channels_last), grades[index].to(device)


def train_step(module: KneeGrader, optimizer: torch.optim.Optimizer, inputs: torch.Tensor, target: torch.Tensor,
               weights: torch.Tensor, loss_kind: Loss, fp32: bool = False) -> float:
    """One optimiser step at the node's precision (bf16 autocast where the hardware has it; `fp32`: plain fp32,
    for comparison); returns the loss."""
    with autocast(inputs.device, fp32):
        logits = module(inputs).float()
    if loss_kind == "sord":
        per_sample = -(ordinal_targets(target, logits.shape[1]) * F.log_softmax(logits, 1)).sum(1)
    else:
        per_sample = F.cross_entropy(logits, target, reduction="none")
    loss = (per_sample * weights[target]).mean()
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return float(loss.detach())


def ema_update(decay: float) -> Callable[[list[torch.Tensor], list[torch.Tensor], torch.Tensor | int], None]:
    """An exponential moving average whose decay warms up, min(decay, (1 + n) / (10 + n)) after n updates, so
    the average does not carry the random initialisation for thousands of steps (AveragedModel's multi_avg_fn)."""
    @torch.no_grad()
    def update(averaged: list[torch.Tensor], current: list[torch.Tensor], updates: torch.Tensor | int) -> None:
        if not averaged[0].is_floating_point():  # BatchNorm's step counters: the current count
            torch._foreach_copy_(averaged, current)
            return
        n = int(updates)
        torch._foreach_lerp_(averaged, current, 1 - min(decay, (1 + n) / (10 + n)))
    return update


def seed_everything(seed: int) -> torch.Generator:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def train(options: TrainOptions) -> ModelSpec:
    if options.low_res_size and not 0 < options.low_res_epochs < options.epochs:
        raise ValueError(f"low_res_epochs must be 1-{options.epochs - 1}: the last epochs train at image_size")
    device = pick_device(options.device)
    generator = seed_everything(options.seed)
    train_set, val_set = load_crops(options.data / "train"), load_crops(options.data / "val")
    num_classes = len(KL_CLASSES)
    work = options.out / "train"
    work.mkdir(parents=True, exist_ok=True)
    checkpoint_path, best_path = work / "checkpoint.pt", work / "best.pt"

    module = KneeGrader(num_classes).to(device, memory_format=torch.channels_last)
    ema = AveragedModel(module, multi_avg_fn=ema_update(options.ema_decay), use_buffers=True)
    steps_per_epoch = len(train_set.grades) // options.batch_size
    optimizer = torch.optim.AdamW(module.parameters(), lr=options.lr, weight_decay=options.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(options.epochs * steps_per_epoch))
    weights = class_weights(train_set.grades, num_classes).to(device)
    images = torch.from_numpy(train_set.images)
    grades = torch.from_numpy(train_set.grades)
    history: list[dict[str, object]] = []
    best_qwk, first_epoch = -1.0, 0
    if options.resume and checkpoint_path.is_file():
        state = torch.load(checkpoint_path, map_location=device, weights_only=False)
        module.load_state_dict(state["model"])
        ema.load_state_dict(state["ema"])
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        history, best_qwk, first_epoch = state["history"], state["best_qwk"], state["epoch"] + 1
        print(f"resumed after epoch {first_epoch} (best val qwk {best_qwk:.4f})")

    for epoch in range(first_epoch, options.epochs):
        module.train()
        size = options.low_res_size if epoch < options.low_res_epochs else options.image_size
        order = torch.randperm(len(grades), generator=generator)
        started, total_loss = time.time(), 0.0
        bar = tqdm(range(steps_per_epoch), desc=f"epoch {epoch + 1}/{options.epochs}", unit="batch",
                   dynamic_ncols=True)
        for step in bar:
            index = order[step * options.batch_size:(step + 1) * options.batch_size]
            inputs, target = training_batch(images, grades, index, size, generator, device)
            loss = train_step(module, optimizer, inputs, target, weights, options.loss)
            schedule.step()
            ema.update_parameters(module)
            total_loss += loss
            bar.set_postfix(loss=f"{total_loss / (step + 1):.4f}", lr=f"{schedule.get_last_lr()[0]:.2e}")
        row: dict[str, object] = {"epoch": epoch + 1, "size": size,
                                  "train_loss": round(total_loss / steps_per_epoch, 5)}
        for name, candidate in (("ema", ema.module), ("raw", module)):
            val_logits = forward_in_batches(candidate, val_set.images, size, device).logits  # as trained: fair
            val = grading_metrics(softmax(val_logits), val_set.grades)
            row.update({f"{name}_qwk": round(val["qwk"], 4), f"{name}_accuracy": round(val["accuracy"], 4),
                        f"{name}_mae": round(val["mae"], 4)})
            if size == options.image_size and val["qwk"] > best_qwk:  # only the size that ships can be shipped
                best_qwk, row["best"] = val["qwk"], name
                torch.save(candidate.state_dict(), best_path)
        row["seconds"] = round(time.time() - started, 1)
        history.append(row)
        tqdm.write(" ".join(f"{k}={v}" for k, v in row.items()))
        torch.save({"model": module.state_dict(), "ema": ema.state_dict(), "optimizer": optimizer.state_dict(),
                    "schedule": schedule.state_dict(), "generator": generator.get_state(),
                    "torch_rng": torch.get_rng_state(), "history": history, "best_qwk": best_qwk,
                    "epoch": epoch}, checkpoint_path)

    # Calibrated as shipped: the weights rounded to fp16, as model.safetensors stores them.
    module.load_state_dict({k: v.half().float() if v.is_floating_point() else v
                            for k, v in torch.load(best_path, map_location=device, weights_only=True).items()})
    provisional = ModelSpec(name=options.name, version=options.version, input_size=options.image_size,
                            class_names=KL_CLASSES, temperature=1.0, field_mm=options.field_mm,
                            attention_threshold=0.0, confidence_threshold=0.0, familiarity_threshold=0.0)
    spec, familiarity, report = calibrate(module, provisional, train_set, val_set, device)
    spec = save_model(module.cpu(), spec, familiarity, options.out)
    recipe = {k: str(v) if isinstance(v, Path) else v for k, v in asdict(options).items()}
    (options.out / "training.json").write_text(json.dumps(
        {"recipe": recipe, "history": history, "calibration": report}, indent=2) + "\n")
    return spec
