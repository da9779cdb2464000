"""The Secondary Capture of one radiograph: Grad-CAM inside each knee ROI, box, grade label, legend, disclaimer."""

from __future__ import annotations

import re

import cv2
import highdicom as hd
import numpy as np
from pydicom import Dataset
from pydicom.uid import ExplicitVRLittleEndian

from node.analysis.model import ModelSpec
from node.domain import Analysis, KneeResult, Reliability
from node.report.identity import SC_SERIES_NUMBER, Equipment, output_attributes, with_type_2

MAX_SIDE = 2048  # viewers show the overlay fitted to a screen; full detector resolution only costs storage
DISCLAIMER = "AI result - not for primary diagnosis"
CAUTION = {Reliability.ATTENTION_OUTSIDE_JOINT: "attention outside joint", Reliability.LOW_CONFIDENCE: "low confidence"}
WHITE, AMBER, GREEN = (255, 255, 255), (255, 191, 0), (80, 220, 100)  # RGB
FONT = cv2.FONT_HERSHEY_SIMPLEX


def knee_label(knee: KneeResult) -> str:
    return f"{knee.roi.laterality.value} KL {knee.grade} ({100 * knee.confidence:.0f}%)"


def render(analysis: Analysis, spec: ModelSpec) -> np.ndarray:
    """The annotated radiograph as RGB uint8, longest side at most MAX_SIDE."""
    image = analysis.radiograph.image
    scale = min(1.0, MAX_SIDE / max(image.shape))
    size = (round(image.shape[1] * scale), round(image.shape[0] * scale))
    gray = (cv2.resize(image, size, interpolation=cv2.INTER_AREA) * 255 + 0.5).astype(np.uint8)
    canvas = cv2.cvtColor(gray, cv2.COLOR_GRAY2RGB)
    text_scale = max(size) / 1400  # about 2 % of the image height per line of text
    for knee in analysis.knees:
        draw_knee(canvas, knee, scale, text_scale)
    if not analysis.knees:
        put_text(canvas, f"No knee graded: {analysis.reason}", (round(20 * text_scale), round(60 * text_scale)),
                 text_scale, AMBER)
    draw_legend(canvas, text_scale)
    height = canvas.shape[0]
    put_text(canvas, DISCLAIMER, (round(20 * text_scale), height - round(60 * text_scale)), text_scale, WHITE)
    put_text(canvas, f"{spec.name} {spec.version}, Grad-CAM of the predicted grade",
             (round(20 * text_scale), height - round(20 * text_scale)), 0.7 * text_scale, WHITE)
    return canvas


def draw_knee(canvas: np.ndarray, knee: KneeResult, scale: float, text_scale: float) -> None:
    (row, col), (half_rows, half_cols) = knee.roi.center, knee.roi.half_size
    top, bottom = round((row - half_rows) * scale), round((row + half_rows) * scale)
    left, right = round((col - half_cols) * scale), round((col + half_cols) * scale)
    # The part of the ROI inside the image gets the heatmap, weighted by attention so cold areas stay readable.
    heat = cv2.resize(knee.cam / max(float(knee.cam.max()), 1e-12), (right - left, bottom - top),
                      interpolation=cv2.INTER_CUBIC).clip(0, 1)
    y0, y1 = max(top, 0), min(bottom, canvas.shape[0])
    x0, x1 = max(left, 0), min(right, canvas.shape[1])
    blend_heatmap(canvas[y0:y1, x0:x1], heat[y0 - top:y1 - top, x0 - left:x1 - left])
    box_colour = GREEN if knee.reliability is Reliability.NO_CONCERN else AMBER
    cv2.rectangle(canvas, (left, top), (right, bottom), box_colour, max(2, round(3 * text_scale)))
    lines = [(knee_label(knee), 1.2 * text_scale, box_colour)]
    if knee.reliability in CAUTION:
        lines.append((f"Caution: {CAUTION[knee.reliability]}", text_scale, AMBER))
    step = round(45 * text_scale)
    # The label block sits above the box, or below it when the box touches the top of the image.
    y = top - round(12 * text_scale) - step * (len(lines) - 1) if top > step * (len(lines) + 1) else bottom + step
    for text, size, colour in lines:
        put_text(canvas, text, (max(left, 0), y), size, colour)
        y += step


def blend_heatmap(region: np.ndarray, heat: np.ndarray) -> None:
    """Blend a turbo heatmap of `heat` (0..1, the region's height and width) into the RGB `region`, in place."""
    colour = cv2.cvtColor(cv2.applyColorMap((heat * 255).astype(np.uint8), cv2.COLORMAP_TURBO), cv2.COLOR_BGR2RGB)
    alpha = (0.6 * heat)[..., None]
    region[:] = (region * (1 - alpha) + colour * alpha + 0.5).astype(np.uint8)


def draw_legend(canvas: np.ndarray, text_scale: float) -> None:
    """A turbo colour bar, low to high attention, in the top-right corner."""
    width, height = round(240 * text_scale), round(22 * text_scale)
    margin = round(20 * text_scale)
    x0, y0 = canvas.shape[1] - width - margin, margin + round(30 * text_scale)
    ramp = np.tile(np.linspace(0, 255, width).astype(np.uint8), (height, 1))
    canvas[y0:y0 + height, x0:x0 + width] = cv2.cvtColor(cv2.applyColorMap(ramp, cv2.COLORMAP_TURBO),
                                                         cv2.COLOR_BGR2RGB)
    cv2.rectangle(canvas, (x0, y0), (x0 + width, y0 + height), WHITE, 1)
    put_text(canvas, "Grad-CAM: low", (x0, y0 - round(8 * text_scale)), 0.6 * text_scale, WHITE)
    put_text(canvas, "high", (x0 + width - round(50 * text_scale), y0 - round(8 * text_scale)), 0.6 * text_scale, WHITE)


Colour = tuple[int, int, int]


def put_text(canvas: np.ndarray, text: str, origin: tuple[int, int], scale: float, colour: Colour) -> None:
    """Text on a dark box, legible on bone and on background alike; origin is the baseline's left end."""
    thickness = max(1, round(2 * scale))
    (width, height), baseline = cv2.getTextSize(text, FONT, scale, thickness)
    pad = max(2, round(4 * scale))
    x, y = origin
    cv2.rectangle(canvas, (x - pad, y - height - pad), (x + width + pad, y + baseline + pad), (0, 0, 0), cv2.FILLED)
    cv2.putText(canvas, text, origin, FONT, scale, colour, thickness, cv2.LINE_AA)


def build_sc(analysis: Analysis, spec: ModelSpec, equipment: Equipment) -> hd.sc.SCImage:
    header = analysis.radiograph.header
    orientation = header.get("PatientOrientation") or []
    known_orientation = (tuple(str(v) for v in orientation)
                         if len(orientation) == 2 and all(re.fullmatch("[APRLHF]{1,3}", str(v)) for v in orientation)
                         else None)
    sc = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=with_type_2(header),
        pixel_array=render(analysis, spec),
        photometric_interpretation="RGB",
        bits_allocated=8,
        coordinate_system="PATIENT",
        patient_orientation=known_orientation or ("L", "F"),  # highdicom insists; emptied below when unknown
        series_number=SC_SERIES_NUMBER,
        series_description="knee-node KL grading overlay",
        transfer_syntax_uid=ExplicitVRLittleEndian,
        **output_attributes(header, spec, equipment, kind="sc"),
    )
    if known_orientation is None:
        sc.PatientOrientation = ""  # Type 2: unknown stays empty, never guessed
    sc.ImageType = ["DERIVED", "SECONDARY"]
    sc.ImageLaterality = image_laterality(analysis)
    sc.BurnedInAnnotation = "YES"
    sc.DerivationDescription = f"Grad-CAM overlay of KL grading by {spec.name} {spec.version}"
    sc.SourceImageSequence = [source_reference(header)]
    return sc


def image_laterality(analysis: Analysis) -> str:
    sides = {knee.roi.laterality.value for knee in analysis.knees}
    if len(sides) == 2:
        return "B"
    if sides:
        return sides.pop()
    return str(analysis.radiograph.header.get("ImageLaterality") or "U")


def source_reference(header: Dataset) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = header.SOPClassUID
    item.ReferencedSOPInstanceUID = header.SOPInstanceUID
    return item
