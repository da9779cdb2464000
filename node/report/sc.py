"""The Secondary Capture of one radiograph: Grad-CAM inside each knee ROI, box, grade label, legend, disclaimer."""

from __future__ import annotations

import re

import cv2
import highdicom as hd
import numpy as np
from pydicom import Dataset
from pydicom.uid import ExplicitVRLittleEndian

from node.analysis.model import ModelSpec
from node.domain import Analysis, KneeResult, KneeRoi, Reliability
from node.report.identity import SC_SERIES_NUMBER, Equipment, add_algorithm_equipment, output_attributes, with_type_2

MAX_SIDE = 2048  # viewers show the overlay fitted to a screen; full detector resolution only costs storage
DISCLAIMER = "AI result - not for primary diagnosis"
CAUTION = {Reliability.ATTENTION_OUTSIDE_JOINT: "attention outside joint", Reliability.LOW_CONFIDENCE: "low confidence"}
WHITE, AMBER, GREEN = (255, 255, 255), (255, 191, 0), (80, 220, 100)  # RGB
FONT = cv2.FONT_HERSHEY_SIMPLEX


def knee_label(knee: KneeResult) -> str:
    return f"{knee.roi.laterality.value} KL {knee.grade} ({100 * knee.confidence:.0f}%)"


Colour = tuple[int, int, int]
Box = tuple[int, int, int, int]  # left, top, right, bottom
Line = tuple[str, float, Colour]  # text, scale, colour


class Layout:
    """Text blocks placed on the canvas so that each stays inside it and none covers another."""

    def __init__(self, canvas: np.ndarray, text_scale: float) -> None:
        self.canvas, self.text_scale, self.taken = canvas, text_scale, []
        self.margin = round(10 * text_scale)

    def place(self, lines: list[Line], x: int, y: int) -> None:
        """Draw `lines` with their block's top-left corner as near (x, y) as the image and earlier blocks allow:
        moved inside the image, then down past any block it would cover (or up, where down runs out)."""
        step = round(45 * self.text_scale)
        sizes = [text_size(text, scale) for text, scale, _ in lines]
        width = max(w for w, _ in sizes) + 2 * self.margin
        height = step * (len(lines) - 1) + sizes[-1][1] + 2 * self.margin
        rows, columns = self.canvas.shape[:2]
        x = min(max(x, self.margin), max(columns - width, self.margin))
        y = self.free_row(x, min(max(y, self.margin), max(rows - height, self.margin)), width, height)
        self.taken.append((x, y, x + width, y + height))
        for index, ((text, scale, colour), (_, text_height)) in enumerate(zip(lines, sizes, strict=True)):
            put_text(self.canvas, text, (x + self.margin, y + self.margin + index * step + text_height), scale, colour)

    def free_row(self, x: int, y: int, width: int, height: int) -> int:
        rows = self.canvas.shape[0]
        for downwards in (True, False):
            candidate = y
            while 0 <= candidate <= rows - height:
                blocking = [t for t in self.taken if overlaps((x, candidate, x + width, candidate + height), t)]
                if not blocking:
                    return candidate
                candidate = (max(t[3] for t in blocking) + 1 if downwards
                             else min(t[1] for t in blocking) - height - 1)
        return y  # no free row: overlapping beats leaving the image


def overlaps(a: Box, b: Box) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def render(analysis: Analysis, spec: ModelSpec) -> np.ndarray:
    """The annotated radiograph as RGB uint8, longest side at most MAX_SIDE."""
    image = analysis.radiograph.image
    scale = min(1.0, MAX_SIDE / max(image.shape))
    size = (round(image.shape[1] * scale), round(image.shape[0] * scale))
    gray = (cv2.resize(image, size, interpolation=cv2.INTER_AREA) * 255 + 0.5).astype(np.uint8)
    canvas = cv2.cvtColor(gray, cv2.COLOR_GRAY2RGB)
    text_scale = max(size) / 1400  # about 2 % of the image height per line of text
    scale /= analysis.radiograph.step  # from here on, of the ROIs' source pixels
    layout = Layout(canvas, text_scale)
    draw_legend(canvas, text_scale, layout)
    height = canvas.shape[0]
    layout.place([(DISCLAIMER, text_scale, WHITE),
                  (f"{spec.name} {spec.version}, Grad-CAM of the predicted grade", 0.7 * text_scale, WHITE)],
                 0, height)
    if not analysis.knees:
        layout.place([(f"No knee graded: {analysis.reason}", text_scale, AMBER)], 0, 0)
    for knee in analysis.knees:
        draw_knee(canvas, knee, scale, text_scale, layout)
    for refused in analysis.refused:
        box = draw_box(canvas, refused.roi, scale, text_scale, AMBER)
        place_label(layout, box, [(f"{refused.roi.laterality.value}: not graded", 1.2 * text_scale, AMBER),
                                  (refused.refusal.reason.split(":")[0], text_scale, AMBER)], text_scale)
    return canvas


def draw_box(canvas: np.ndarray, roi: KneeRoi, scale: float, text_scale: float, colour: Colour) -> Box:
    (row, col), (half_rows, half_cols) = roi.center, roi.half_size
    box = (round((col - half_cols) * scale), round((row - half_rows) * scale),
           round((col + half_cols) * scale), round((row + half_rows) * scale))
    cv2.rectangle(canvas, box[:2], box[2:], colour, max(2, round(3 * text_scale)))
    return box


def place_label(layout: Layout, box: Box, lines: list[Line], text_scale: float) -> None:
    """A knee's label above its box, or below it where the box reaches the top of the image."""
    height = round(45 * text_scale) * len(lines) + layout.margin
    y = box[1] - height - round(6 * text_scale)
    layout.place(lines, box[0], y if y >= 0 else box[3] + round(6 * text_scale))


def draw_knee(canvas: np.ndarray, knee: KneeResult, scale: float, text_scale: float, layout: Layout) -> None:
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
    box = draw_box(canvas, knee.roi, scale, text_scale, box_colour)
    lines: list[Line] = [(knee_label(knee), 1.2 * text_scale, box_colour)]
    if knee.reliability in CAUTION:
        lines.append((f"Caution: {CAUTION[knee.reliability]}", text_scale, AMBER))
    place_label(layout, box, lines, text_scale)


def blend_heatmap(region: np.ndarray, heat: np.ndarray) -> None:
    """Blend a turbo heatmap of `heat` (0..1, the region's height and width) into the RGB `region`, in place."""
    colour = cv2.cvtColor(cv2.applyColorMap((heat * 255).astype(np.uint8), cv2.COLORMAP_TURBO), cv2.COLOR_BGR2RGB)
    alpha = (0.6 * heat)[..., None]
    region[:] = (region * (1 - alpha) + colour * alpha + 0.5).astype(np.uint8)


def draw_legend(canvas: np.ndarray, text_scale: float, layout: Layout) -> None:
    """A turbo colour bar, low to high attention, in the top-right corner (kept free of labels)."""
    width, height = round(240 * text_scale), round(22 * text_scale)
    margin = round(20 * text_scale)
    x0, y0 = canvas.shape[1] - width - margin, margin + round(30 * text_scale)
    ramp = np.tile(np.linspace(0, 255, width).astype(np.uint8), (height, 1))
    canvas[y0:y0 + height, x0:x0 + width] = cv2.cvtColor(cv2.applyColorMap(ramp, cv2.COLORMAP_TURBO),
                                                         cv2.COLOR_BGR2RGB)
    cv2.rectangle(canvas, (x0, y0), (x0 + width, y0 + height), WHITE, 1)
    put_text(canvas, "Grad-CAM: low", (x0, y0 - round(8 * text_scale)), 0.6 * text_scale, WHITE)
    put_text(canvas, "high", (x0 + width - round(50 * text_scale), y0 - round(8 * text_scale)), 0.6 * text_scale, WHITE)
    layout.taken.append((x0 - margin, 0, canvas.shape[1], y0 + height + margin))


def text_size(text: str, scale: float) -> tuple[int, int]:
    (width, height), baseline = cv2.getTextSize(text, FONT, scale, max(1, round(2 * scale)))
    return width, height + baseline


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
    add_algorithm_equipment(sc, spec, equipment)
    return sc


def image_laterality(analysis: Analysis) -> str:
    sides = {knee.roi.laterality.value for knee in (*analysis.knees, *analysis.refused)}
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
