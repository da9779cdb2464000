"""The Segmentation of one graded radiograph: its Grad-CAM as a FRACTIONAL attention map over the source image.

A viewer shows it over the radiograph with its own visibility toggle and opacity, which the SC's burned-in heatmap
cannot offer.  One segment, "Grad-CAM attention", labelled as an algorithm's output (not anatomy); inside each
graded knee's ROI the map of that knee scaled to its maximum (as in the SC), zero elsewhere.  A radiograph with no
graded knee has nothing to show and gets no SEG.
"""

from __future__ import annotations

import cv2
import highdicom as hd
import numpy as np
from pydicom.sr.codedict import codes

from node.analysis.model import ModelSpec
from node.domain import Analysis, KneeResult
from node.report import codes as kl
from node.report.identity import SEG_SERIES_NUMBER, Equipment, add_algorithm_equipment, output_attributes, with_type_2

SEGMENT_LABEL = "Grad-CAM attention"
MAX_FRACTIONAL_VALUE = 255


def attention_map(analysis: Analysis) -> np.ndarray:
    """The radiograph's attention, float 0..1 in its pixel grid: each knee's Grad-CAM over its ROI."""
    height, width = analysis.radiograph.image.shape
    attention = np.zeros((height, width), np.float32)
    for knee in analysis.knees:
        paint(attention, knee)
    return attention


def paint(attention: np.ndarray, knee: KneeResult) -> None:
    (row, col), (half_rows, half_cols) = knee.roi.center, knee.roi.half_size
    top, bottom = round(row - half_rows), round(row + half_rows)
    left, right = round(col - half_cols), round(col + half_cols)
    heat = cv2.resize(knee.cam / max(float(knee.cam.max()), 1e-12), (right - left, bottom - top),
                      interpolation=cv2.INTER_CUBIC).clip(0, 1)
    y0, y1 = max(top, 0), min(bottom, attention.shape[0])
    x0, x1 = max(left, 0), min(right, attention.shape[1])  # a knee at the border: the part inside the image
    region = attention[y0:y1, x0:x1]
    np.maximum(region, heat[y0 - top:y1 - top, x0 - left:x1 - left], out=region)


def build_seg(analysis: Analysis, spec: ModelSpec, equipment: Equipment) -> hd.seg.Segmentation:
    if not analysis.knees:
        raise ValueError("no graded knee: a radiograph without one gets no SEG")
    header = analysis.radiograph.header
    algorithm = hd.AlgorithmIdentificationSequence(
        name=spec.name, version=spec.version, family=codes.cid7162.ArtificialIntelligence,
        parameters={"weights sha256": spec.sha256, "explanation": "Grad-CAM of the predicted grade"})
    segment = hd.seg.SegmentDescription(
        segment_number=1,
        segment_label=SEGMENT_LABEL,
        segmented_property_category=kl.SPATIAL_AND_RELATIONAL_CONCEPT,
        segmented_property_type=kl.ATTENTION_MAP,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algorithm,
    )
    source = with_type_2(header)
    if "PixelSpacing" in source and not all(float(v) > 0 for v in source.PixelSpacing):
        del source.PixelSpacing  # legal in a radiograph ("unknown"), but a SEG's pixel measures must be positive
    seg = hd.seg.Segmentation(
        source_images=[source],
        pixel_array=attention_map(analysis)[None],
        segmentation_type=hd.seg.SegmentationTypeValues.FRACTIONAL,
        fractional_type=hd.seg.SegmentationFractionalTypeValues.PROBABILITY,
        max_fractional_value=MAX_FRACTIONAL_VALUE,
        segment_descriptions=[segment],
        series_number=SEG_SERIES_NUMBER,
        series_description="knee-node Grad-CAM attention",
        content_label="GRADCAM",
        content_description=f"Grad-CAM attention of KL grading by {spec.name} {spec.version}",
        omit_empty_frames=False,
        **output_attributes(header, spec, equipment, kind="seg"),
    )
    seg.PatientOrientation = header.get("PatientOrientation") or ""  # Type 2C without a patient coordinate system
    add_algorithm_equipment(seg, spec, equipment)
    return seg
