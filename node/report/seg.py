"""The Segmentation of one graded radiograph: its Grad-CAM as BINARY attention bands over the source image.

A viewer shows it over the radiograph with its own visibility toggle and opacity, which the SC's burned-in heatmap
cannot offer.  Each graded knee's Grad-CAM, scaled to that knee's maximum (as in the SC), is cut into three
non-overlapping bands, 25-50 %, 50-75 % and 75-100 % of the maximum, one segment each, coloured like the SC's
heatmap (turbo at the band's middle): a viewer that draws segments in their recommended colours draws a coarse
heatmap.  BINARY because viewers load it (OHIF 3.13 refuses FRACTIONAL segmentations).  The segments are labelled
as an algorithm's output, not anatomy.  A radiograph with no graded knee has nothing to show and gets no SEG.
"""

from __future__ import annotations

import cv2
import highdicom as hd
import numpy as np
from pydicom import Dataset
from pydicom.sr.codedict import codes

from node.analysis.model import ModelSpec
from node.domain import Analysis, KneeResult
from node.report import codes as kl
from node.report.identity import SEG_SERIES_NUMBER, Equipment, add_algorithm_equipment, output_attributes, with_type_2
from node.report.sc import image_laterality

# OHIF 3.13 loads only SEGs whose frames state their orientation, and takes a radiograph's pixel grid (which has
# none) as this one: rows along x, columns along y.
PIXEL_GRID_ORIENTATION = [1, 0, 0, 0, 1, 0]
# The bands, as fractions of each knee's maximum attention: segments 1, 2, 3 in this order.
BANDS = ((0.25, 0.5), (0.5, 0.75), (0.75, 1.0))


def band_label(lower: float, upper: float) -> str:
    return f"Grad-CAM {round(100 * lower)}-{round(100 * upper)} %"


def band_colour(lower: float, upper: float) -> hd.color.CIELabColor:
    """The SC's colormap (turbo) at the middle of the band."""
    middle = np.full((1, 1), round(255 * (lower + upper) / 2), np.uint8)
    blue, green, red = cv2.applyColorMap(middle, cv2.COLORMAP_TURBO)[0, 0]
    return hd.color.CIELabColor.from_rgb(int(red), int(green), int(blue))


def attention_map(analysis: Analysis) -> np.ndarray:
    """The radiograph's attention, float 0..1 in its pixel grid: each knee's Grad-CAM over its ROI."""
    height, width = int(analysis.radiograph.header.Rows), int(analysis.radiograph.header.Columns)
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


def attention_bands(analysis: Analysis) -> np.ndarray:
    """Each pixel's band (its segment number), 0 below the first band or outside every graded knee."""
    return np.digitize(attention_map(analysis), [lower for lower, _ in BANDS]).astype(np.uint8)


def build_seg(analysis: Analysis, spec: ModelSpec, equipment: Equipment) -> hd.seg.Segmentation:
    if not analysis.knees:
        raise ValueError("no graded knee: a radiograph without one gets no SEG")
    header = analysis.radiograph.header
    algorithm = hd.AlgorithmIdentificationSequence(
        name=spec.name, version=spec.version, family=codes.cid7162.ArtificialIntelligence,
        parameters={"weights sha256": spec.sha256, "explanation": "Grad-CAM of the predicted grade"})
    segments = [
        hd.seg.SegmentDescription(
            segment_number=number,
            segment_label=band_label(lower, upper),
            segmented_property_category=kl.SPATIAL_AND_RELATIONAL_CONCEPT,
            segmented_property_type=kl.ATTENTION_MAP,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
            display_color=band_colour(lower, upper),
        )
        for number, (lower, upper) in enumerate(BANDS, start=1)
    ]
    source = with_type_2(header)
    if "PixelSpacing" in source and not all(float(v) > 0 for v in source.PixelSpacing):
        del source.PixelSpacing  # legal in a radiograph ("unknown"), but a SEG's pixel measures must be positive
    seg = hd.seg.Segmentation(
        source_images=[source],
        pixel_array=attention_bands(analysis)[None],  # a label map: highdicom writes one binary frame per segment
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=segments,
        series_number=SEG_SERIES_NUMBER,
        series_description="knee-node Grad-CAM attention",
        content_label="GRADCAM",
        content_description=f"Grad-CAM attention bands of KL grading by {spec.name} {spec.version}",
        omit_empty_frames=False,
        **output_attributes(header, spec, equipment, kind="seg"),
    )
    # The frames are the source's pixel grid, whose patient orientation the source states (Type 2C, left empty here);
    # the grid's own orientation is what OHIF needs.  ImageLaterality (B allowed) spares the series a Laterality.
    seg.PatientOrientation = ""
    orientation = Dataset()
    orientation.ImageOrientationPatient = PIXEL_GRID_ORIENTATION
    seg.SharedFunctionalGroupsSequence[0].PlaneOrientationSequence = [orientation]
    seg.ImageLaterality = image_laterality(analysis)
    add_algorithm_equipment(seg, spec, equipment)
    return seg
