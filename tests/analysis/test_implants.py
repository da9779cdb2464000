"""Metal over the joint: every kind of synthetic implant is found; native knees under other processing are not."""

from __future__ import annotations

import numpy as np
import pytest

from node.analysis.decode import decode
from node.analysis.grading import crop
from node.analysis.implants import metal_over_joint
from node.domain import KneeRoi
from node.training.data import KNEE_KL_FIELD_MM, CropSet
from tools.synthetic import METALS, TONES, Composite, compose

SIZE = 224


def knee_crops(composite: Composite) -> list[np.ndarray]:
    """The crops the model would see, framed on the truth."""
    radiograph = decode(composite.dataset)
    spacing = radiograph.spacing_mm
    assert spacing is not None
    crops = []
    for knee in composite.knees:
        half = KNEE_KL_FIELD_MM * knee.size_factor / 2
        roi = KneeRoi(knee.center, (half / spacing[0], half / spacing[1]), knee.laterality)
        crops.append(crop(radiograph.image, roi, SIZE))
    return crops


@pytest.mark.parametrize("metal", METALS)
def test_every_implant_kind_is_found(val_crops: CropSet, metal: str) -> None:
    rng = np.random.default_rng(31)
    for index in rng.choice(len(val_crops.files), 4, replace=False):
        composite = compose(val_crops, (int(index),), rng, spacing_mm=float(rng.uniform(0.15, 0.3)), metal=metal,
                            size_factors=(float(rng.uniform(0.8, 1.25)),))
        (image,) = knee_crops(composite)
        assert metal_over_joint(image, KNEE_KL_FIELD_MM / SIZE), (metal, val_crops.files[index])


def test_native_knees_under_other_processing_are_not_metal(val_crops: CropSet) -> None:
    """8-bit, every display curve, burned-in text and rulers: dense bone may clip, yet it is not flat-topped with
    sharp edges.  (On val composites in bench.radiographs: none of the plain or shifted knees refused for metal.)"""
    rng = np.random.default_rng(32)
    for number, index in enumerate(rng.choice(len(val_crops.files), 24, replace=False)):
        composite = compose(val_crops, (int(index),), rng, spacing_mm=float(rng.uniform(0.15, 0.3)), bits=8,
                            tone=TONES[number % len(TONES)], burned_in=True)
        (image,) = knee_crops(composite)
        assert not metal_over_joint(image, KNEE_KL_FIELD_MM / SIZE), val_crops.files[index]
