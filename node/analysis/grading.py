"""Grade radiographs in batches: locate the knees, crop each by physical size, refuse crops with metal over the joint,
one model pass for all the others; refuse those whose features lie far from the training crops' too."""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from node.analysis.attention import joint_attention
from node.analysis.implants import metal_over_joint
from node.analysis.localize import REFINE_MM, Localizer
from node.analysis.model import Grader, ModelSpec
from node.domain import Analysis, KneeResult, KneeRoi, Radiograph, Refusal, RefusedKnee, Reliability


def crop(image: np.ndarray, roi: KneeRoi, size: int, step: int = 1) -> np.ndarray:
    """The ROI resampled to size x size by pixel-area averaging; beyond the image border, the edge repeats.
    `step`: source pixels (the ROI's) per image pixel."""
    (row, col), (half_rows, half_cols) = (tuple(v / step for v in pair) for pair in (roi.center, roi.half_size))
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

    @property
    def resolution_mm(self) -> float:
        """The coarsest pixels the analysis can take without losing detail: those of the model's crops (of a knee
        of the training crops' size), or the localizer's refinement if finer."""
        return min(self.spec.field_mm / self.spec.input_size, REFINE_MM)

    def analyze(self, radiographs: Sequence[Radiograph]) -> list[Analysis]:
        located = [self.localizer.find_knees(radiograph) for radiograph in radiographs]
        found = [(radiograph, roi) for radiograph, (rois, _) in zip(radiographs, located, strict=True) for roi in rois]
        crops = [crop(radiograph.image, roi, self.spec.input_size, radiograph.step) for radiograph, roi in found]
        mm_per_pixel = self.spec.field_mm / self.spec.input_size  # of a knee of the training crops' size
        outcomes: list[KneeResult | RefusedKnee | None] = [
            RefusedKnee(roi, Refusal.METAL) if metal_over_joint(image, mm_per_pixel) else None
            for (_, roi), image in zip(found, crops, strict=True)]
        graded = [i for i, outcome in enumerate(outcomes) if outcome is None]
        if graded:
            probabilities, cams, distances = self.grader.predict(np.stack([crops[i] for i in graded]))
            attention = joint_attention(cams)
            for j, i in enumerate(graded):
                if distances[j] > self.spec.familiarity_threshold:
                    outcomes[i] = RefusedKnee(found[i][1], Refusal.UNFAMILIAR)
                    continue
                confidence = float(probabilities[j].max())
                outcomes[i] = KneeResult(roi=found[i][1], probabilities=tuple(float(p) for p in probabilities[j]),
                                         attention=float(attention[j]),
                                         reliability=reliability(float(attention[j]), confidence, self.spec),
                                         cam=cams[j])
        analyses, start = [], 0
        for radiograph, (rois, reason) in zip(radiographs, located, strict=True):
            mine = outcomes[start:start + len(rois)]
            start += len(rois)
            knees = tuple(o for o in mine if isinstance(o, KneeResult))
            refused = tuple(o for o in mine if isinstance(o, RefusedKnee))
            if refused and not knees:
                reason = "; ".join(dict.fromkeys(knee.refusal.reason for knee in refused))
            analyses.append(Analysis(radiograph, knees, reason, refused))
        return analyses
