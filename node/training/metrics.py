"""Grading metrics and temperature scaling, in numpy and torch only."""

from __future__ import annotations

import numpy as np
import torch


def confusion_matrix(truth: np.ndarray, predicted: np.ndarray, num_classes: int) -> np.ndarray:
    """Rows are the true grade, columns the predicted one."""
    return np.bincount(truth * num_classes + predicted, minlength=num_classes**2).reshape(num_classes, num_classes)


def quadratic_weighted_kappa(confusion: np.ndarray) -> float:
    k = confusion.shape[0]
    grades = np.arange(k)
    weights = (grades[:, None] - grades[None, :]) ** 2 / (k - 1) ** 2
    observed = confusion / confusion.sum()
    expected = np.outer(observed.sum(1), observed.sum(0))
    return float(1 - (weights * observed).sum() / (weights * expected).sum())


def reliability_bins(probabilities: np.ndarray, truth: np.ndarray, bins: int = 15) -> list[dict[str, float]]:
    """Per equal-width confidence bin: count, mean top-label confidence and accuracy."""
    confidence = probabilities.max(1)
    correct = probabilities.argmax(1) == truth
    which = np.clip(np.digitize(confidence, np.linspace(0, 1, bins + 1)[1:-1]), 0, bins - 1)
    rows = []
    for b in range(bins):
        members = which == b
        rows.append({"low": b / bins, "high": (b + 1) / bins, "count": int(members.sum()),
                     "confidence": float(confidence[members].mean()) if members.any() else 0.0,
                     "accuracy": float(correct[members].mean()) if members.any() else 0.0})
    return rows


def expected_calibration_error(probabilities: np.ndarray, truth: np.ndarray, bins: int = 15) -> float:
    """Top-label ECE: bin-weighted gap between confidence and accuracy."""
    rows = reliability_bins(probabilities, truth, bins)
    return float(sum(r["count"] * abs(r["accuracy"] - r["confidence"]) for r in rows) / len(truth))


def adaptive_calibration_error(probabilities: np.ndarray, truth: np.ndarray, bins: int = 15) -> float:
    """Top-label ECE over equal-mass bins (each holds about len/bins predictions): less sensitive to where the
    bin edges fall than equal-width bins, where most predictions crowd into a few bins."""
    confidence = probabilities.max(1)
    correct = probabilities.argmax(1) == truth
    order = np.argsort(confidence, kind="stable")
    return float(sum(len(part) * abs(correct[part].mean() - confidence[part].mean())
                     for part in np.array_split(order, bins) if len(part)) / len(truth))


def brier_score(probabilities: np.ndarray, truth: np.ndarray) -> float:
    """Mean over predictions of the squared distance between the probability vector and the one-hot truth."""
    one_hot = np.eye(probabilities.shape[1])[truth]
    return float(((probabilities - one_hot) ** 2).sum(1).mean())


def grading_metrics(probabilities: np.ndarray, truth: np.ndarray) -> dict[str, object]:
    """accuracy, qwk, mae, macro_f1, ece, adaptive_ece, brier, per-class recall and the confusion matrix."""
    num_classes = probabilities.shape[1]
    predicted = probabilities.argmax(1)
    confusion = confusion_matrix(truth, predicted, num_classes)
    support, claimed, hits = confusion.sum(1), confusion.sum(0), np.diag(confusion)
    recall = np.divide(hits, support, out=np.zeros(num_classes), where=support > 0)
    precision = np.divide(hits, claimed, out=np.zeros(num_classes), where=claimed > 0)
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros(num_classes),
                   where=precision + recall > 0)
    return {
        "n": len(truth),
        "accuracy": float((predicted == truth).mean()),
        "qwk": quadratic_weighted_kappa(confusion),
        "mae": float(np.abs(predicted - truth).mean()),
        "macro_f1": float(f1.mean()),
        "ece": expected_calibration_error(probabilities, truth),
        "adaptive_ece": adaptive_calibration_error(probabilities, truth),
        "brier": brier_score(probabilities, truth),
        "recall": [round(float(r), 4) for r in recall],
        "confusion": confusion.tolist(),
    }


def fit_temperature(logits: np.ndarray, truth: np.ndarray) -> float:
    """The temperature T minimising the negative log-likelihood of softmax(logits / T)."""
    logits_t, truth_t = torch.from_numpy(logits).double(), torch.from_numpy(truth)
    log_t = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=0.1, max_iter=200, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(logits_t / log_t.exp(), truth_t)
        loss.backward()
        return loss

    optimizer.step(closure)
    # Bounded: a degenerate set (all one class, separable) would otherwise push T to 0 or infinity.
    return float(log_t.detach().clamp(-3, 3).exp())
