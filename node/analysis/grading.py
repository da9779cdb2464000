"""Grade radiographs in batches: locate the knees, crop each by physical size, one model pass for all crops."""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from node.analysis.attention import joint_attention
from node.analysis.localize import Localizer
from node.analysis.model import Grader, ModelSpec
from node.domain import Analysis, KneeResult, KneeRoi, Radiograph, Reliability


def crop(image: np.ndarray, roi: KneeRoi, size: int) -> np.ndarray:
    """The ROI resampled to size x size by pixel-area averaging; beyond the image border, the edge repeats."""
    (row, col), (half_rows, half_cols) = roi.center, roi.half_size
    top, bottom = round(row - half_rows), round(row + half_rows)
    left, right = round(col - half_cols), round(col + half_cols)
    rows, columns = image.shape
    region = image[max(top, 0):min(bottom, rows), max(left, 0):min(right, columns)]
    pads = (max(0, -top), max(0, bottom - rows), max(0, -left), max(0, right - columns))
    if any(pads):
        region = cv2.copyMakeBorder(region, *pads, cv2.BORDER_REPLICATE)
    return cv2.resize(region, (size, size), interpolation=cv2.INTER_AREA)


def reliability(attention: float, confidence: float, spec: ModelSpec) -> Reliability:
    """Attention off the joint outranks low confidence: it questions the input, not only the grade."""
    if attention < spec.attention_threshold:
        return Reliability.ATTENTION_OUTSIDE_JOINT
    if confidence < spec.confidence_threshold:
        return Reliability.LOW_CONFIDENCE
    return Reliability.NO_CONCERN


class Analyzer:
    """One loaded model grading any number of radiographs per call, all knees in one batch."""

    def __init__(self, grader: Grader) -> None:
        self.grader = grader
        self.localizer = Localizer(grader.spec.field_mm)

    @property
    def spec(self) -> ModelSpec:
        return self.grader.spec

    def analyze(self, radiographs: Sequence[Radiograph]) -> list[Analysis]:
        located = [self.localizer.find_knees(radiograph) for radiograph in radiographs]
        rois = [roi for found, _ in located for roi in found]
        results: list[KneeResult] = []
        if rois:
            crops = np.stack([crop(radiograph.image, roi, self.spec.input_size)
                              for radiograph, (found, _) in zip(radiographs, located, strict=True) for roi in found])
            probabilities, cams = self.grader.predict(crops)
            attention = joint_attention(cams)
            results = [KneeResult(roi=roi, probabilities=tuple(float(p) for p in probabilities[i]),
                                  attention=float(attention[i]),
                                  reliability=reliability(float(attention[i]), float(probabilities[i].max()),
                                                          self.spec),
                                  cam=cams[i])
                       for i, roi in enumerate(rois)]
        analyses, start = [], 0
        for radiograph, (found, reason) in zip(radiographs, located, strict=True):
            analyses.append(Analysis(radiograph, tuple(results[start:start + len(found)]), reason))
            start += len(found)
        return analyses
