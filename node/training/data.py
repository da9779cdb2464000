"""Labelled knee crops (knee-kl layout): decoded once into memory, augmented per batch on the device."""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from node.domain import Laterality

# Physical width of a knee-kl crop.  Measured on val/: the femoral condyles span a median 203 of the 224 pixels;
# with a mean bicondylar width of about 80 mm in the OAI's population that puts 224 pixels at about 90 mm.
KNEE_KL_FIELD_MM = 90.0


@dataclass(frozen=True)
class CropSet:
    images: np.ndarray  # (N, H, W) uint8
    grades: np.ndarray  # (N,) int64, KL 0..4
    files: tuple[str, ...]


def crop_laterality(file: str) -> Laterality:
    """knee-kl names end in the knee side: `2/9001695R.jpg` is a right knee."""
    return Laterality(Path(file).stem[-1].upper())


def is_inverted(crop: np.ndarray) -> bool:
    """True for a crop stored with inverted grey levels (bone dark), as about 1.2 % of knee-kl's are.

    In a knee crop the femoral condyles are brighter than the soft tissue at the crop's sides; inverted, darker.
    """
    size = crop.shape[0]
    bone = crop[int(0.15 * size):int(0.40 * size), int(0.25 * size):int(0.75 * size)].mean()
    sides = np.concatenate([crop[:, :int(0.06 * size)], crop[:, -int(0.06 * size):]], axis=1).mean()
    return bool(bone < sides)


def load_crops(folder: Path, num_classes: int = 5) -> CropSet:
    """Read `labels.csv` (file,kl_grade) and its images; any bad row fails with the row named.

    Inverted crops are turned back: a decoded radiograph never shows bone dark, so neither should training.
    """
    labels = folder / "labels.csv"
    if not labels.is_file():
        raise FileNotFoundError(f"{labels} not found (expected columns file,kl_grade)")
    images, grades, files = [], [], []
    with labels.open(newline="") as handle:
        for line, row in enumerate(csv.DictReader(handle), start=2):
            try:
                grade = int(row["kl_grade"])
                path = folder / row["file"]
            except (KeyError, TypeError, ValueError) as error:
                raise ValueError(f"{labels}:{line}: expected file,kl_grade ({error})") from None
            if not 0 <= grade < num_classes:
                raise ValueError(f"{labels}:{line}: kl_grade {grade} outside 0..{num_classes - 1}")
            image = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
            if image is None:
                raise ValueError(f"{labels}:{line}: cannot read image {path}")
            images.append(255 - image if is_inverted(image) else image)
            grades.append(grade)
            files.append(row["file"])
    if not images:
        raise ValueError(f"{labels}: no rows")
    if len({image.shape for image in images}) != 1:
        raise ValueError(f"{folder}: crops differ in size")
    return CropSet(np.stack(images), np.asarray(grades, dtype=np.int64), tuple(files))


def augment(images: torch.Tensor, size: int, generator: torch.Generator) -> torch.Tensor:
    """Plausible radiograph variation for a (B, 1, H, W) batch in [0, 1], resampled to size x size.

    Geometry: rotation within 8 degrees, scale 0.9-1.1, shift within 5 %, left-right flip (a right knee mirrored
    looks like a left one).  Intensity: window (brightness, contrast, with clipping as a narrow window clips) and
    gamma, as different detectors and VOI settings give.
    """
    batch = images.shape[0]

    def uniform(low: float, high: float) -> torch.Tensor:
        return (torch.rand(batch, generator=generator) * (high - low) + low).to(images.device)

    angle = uniform(-8, 8) * math.pi / 180
    scale = uniform(0.9, 1.1)
    flip = torch.where(uniform(0, 1) < 0.5, -1.0, 1.0)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([
        torch.stack([cos * flip, -sin, uniform(-0.05, 0.05)], 1),
        torch.stack([sin * flip, cos, uniform(-0.05, 0.05)], 1),
    ], 1)
    grid = F.affine_grid(theta, [batch, 1, size, size], align_corners=False)
    out = F.grid_sample(images, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    contrast, brightness = uniform(0.8, 1.25), uniform(-0.1, 0.1)
    gamma = torch.exp(uniform(-0.3, 0.3))
    out = ((out - 0.5) * contrast[:, None, None, None] + 0.5 + brightness[:, None, None, None]).clamp(0, 1)
    return out ** gamma[:, None, None, None]
