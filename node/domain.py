"""Small types shared by the stages: a decoded radiograph, a knee ROI, a graded or refused knee, an analysis."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import numpy as np
from pydicom import Dataset


class Laterality(StrEnum):
    RIGHT = "R"
    LEFT = "L"

    @property
    def word(self) -> str:
        return "Right" if self is Laterality.RIGHT else "Left"


class Reliability(StrEnum):
    NO_CONCERN = "REL0"
    ATTENTION_OUTSIDE_JOINT = "REL1"
    LOW_CONFIDENCE = "REL2"


class Refusal(StrEnum):
    """Why a knee found on a radiograph is not graded: the model was not made for what it shows."""

    METAL = "metal"
    UNFAMILIAR = "unfamiliar"

    @property
    def reason(self) -> str:
        return REFUSAL_REASONS[self]


REFUSAL_REASONS = {
    Refusal.METAL: "metal implant over the joint: not graded",
    Refusal.UNFAMILIAR: "unlike the knee radiographs the model was made for: not graded",
}


@dataclass(frozen=True)
class Radiograph:
    """A decoded radiograph: its header (no pixel data) and its display-space image, bright = dense, 0..1.

    The image may be the source reduced `step` times along each axis (decoded at the resolution the analysis
    needs); positions on the radiograph (KneeRoi) are in source pixels all the same.
    """

    header: Dataset
    image: np.ndarray  # float32 (rows, columns) / step, rounded up
    spacing_mm: tuple[float, float] | None  # (row, column) spacing of the source's pixels at the patient, or None
    step: int = 1  # source pixels per image pixel along each axis


@dataclass(frozen=True)
class KneeRoi:
    """A knee joint found on a radiograph: a square of fixed physical size, centred on the joint line."""

    center: tuple[float, float]  # (row, column) in source pixels
    half_size: tuple[float, float]  # (rows, columns) in source pixels
    laterality: Laterality

    @property
    def corners(self) -> np.ndarray:
        """Closed polyline (5, 2) of (column, row) points, as DICOM SCOORD wants them."""
        (row, col), (half_rows, half_cols) = self.center, self.half_size
        top, bottom, left, right = row - half_rows, row + half_rows, col - half_cols, col + half_cols
        return np.array([[left, top], [right, top], [right, bottom], [left, bottom], [left, top]], dtype=np.float32)


@dataclass(frozen=True)
class KneeResult:
    roi: KneeRoi
    probabilities: tuple[float, ...]  # calibrated, one per KL grade
    attention: float  # share of the Grad-CAM mass on the joint band, 0..1
    reliability: Reliability
    cam: np.ndarray  # Grad-CAM of the predicted grade over the ROI (h, w), not normalised

    @property
    def grade(self) -> int:
        return int(np.argmax(self.probabilities))

    @property
    def confidence(self) -> float:
        return float(max(self.probabilities))

    def summary(self) -> dict[str, Any]:
        """What `knee-node analyze --json`, the log and the audit trail say of a graded knee."""
        return {
            "laterality": self.roi.laterality.value,
            "graded": True,
            "grade": self.grade,
            "confidence": round(self.confidence, 4),
            "probabilities": [round(p, 4) for p in self.probabilities],
            "attention": round(self.attention, 4),
            "reliability": self.reliability.value,
            "roi": [round(float(v), 1) for v in (*self.roi.center, *self.roi.half_size)],
        }


@dataclass(frozen=True)
class RefusedKnee:
    """A knee found but not graded, and why."""

    roi: KneeRoi
    refusal: Refusal

    def summary(self) -> dict[str, Any]:
        return {"laterality": self.roi.laterality.value, "graded": False, "refusal": self.refusal.value,
                "reason": self.refusal.reason,
                "roi": [round(float(v), 1) for v in (*self.roi.center, *self.roi.half_size)]}


@dataclass(frozen=True)
class Analysis:
    """What the node concluded about one radiograph: graded knees, knees it refuses, or why it found none."""

    radiograph: Radiograph
    knees: tuple[KneeResult, ...]
    reason: str = ""  # set when no knee was graded: none found, the view not graded, or every knee refused
    refused: tuple[RefusedKnee, ...] = ()

    def summaries(self) -> list[dict[str, Any]]:
        """Every knee found, graded or not, left to right on the image."""
        found = [*self.knees, *self.refused]
        return [knee.summary() for knee in sorted(found, key=lambda k: k.roi.center[1])]
