"""Fit what is chosen on val/ and stored with the weights: temperature and the two reliability thresholds."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch

from node.analysis.attention import joint_attention
from node.analysis.model import KneeGrader, ModelSpec, forward_in_batches, softmax
from node.training.data import CropSet
from node.training.metrics import (
    adaptive_calibration_error,
    brier_score,
    expected_calibration_error,
    fit_temperature,
)

ATTENTION_QUANTILE = 0.05  # REL1 flags the val crops' lowest 5 % of joint attention and anything below


def low_confidence_threshold(probabilities: np.ndarray, truth: np.ndarray) -> float:
    """Largest confidence t (0.01 steps) below which val predictions are right at most half the time.

    REL2 then means "more likely wrong than right", judged on val rather than assumed from calibration.
    """
    confidence = probabilities.max(1)
    correct = probabilities.argmax(1) == truth
    threshold = 0.0
    for t in np.arange(0.01, 1.0, 0.01):
        below = confidence < t
        if below.any() and correct[below].mean() <= 0.5:
            threshold = float(round(t, 2))
    return threshold


def calibrate(module: KneeGrader, spec: ModelSpec, val: CropSet,
              device: torch.device) -> tuple[ModelSpec, dict[str, float]]:
    """Spec with temperature and thresholds fitted on `val`, and the figures behind them, at the precision the node
    infers in; `module` should carry the weights as shipped (fp16-rounded)."""
    logits, cams = forward_in_batches(module, val.images, spec.input_size, device)
    temperature = fit_temperature(logits, val.grades)
    probabilities = softmax(logits, temperature)
    attention = joint_attention(cams)
    fitted = replace(
        spec,
        temperature=round(temperature, 4),
        confidence_threshold=low_confidence_threshold(probabilities, val.grades),
        attention_threshold=round(float(np.quantile(attention, ATTENTION_QUANTILE)), 4),
    )
    report = {
        "temperature": fitted.temperature,
        "ece_before": round(expected_calibration_error(softmax(logits), val.grades), 4),
        "ece_after": round(expected_calibration_error(probabilities, val.grades), 4),
        "adaptive_ece_after": round(adaptive_calibration_error(probabilities, val.grades), 4),
        "brier_before": round(brier_score(softmax(logits), val.grades), 4),
        "brier_after": round(brier_score(probabilities, val.grades), 4),
        "low_confidence_flagged": round(float((probabilities.max(1) < fitted.confidence_threshold).mean()), 4),
        "confidence_threshold": fitted.confidence_threshold,
        "attention_threshold": fitted.attention_threshold,
        "median_joint_attention": round(float(np.median(attention)), 4),
    }
    return fitted, report
