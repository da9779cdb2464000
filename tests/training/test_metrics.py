from __future__ import annotations

import numpy as np
import pytest

from node.analysis.model import softmax
from node.training.metrics import (
    adaptive_calibration_error,
    brier_score,
    confusion_matrix,
    expected_calibration_error,
    fit_temperature,
    grading_metrics,
    quadratic_weighted_kappa,
)


def test_quadratic_weighted_kappa_known_values() -> None:
    truth = np.array([0, 1, 2, 3, 4, 0, 1, 2])
    assert quadratic_weighted_kappa(confusion_matrix(truth, truth, 5)) == pytest.approx(1.0)
    # Worked by hand: observed disagreement 3/64 * 8, expected from the marginals.
    predicted = np.array([0, 1, 2, 3, 3, 1, 1, 2])
    confusion = confusion_matrix(truth, predicted, 5)
    k = np.arange(5)
    weights = (k[:, None] - k[None, :]) ** 2 / 16
    observed = confusion / 8
    expected = np.outer(observed.sum(1), observed.sum(0))
    kappa = 1 - (weights * observed).sum() / (weights * expected).sum()
    assert quadratic_weighted_kappa(confusion) == pytest.approx(kappa)
    assert 0.8 < quadratic_weighted_kappa(confusion) < 1.0


def test_grading_metrics() -> None:
    truth = np.array([0, 0, 1, 2, 4])
    probabilities = np.eye(5)[[0, 1, 1, 2, 2]] * 0.9 + 0.02
    metrics = grading_metrics(probabilities, truth)
    assert metrics["accuracy"] == pytest.approx(3 / 5)
    assert metrics["mae"] == pytest.approx((0 + 1 + 0 + 0 + 2) / 5)
    assert metrics["recall"] == [0.5, 1.0, 1.0, 0.0, 0.0]
    assert np.array(metrics["confusion"]).sum() == 5


def test_ece_is_zero_when_confidence_matches_accuracy() -> None:
    # 10 predictions at confidence 0.8, 8 of them right.
    probabilities = np.tile([0.8, 0.05, 0.05, 0.05, 0.05], (10, 1))
    truth = np.array([0] * 8 + [1] * 2)
    assert expected_calibration_error(probabilities, truth) == pytest.approx(0.0, abs=1e-9)
    assert expected_calibration_error(probabilities, np.zeros(10, dtype=int)) == pytest.approx(0.2)


def test_temperature_fit_recovers_the_temperature_that_made_the_labels() -> None:
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 4, (20000, 5))
    truth = np.array([rng.choice(5, p=p) for p in softmax(logits, 2.5)])
    assert fit_temperature(logits, truth) == pytest.approx(2.5, rel=0.05)


def test_brier_score_and_adaptive_calibration_error_by_hand() -> None:
    probabilities = np.array([[0.8, 0.2], [0.6, 0.4], [0.3, 0.7], [0.9, 0.1]])
    truth = np.array([0, 1, 1, 0])
    # (0.04 + 0.04) + (0.36 + 0.36) + (0.09 + 0.09) + (0.01 + 0.01), over 4
    assert brier_score(probabilities, truth) == pytest.approx(1.0 / 4)
    # Two equal-mass bins by confidence: {0.6 wrong, 0.7 right} and {0.8 right, 0.9 right}.
    assert adaptive_calibration_error(probabilities, truth, bins=2) == pytest.approx((2 * 0.15 + 2 * 0.15) / 4)
    perfect = np.eye(2)[truth]
    assert brier_score(perfect, truth) == 0 and adaptive_calibration_error(perfect, truth) == 0
