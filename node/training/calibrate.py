"""Fit what is stored with the weights: temperature and the reliability thresholds on val/, and the familiarity
statistics on train/ (their threshold on val/)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from node.analysis.attention import joint_attention
from node.analysis.familiarity import Familiarity
from node.analysis.model import (
    SPEC_FILE,
    WEIGHTS_FILE,
    KneeGrader,
    ModelSpec,
    forward_in_batches,
    load_model,
    save_model,
    softmax,
)
from node.training.data import CropSet, load_crops
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


def calibrate(module: KneeGrader, spec: ModelSpec, train: CropSet, val: CropSet,
              device: torch.device) -> tuple[ModelSpec, Familiarity, dict[str, float]]:
    """Spec with temperature and thresholds fitted, the familiarity statistics, and the figures behind them, at the
    precision the node infers in; `module` should carry the weights as shipped (fp16-rounded)."""
    outputs = forward_in_batches(module, val.images, spec.input_size, device)
    logits, cams = outputs.logits, outputs.cams
    familiarity = Familiarity.fit(forward_in_batches(module, train.images, spec.input_size, device).features,
                                  train.grades)
    temperature = fit_temperature(logits, val.grades)
    probabilities = softmax(logits, temperature)
    attention = joint_attention(cams)
    fitted = replace(
        spec,
        temperature=round(temperature, 4),
        confidence_threshold=low_confidence_threshold(probabilities, val.grades),
        attention_threshold=round(float(np.quantile(attention, ATTENTION_QUANTILE)), 4),
        familiarity_threshold=round(familiarity.threshold(outputs.features), 3),
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
        "familiarity_threshold": fitted.familiarity_threshold,
        "unfamiliar_flagged": round(float((familiarity.distance(outputs.features)
                                           > fitted.familiarity_threshold).mean()), 4),
    }
    return fitted, familiarity, report


def recalibrate(model_dir: Path, data: Path, device: str = "auto") -> tuple[ModelSpec, dict[str, float]]:
    """Re-fit a model folder in place (same weights, new spec and statistics; its training.json gets the report)."""
    raw = json.loads((model_dir / SPEC_FILE).read_text())
    # A folder from before familiarity statistics existed lacks their threshold: it is about to be fitted.
    spec = ModelSpec.parse({"familiarity_threshold": 0.0} | raw, str(model_dir / SPEC_FILE))
    module, _ = load_model(model_dir / WEIGHTS_FILE)
    target = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else
                          "cpu" if device == "auto" else device)
    module = module.to(target, memory_format=torch.channels_last)
    fitted, familiarity, report = calibrate(module, spec, load_crops(data / "train"), load_crops(data / "val"),
                                            target)
    written = save_model(module.cpu(), fitted, familiarity, model_dir)
    training = model_dir / "training.json"
    if training.is_file():
        record = json.loads(training.read_text())
        training.write_text(json.dumps(record | {"calibration": report}, indent=2) + "\n")
    return written, report
