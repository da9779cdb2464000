"""Evaluate a model folder on labelled crops: grading metrics, calibration, and Grad-CAM sanity figures."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from node.analysis.attention import joint_attention
from node.analysis.model import Grader, KneeGrader, forward_in_batches, softmax
from node.training.data import load_crops
from node.training.gallery import write_gallery
from node.training.metrics import expected_calibration_error, grading_metrics, reliability_bins


def evaluate(model_dir: Path, data: Path, plots: Path | None = None, cam_sanity: bool = False,
             device: str = "auto", gallery: Path | None = None, compare_fp32: bool = False) -> dict[str, Any]:
    grader = Grader(model_dir, device=device)
    crops = load_crops(data, num_classes=len(grader.spec.class_names))
    outputs = forward_in_batches(grader.module, crops.images, grader.spec.input_size, grader.device)
    logits, cams = outputs.logits, outputs.cams
    probabilities = softmax(logits, grader.spec.temperature)
    metrics = grading_metrics(probabilities, crops.grades)
    attention = joint_attention(cams)
    metrics.update({
        "ece_uncalibrated": expected_calibration_error(softmax(logits), crops.grades),
        "joint_attention_median": float(np.median(attention)),
        "attention_flagged": float((attention < grader.spec.attention_threshold).mean()),
        "low_confidence_flagged": float((probabilities.max(1) < grader.spec.confidence_threshold).mean()),
        "unfamiliar_flagged": float((grader.familiarity.distance(outputs.features)
                                     > grader.spec.familiarity_threshold).mean()),
        "model": f"{grader.spec.name} {grader.spec.version}",
    })
    if cam_sanity:
        metrics["cam_randomization_rank_correlation"] = randomization_test(grader, crops.images, cams)
    if compare_fp32:  # what the node's bf16 (where the CPU has it) changes against plain fp32
        exact = forward_in_batches(grader.module, crops.images, grader.spec.input_size, grader.device,
                                   fp32=True).logits
        metrics["fp32_same_grade"] = float((exact.argmax(1) == logits.argmax(1)).mean())
    if gallery is not None:
        metrics["gallery"] = write_gallery(gallery, crops, probabilities, cams, attention, grader.spec)
    if plots is not None:
        plots.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(plots / "confusion.png"), draw_confusion(np.array(metrics["confusion"]),
                                                                 grader.spec.class_names))
        cv2.imwrite(str(plots / "reliability.png"), draw_reliability(probabilities, crops.grades))
    return metrics


def randomization_test(grader: Grader, images: np.ndarray, cams: np.ndarray, seed: int = 0) -> float:
    """Model randomisation test (Adebayo et al. 2018): mean Spearman correlation between each image's CAM from
    the trained model and from the same architecture re-initialised.  An explanation that ignores the weights
    scores near 1; a faithful one, near 0."""
    torch.manual_seed(seed)
    random_model = KneeGrader(len(grader.spec.class_names)).to(grader.device, memory_format=torch.channels_last)
    random_cams = forward_in_batches(random_model, images, grader.spec.input_size, grader.device).cams
    flat, random_flat = cams.reshape(len(cams), -1), random_cams.reshape(len(cams), -1)
    return float(np.nanmean([spearman(a, b) for a, b in zip(flat, random_flat, strict=True)]))


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Rank correlation with ties given their average rank (a ReLU map has many equal zeros)."""
    ranks_a, ranks_b = average_ranks(a), average_ranks(b)
    if ranks_a.std() == 0 or ranks_b.std() == 0:
        return float("nan")
    return float(np.corrcoef(ranks_a, ranks_b)[0, 1])


def average_ranks(values: np.ndarray) -> np.ndarray:
    _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    return ((ends - (counts - 1) / 2) - 1)[inverse]


def draw_confusion(confusion: np.ndarray, names: tuple[str, ...], cell: int = 90) -> np.ndarray:
    """Rows: true grade, columns: predicted; shade by share of the row, count printed in each cell."""
    k, margin = len(names), 70
    image = np.full((margin + k * cell + 20, margin + k * cell + 20, 3), 255, np.uint8)
    shares = confusion / np.maximum(confusion.sum(1, keepdims=True), 1)
    for row in range(k):
        for col in range(k):
            x, y = margin + col * cell, margin + row * cell
            shade = int(255 * (1 - 0.85 * shares[row, col]))
            cv2.rectangle(image, (x, y), (x + cell, y + cell), (255, shade, shade), cv2.FILLED)
            cv2.rectangle(image, (x, y), (x + cell, y + cell), (160, 160, 160), 1)
            text = str(confusion[row, col])
            colour = (255, 255, 255) if shares[row, col] > 0.5 else (0, 0, 0)
            cv2.putText(image, text, (x + cell // 2 - 8 * len(text), y + cell // 2 + 8), cv2.FONT_HERSHEY_SIMPLEX,
                        0.7, colour, 2, cv2.LINE_AA)
        cv2.putText(image, names[row], (8, margin + row * cell + cell // 2 + 6), cv2.FONT_HERSHEY_SIMPLEX, 0.6,
                    (0, 0, 0), 1, cv2.LINE_AA)
        cv2.putText(image, names[row], (margin + row * cell + cell // 2 - 18, margin - 12), cv2.FONT_HERSHEY_SIMPLEX,
                    0.6, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.putText(image, "true \\ predicted", (8, 24), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (0, 0, 0), 1, cv2.LINE_AA)
    return image


def draw_reliability(probabilities: np.ndarray, truth: np.ndarray, size: int = 480) -> np.ndarray:
    """Accuracy per confidence bin (bars) against the diagonal of perfect calibration."""
    margin = 50
    image = np.full((size + 2 * margin, size + 2 * margin, 3), 255, np.uint8)
    origin = (margin, margin + size)
    rows = reliability_bins(probabilities, truth)
    for row in rows:
        if row["count"]:
            x0, x1 = margin + int(row["low"] * size), margin + int(row["high"] * size)
            top = margin + size - int(row["accuracy"] * size)
            cv2.rectangle(image, (x0, top), (x1, origin[1]), (200, 120, 40), cv2.FILLED)
            cv2.rectangle(image, (x0, top), (x1, origin[1]), (120, 60, 20), 1)
    cv2.line(image, origin, (margin + size, margin), (0, 0, 200), 2, cv2.LINE_AA)
    cv2.rectangle(image, (margin, margin), (margin + size, margin + size), (0, 0, 0), 1)
    ece = expected_calibration_error(probabilities, truth)
    cv2.putText(image, f"accuracy vs confidence (15 bins), ECE {ece:.3f}", (margin, margin - 15),
                cv2.FONT_HERSHEY_SIMPLEX, 0.55, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.putText(image, "confidence", (margin + size // 2 - 40, margin + size + 35), cv2.FONT_HERSHEY_SIMPLEX, 0.55,
                (0, 0, 0), 1, cv2.LINE_AA)
    return image
