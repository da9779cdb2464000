"""The knee-joint template the localizer matches: the mean knee-kl training crop, as a right knee."""

from __future__ import annotations

import cv2
import numpy as np

from node.domain import Laterality
from node.training.data import CropSet, crop_laterality

TEMPLATE_SIZE = 64  # pixels across the crop's field; matching runs at about 1 mm per pixel anyway


def knee_template(crops: CropSet) -> np.ndarray:
    """Mean of the crops at TEMPLATE_SIZE, left knees mirrored so all are right knees as displayed; uint8."""
    small = np.stack([cv2.resize(crop, (TEMPLATE_SIZE, TEMPLATE_SIZE), interpolation=cv2.INTER_AREA)
                      for crop in crops.images]).astype(np.float64)
    left = np.array([crop_laterality(name) is Laterality.LEFT for name in crops.files])
    small[left] = small[left, :, ::-1]
    mean = small.mean(0)
    return np.round(255 * (mean - mean.min()) / (mean.max() - mean.min())).astype(np.uint8)
