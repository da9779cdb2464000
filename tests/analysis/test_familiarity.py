"""The familiarity gate: its statistics, and on the bundled model what it lets through and what it refuses."""

from __future__ import annotations

import numpy as np
import pytest

from node.analysis.familiarity import MARGIN, QUANTILE, Familiarity
from node.analysis.model import Grader
from node.config import DEFAULT_MODEL_DIR
from node.training.data import CropSet


def test_distance_is_the_mahalanobis_distance_to_the_nearest_grade() -> None:
    rng = np.random.default_rng(0)
    grades = np.repeat(np.arange(3), 400)
    means = np.array([[0, 0], [10, 0], [0, 10]], np.float64)
    features = means[grades] + rng.normal(size=(1200, 2)) * [1.0, 2.0]
    familiarity = Familiarity.fit(features, grades)
    # One standard deviation away along each axis is distance ~1, whichever grade is nearest.
    near = familiarity.distance(np.array([[1.0, 0.0], [10.0, 2.0]], np.float32))
    np.testing.assert_allclose(near, [1.0, 1.0], rtol=0.1)
    assert familiarity.distance(np.array([[5.0, 5.0]], np.float32))[0] > 2.5
    threshold = familiarity.threshold(features)
    assert threshold == pytest.approx(MARGIN * np.quantile(familiarity.distance(features), QUANTILE))
    restored = Familiarity.from_tensors(familiarity.tensors())
    np.testing.assert_array_equal(restored.precision, familiarity.precision)


@pytest.fixture(scope="module")
def bundled() -> Grader:
    if not (DEFAULT_MODEL_DIR / "model.json").is_file():
        pytest.skip(f"no bundled model at {DEFAULT_MODEL_DIR}")
    return Grader(DEFAULT_MODEL_DIR, device="cpu")


def test_the_bundled_gate_passes_val_knees_and_refuses_turned_ones(bundled: Grader, val_crops: CropSet) -> None:
    crops = val_crops.images[:: max(1, len(val_crops.files) // 48)][:48]
    _, _, upright = bundled.predict(crops)
    _, _, turned = bundled.predict(np.ascontiguousarray(np.rot90(crops, axes=(1, 2))))
    threshold = bundled.spec.familiarity_threshold
    assert (upright <= threshold).mean() >= 0.97
    assert (turned > threshold).mean() >= 0.95
