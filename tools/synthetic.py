"""Synthetic knee radiographs (DICOM) built from knee-kl crops, with their ground truth.

A crop (or a subject's right and left crops) is placed at its physical size on a radiograph-sized canvas; femur
and tibia are continued beyond it from its edge rows, tapering towards the shaft and blurring with distance, in
a soft-tissue silhouette that fades to the direct-exposure background.  A lead marker, collimation and noise
complete the picture.  The display image is then stored in the requested DICOM encoding (bit depth,
photometric interpretation, Modality LUT, VOI, spacing attribute, transfer syntax), so readers can be tested
against a known display image, known knee positions and known grades.

`python -m tools.synthetic --data ../shared/datasets/knee-kl/val --out demo/ -n 10` writes a folder of them (the
JPEG baseline, extended and lossless syntaxes are encoded by DCMTK's dcmcjpeg).
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import product
from pathlib import Path
from typing import Literal, get_args

import cv2
import numpy as np
import pydicom
from pydicom import Dataset, FileMetaDataset, dcmwrite
from pydicom.uid import (
    JPEG2000,
    PYDICOM_IMPLEMENTATION_UID,
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
    generate_uid,
)

from node.domain import Laterality
from node.training.data import KNEE_KL_FIELD_MM, CropSet, crop_laterality, load_crops

Bits = Literal[8, 12, 16]
Photometric = Literal["MONOCHROME1", "MONOCHROME2"]
Modality = Literal["DX", "CR"]
Voi = Literal["window", "lut", "none"]
SpacingTag = Literal["imager", "pixel", "none"]
View = Literal["PA", "LL", "LATERAL"]
Metal = Literal["knee-replacement", "unicompartmental", "plate-and-screws", "screws"]
Tone = Literal["linear", "bright", "dark", "s-curve"]  # the display curve of another site's processing
METALS: tuple[Metal, ...] = get_args(Metal)
TONES: tuple[Tone, ...] = get_args(Tone)

DX_STORAGE = UID("1.2.840.10008.5.1.4.1.1.1.1")  # Digital X-Ray Image Storage - For Presentation
CR_STORAGE = UID("1.2.840.10008.5.1.4.1.1.1")  # Computed Radiography Image Storage

SYNTAXES: tuple[UID, ...] = (
    ImplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    JPEG2000Lossless,
    JPEG2000,
    RLELossless,
)
LOSSY_SYNTAXES = frozenset({JPEGBaseline8Bit, JPEGExtended12Bit, JPEGLSNearLossless, JPEG2000})
# Bit depths each syntax can carry: JPEG baseline is 8-bit only, JPEG extended at most 12.
SYNTAX_BITS: dict[UID, tuple[Bits, ...]] = {syntax: (8, 12, 16) for syntax in SYNTAXES} | {
    JPEGBaseline8Bit: (8,), JPEGExtended12Bit: (8, 12)}
# DCMTK does what pydicom cannot encode: JPEG 1 processes (dcmcjpeg; +sr keeps the stored values, its default
# rescales lossy input to min..max) and big endian (dcmconv).  Only their pixel data is kept: dcmcjpeg also
# rewrites the header (Rescale, ImageType, drops the VOI LUT).
DCMTK_COMMANDS = {
    ExplicitVRBigEndian: ("dcmconv", "+tb"),
    JPEGBaseline8Bit: ("dcmcjpeg", "+eb", "+sr"),
    JPEGExtended12Bit: ("dcmcjpeg", "+ee", "+sr"),
    JPEGLossless: ("dcmcjpeg", "+el", "+sv", "6"),
    JPEGLosslessSV1: ("dcmcjpeg", "+e1"),
}
LOSSY_METHODS = {
    JPEGBaseline8Bit: "ISO_10918_1",
    JPEGExtended12Bit: "ISO_10918_1",
    JPEGLSNearLossless: "ISO_14495_1",
    JPEG2000: "ISO_15444_1",
}
J2K_RATIO = 10  # JPEG 2000 (lossy) target compression ratio


def jpeg_ls_near(bits: int) -> int:
    """NEAR (largest error) of the JPEG-LS near-lossless encoding: 2 grey levels at 8 bits, scaled; CharLS
    takes at most 255."""
    return min(2 ** (bits - 7), 255)


GAMMA = 0.8  # exponent of the 'lut' VOI LUT: mild, yet enough that a reader ignoring the LUT is visibly off
LUT_BITS = 16
SINGLE_MM = (300.0, 240.0)  # canvas (height, width)
BILATERAL_MM = (350.0, 430.0)
FULL_LENGTH_MM = (1000.0, 430.0)  # a standing hip-to-ankle film: knees at mid height

ASCII_NAMES = ("DOE^JANE", "SMITH^JOHN", "MEYER^ANNA", "ROSSI^MARCO", "JANSEN^PIETER", "NOVAK^EVA")
NON_ASCII_NAMES = ("MÜLLER^JÜRGEN", "ÇELİK^AYŞE", "ØDEGÅRD^ÅSE", "DVOŘÁK^LUDĚK", "山田^太郎")
KNEE_CODE = ("72696002", "SCT", "Knee")


@dataclass(frozen=True)
class KneeTruth:
    laterality: Laterality
    grade: int
    center: tuple[float, float]  # (row, column) of the crop centre in the composite, pixels
    file: str  # the crop, relative to its split folder
    size_factor: float = 1.0  # the knee's size over the training crops' field (patient size, magnification)


@dataclass(frozen=True)
class Composite:
    dataset: Dataset  # complete, with file meta, Explicit VR Little Endian
    display: np.ndarray  # float32 (rows, columns) in 0..1, bright = dense: what a conforming viewer shows
    knees: tuple[KneeTruth, ...]


def bilateral_pairs(crops: CropSet) -> list[tuple[int, int]]:
    """(right, left) crop indices of every subject with both knees."""
    sides: dict[str, dict[Laterality, int]] = {}
    for index, file in enumerate(crops.files):
        sides.setdefault(Path(file).stem[:-1], {})[crop_laterality(file)] = index
    return [(s[Laterality.RIGHT], s[Laterality.LEFT]) for s in sides.values() if len(s) == 2]


# --- image ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Segment:
    """How a long bone continues from the crop edge: it narrows to its shaft and leans (femoral valgus)."""

    narrow: float  # shaft width / width at the crop edge
    taper_mm: float  # distance over which it narrows (to 1/e of the difference)
    widen: float  # soft-tissue half-width gain far from the knee (thigh > calf)
    lean: float  # lateral drift per mm of distance


FEMUR = _Segment(narrow=0.45, taper_mm=40.0, widen=0.35, lean=0.1)  # about 6 degrees of anatomical valgus
TIBIA = _Segment(narrow=0.5, taper_mm=45.0, widen=0.08, lean=0.0)
BLUR_MM = (0.3, 0.04)  # extension blur: sigma = a + b * distance
SIDE_FEATHER_MM = 6.0  # crop-to-model blend at the crop's sides (its ends meet the extension without one)
RELAX_MM = 40.0  # how far from the crop the soft tissue forgets the crop's side columns
MIRROR_MM = 6.0  # fade length of the crop texture mirrored beyond its top and bottom


@dataclass(frozen=True)
class _Leg:
    """One leg's soft-tissue model on its band of columns."""

    u: np.ndarray  # column positions in mm from the knee axis
    crop_cols: slice  # the crop's columns within the band
    lateral: int  # image direction of the knee's lateral side
    amplitude: float  # soft-tissue level on the axis
    half_width: float  # skin-to-axis distance at the knee, mm
    background: float
    spacing: float

    def tissue(self, distance: np.ndarray, gains: np.ndarray, segment: _Segment) -> np.ndarray:
        """Soft tissue of the rows at `distance` mm from the crop: a cylinder's thickness profile, widening away
        from the knee and scaled per side by `gains` (2, rows) so that it continues the crop's side columns."""
        width = self.half_width * (1 + segment.widen * (1 - np.exp(-distance / 80)))
        drift = self.lateral * segment.lean * distance
        thickness = np.sqrt(width[:, None] / self.half_width) * np.sqrt(
            np.clip(1 - ((self.u[None] - drift[:, None]) / width[:, None]) ** 2, 0, None))
        reach = self.u[self.crop_cols][-1]
        t = np.clip((self.u + reach) / (2 * reach), 0, 1)
        mix = t * t * (3 - 2 * t)
        gain = gains[0][:, None] + (gains[1] - gains[0])[:, None] * mix[None]
        return self.amplitude * thickness * gain


def _ramp(length: int, width: float) -> np.ndarray:
    """1 inside, smooth fall to 0 over `width` pixels at both ends."""
    position = np.arange(length, dtype=np.float32)
    t = np.clip((np.minimum(position, length - 1 - position) + 0.5) / max(width, 1.0), 0, 1)
    return t * t * (3 - 2 * t)


def _resample(crop: np.ndarray, size: int) -> np.ndarray:
    interpolation = cv2.INTER_AREA if size < crop.shape[0] else cv2.INTER_CUBIC
    resized = cv2.resize(crop.astype(np.float32) / 255, (size, size), interpolation=interpolation)
    return np.clip(resized, 0, 1)


def _extension(leg: _Leg, profile: np.ndarray, distance: np.ndarray, gains: np.ndarray, edge_gains: np.ndarray,
               segment: _Segment, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Rows at `distance` mm beyond one crop edge: (soft tissue, bone).  The bone is the excess of the crop's
    mean edge row `profile` over the soft tissue there (`edge_gains`), narrowing, leaning and blurring with
    distance."""
    spacing = leg.spacing
    edge_tissue = leg.tissue(np.zeros(1, np.float32), edge_gains[:, None], segment)[0, leg.crop_cols]
    bone = np.zeros(leg.u.size, np.float32)
    bone[leg.crop_cols] = (profile - leg.background - edge_tissue) * _ramp(profile.size, SIDE_FEATHER_MM / spacing)
    far = max(float(distance.max()), 1.0)
    # A stack of ever more blurred copies; remap interpolates between them, so blur grows smoothly.
    sigmas = (BLUR_MM[0] + BLUR_MM[1] * np.linspace(0, far, 8)) / spacing
    stack = np.stack([cv2.GaussianBlur(bone[None], (0, 0), sigmaX=s, sigmaY=0.1,
                                       borderType=cv2.BORDER_CONSTANT)[0] for s in sigmas])
    # Bell-shaped, so the outline leaves the crop without a kink.
    scale = segment.narrow + (1 - segment.narrow) * np.exp(-((distance / segment.taper_mm) ** 2))
    drift = leg.lateral * segment.lean * distance
    axis = float(np.searchsorted(leg.u, 0.0))
    map_x = (axis + (leg.u[None] - drift[:, None]) / scale[:, None] / spacing).astype(np.float32)
    map_y = np.repeat((distance / far * 7).astype(np.float32)[:, None], leg.u.size, axis=1)
    shaft = cv2.remap(stack, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    # Slow density changes along the bone, so the extension is not a perfect extrusion of one row.
    wobble = cv2.GaussianBlur(rng.standard_normal((distance.size, 1), dtype=np.float32), (0, 0),
                              sigmaX=0.1, sigmaY=15 / spacing)
    wobble *= 0.05 / max(float(wobble.std()), 1e-6) * (1 - np.exp(-distance / 10))[:, None]  # none at the seam
    fade = 1 - 0.2 * (1 - np.exp(-distance / 60))
    return leg.tissue(distance, gains, segment), shaft * (fade[:, None] + wobble)


def _side_gains(ratio: np.ndarray, top: int, rows: int, spacing: float) -> np.ndarray:
    """(2, rows) soft-tissue gain left and right: the crop's side level over the model's (`ratio`, per crop row)
    in the crop's rows, smoothed, relaxing to 1 (the model's own level) away from them."""
    measured = np.clip(cv2.GaussianBlur(ratio, (0, 0), sigmaX=6 / spacing, sigmaY=0.1,
                                        borderType=cv2.BORDER_REPLICATE), 0.25, 4.0)
    size = ratio.shape[1]
    position = np.arange(rows)
    inside = np.clip(position - top, 0, size - 1)
    beyond = np.maximum(np.maximum(top - position, position - (top + size - 1)), 0) * spacing
    relax = np.exp(-beyond / RELAX_MM)
    return 1 + (measured[:, inside] - 1) * relax[None]


def _side_tissue(crop: np.ndarray, edge: int) -> np.ndarray:
    """(2, rows) soft-tissue level in the crop's outer `edge` columns, left and right: their darker part, since
    a condyle may reach the crop's side."""
    smooth = cv2.GaussianBlur(crop, (0, 0), edge / 3)  # percentiles of the structure, not of the grain
    return np.stack([np.percentile(smooth[:, :edge], 35, axis=1), np.percentile(smooth[:, -edge:], 35, axis=1)])


def _grain(shape: tuple[int, int], pixel: float, strength: float, rng: np.random.Generator) -> np.ndarray:
    """Noise of the crop's grain (`pixel` canvas pixels per crop pixel), a little elongated along the bone."""
    noise = cv2.GaussianBlur(rng.standard_normal(shape, dtype=np.float32), (0, 0), sigmaX=0.5 * pixel,
                             sigmaY=1.0 * pixel)
    return noise * (strength / max(float(noise.std()), 1e-6))


def _add_leg(image: np.ndarray, crop: np.ndarray, pixel: float, top: int, left: int, side: Laterality,
             spacing: float, background: float, rng: np.random.Generator) -> None:
    """Draw one leg into `image` (in place): femur and tibia around the crop, the crop itself blended in.

    `pixel` is the size of one original crop pixel in canvas pixels (for the grain of the extension).
    """
    rows, columns = image.shape
    size = crop.shape[0]
    crop_half_mm = (size - 1) / 2 * spacing
    half_width = crop_half_mm + float(rng.uniform(5, 15))  # the skin lies a little outside the crop
    reach = round((1.4 * half_width + 30) / spacing)  # the widest thigh and its lean stay inside this band
    band = slice(max(0, left + size // 2 - reach), min(columns, left + size // 2 + reach))
    edge = max(2, round(3 / spacing))
    sides = _side_tissue(crop, edge) - background
    at_side = np.sqrt(1 - (crop_half_mm / half_width) ** 2)  # cylinder thickness at the crop's side, axis = 1
    amplitude = float(np.clip(np.median(sides) / at_side, 0.05, 0.6))
    leg = _Leg(u=((np.arange(band.start, band.stop) - left - (size - 1) / 2) * spacing).astype(np.float32),
               crop_cols=slice(left - band.start, left - band.start + size),
               lateral=-1 if side is Laterality.RIGHT else 1,  # the patient's right is on the image left
               amplitude=amplitude, half_width=half_width, background=background, spacing=spacing)
    gains = _side_gains(sides / (amplitude * at_side), top, rows, spacing)
    # The crop's fine texture, measured near its ends, continues into the extension.
    detail = crop - cv2.GaussianBlur(crop, (0, 0), pixel)
    strength = float(np.concatenate([detail[:edge * 4], detail[-edge * 4:]]).std())
    middle = top + size // 2
    above, below = np.arange(0, middle), np.arange(middle, rows)
    parts = (
        (above, np.maximum(top - above, 0) * spacing, top, crop[:edge].mean(0), FEMUR),
        (below, np.maximum(below - (top + size - 1), 0) * spacing, top + size - 1, crop[-edge:].mean(0), TIBIA),
    )
    level = max(float(crop.mean()), 0.1)
    for part_rows, distance, edge_row, profile, segment in parts:
        tissue, bone = _extension(leg, profile, distance.astype(np.float32), gains[:, part_rows],
                                  gains[:, edge_row], segment, rng)
        # Grain in proportion to the signal, as on the crops (their soft tissue is grainy too).
        weight = np.clip((bone + tissue) / level, 0, 1.5)
        grain = _grain(bone.shape, pixel, strength, rng) * weight
        image[part_rows[0]:part_rows[-1] + 1, band] += tissue + bone + grain
    # The crop's texture, mirrored across its top and bottom edges and fading out, hides the seam.
    reach_rows = min(round(3 * MIRROR_MM / spacing), size // 2, top, rows - top - size)
    side_ramp = _ramp(size, SIDE_FEATHER_MM / spacing)
    fade = np.exp(-np.arange(1, reach_rows + 1) * spacing / MIRROR_MM)[:, None] * side_ramp
    image[top - reach_rows:top, left:left + size] += (detail[:reach_rows] * fade)[::-1]
    image[top + size:top + size + reach_rows, left:left + size] += detail[::-1][:reach_rows] * fade
    window = image[top:top + size, left:left + size]
    window += side_ramp * (crop - window)


def _add_marker(image: np.ndarray, letter: str, on_left: bool, field: tuple[int, int, int, int], spacing: float,
                rng: np.random.Generator) -> None:
    """A lead letter (radiopaque: near white) inside the field, near its upper corner on the knee's outer side."""
    top, _, left, right = field
    font = cv2.FONT_HERSHEY_SIMPLEX
    thickness = max(1, round(1.5 / spacing))
    (_, unit_height), _ = cv2.getTextSize(letter, font, 1.0, 1)
    scale = 12 / spacing / unit_height  # letters about 12 mm tall
    (width, height), _ = cv2.getTextSize(letter, font, scale, thickness)
    margin = rng.uniform(8, 20) / spacing
    x = round(left + margin) if on_left else round(right - margin - width)
    y = round(top + margin + height)
    mask = np.zeros(image.shape, np.uint8)
    cv2.putText(mask, letter, (x, y), font, scale, 255, thickness, cv2.LINE_AA)
    alpha = mask.astype(np.float32) / 255
    image += alpha * (rng.uniform(0.93, 0.99) - image)


def _field(shape: tuple[int, int], spacing: float, rng: np.random.Generator) -> tuple[int, int, int, int]:
    """The exposed field (top, bottom, left, right) inside a collimation border of random width per side."""
    top, bottom, left, right = (int(v) for v in (rng.uniform(3, 20, 4) / spacing).round())
    return top, shape[0] - bottom, left, shape[1] - right


def _collimate(image: np.ndarray, field: tuple[int, int, int, int], spacing: float,
               rng: np.random.Generator) -> None:
    """Unexposed (bright) outside the field, with a soft penumbra at its edges."""
    penumbra = 0.6 / spacing

    def inside(length: int, start: int, stop: int) -> np.ndarray:
        position = np.arange(length, dtype=np.float32)
        return np.clip(np.minimum(position - start, stop - position) / penumbra + 0.5, 0, 1)

    top, bottom, left, right = field
    exposed = inside(image.shape[0], top, bottom)[:, None] * inside(image.shape[1], left, right)[None]
    image += (1 - exposed) * (rng.uniform(0.86, 0.97) - image)


def _picture(crops: Sequence[np.ndarray], pixels: Sequence[float], sides: Sequence[Laterality],
             shape: tuple[int, int], corners: Sequence[tuple[int, int]], spacing: float,
             rng: np.random.Generator) -> np.ndarray:
    """The display image (0..1, bright = dense) of a radiograph holding these crops at these top-left corners
    (`pixels`: canvas pixels per original crop pixel, per crop)."""
    background = float(rng.uniform(0.02, 0.06))  # direct exposure: almost black
    image = np.full(shape, background, np.float32)
    for crop, pixel, side, (top, left) in zip(crops, pixels, sides, corners, strict=True):
        _add_leg(image, crop, pixel, top, left, side, spacing, background, rng)
    field = _field(shape, spacing, rng)
    for side in sides:
        _add_marker(image, side.value, side is Laterality.RIGHT, field, spacing, rng)
    _collimate(image, field, spacing, rng)
    image += rng.standard_normal(shape, dtype=np.float32) * np.float32(rng.uniform(0.004, 0.01))
    return np.clip(image, 0, 1, out=image)


# --- what other sites' films add: implants, burned-in text and rulers, other display curves -----------------------

METAL_LEVEL = 1.0  # metal stops nearly all X-rays: the top of the stored range, flat, with sharp edges


def _draw_metal(image: np.ndarray, kind: Metal, knee: KneeTruth, field: float, spacing: float,
                rng: np.random.Generator) -> None:
    """An implant over the knee joint (in place), in the knee's own scale (`field`: its crop's side, pixels):
    `knee.center` is its crop centre, and the mean knee's joint line lies 4 % of the field below it."""
    mask = np.zeros(image.shape, np.uint8)
    row, col = knee.center
    joint = row + 0.04 * field
    mm = 1 / spacing
    medial = 1 if knee.laterality is Laterality.RIGHT else -1  # image direction of the medial side

    def box(top: float, bottom: float, left: float, right: float) -> None:
        cv2.rectangle(mask, (round(left), round(top)), (round(right), round(bottom)), 255, cv2.FILLED)

    def femoral(half_width: float, centre: float) -> None:
        # The condylar shell: a thick half-ellipse ring under the femur, open at the top, with an anterior flange.
        axes = (round(half_width), round(0.16 * field))
        thickness = round(rng.uniform(5, 8) * mm)
        cv2.ellipse(mask, (round(centre), round(joint - 0.16 * field)), axes, 0, 0, 180, 255, thickness)
        box(joint - 0.34 * field, joint - 0.16 * field, centre - 0.6 * half_width, centre + 0.6 * half_width)

    def tibial(half_width: float, centre: float, stem: bool) -> None:
        top = joint + rng.uniform(3, 6) * mm
        box(top, top + rng.uniform(3, 5) * mm, centre - half_width, centre + half_width)
        if stem:
            box(top, top + 0.45 * field, centre - 6 * mm, centre + 6 * mm)

    if kind == "knee-replacement":
        femoral(0.38 * field, col)
        tibial(0.36 * field, col, stem=True)
    elif kind == "unicompartmental":
        centre = col + medial * 0.2 * field
        femoral(0.15 * field, centre)
        tibial(0.16 * field, centre, stem=False)
    elif kind == "plate-and-screws":
        lateral_edge = col - medial * 0.36 * field
        box(joint + 4 * mm, joint + 0.6 * field, lateral_edge - 6 * mm, lateral_edge + 6 * mm)
        for depth in np.linspace(8, 0.45 * field / mm, 4):
            tip = col + medial * rng.uniform(0.15, 0.3) * field
            box(joint + depth * mm - 2.5 * mm, joint + depth * mm + 2.5 * mm, min(lateral_edge, tip),
                max(lateral_edge, tip))
    else:  # two cannulated screws under the plateau, across the joint's width
        for depth in (rng.uniform(6, 10), rng.uniform(16, 22)):
            box(joint + (depth - 3.2) * mm, joint + (depth + 3.2) * mm, col - 0.3 * field, col + 0.3 * field)
    edge = cv2.GaussianBlur(mask.astype(np.float32) / 255, (0, 0), 0.15 * mm)  # the detector's own blur only
    image += edge * (METAL_LEVEL - image)


def _burn_in(image: np.ndarray, spacing: float, columns_mm: Sequence[float], rng: np.random.Generator) -> None:
    """White text in the top corners and a ruler (ticks every 10 mm) down each of `columns_mm`, in place."""
    font, mm = cv2.FONT_HERSHEY_SIMPLEX, 1 / spacing
    scale = 5 * mm / cv2.getTextSize("A", font, 1.0, 1)[0][1]  # letters 5 mm tall
    thickness = max(1, round(0.6 * mm))
    mask = np.zeros(image.shape, np.uint8)
    for index, text in enumerate(("STANDING", f"KV {rng.integers(60, 80)}  MAS {rng.integers(5, 20)}",
                                  "KNEE-NODE SYNTHETIC SITE")):
        y = round((12 + 9 * index) * mm)
        cv2.putText(mask, text, (round(10 * mm), y), font, scale, 255, thickness, cv2.LINE_AA)
    alpha = mask.astype(np.float32) / 255
    image += alpha * (1.0 - image)
    for column in columns_mm:
        x = round(column * mm)
        image[:, x:x + round(4 * mm)] = 0.9
        for tick in range(0, int(image.shape[0] * spacing), 10):
            length = 8 if tick % 50 == 0 else 4
            image[round(tick * mm):round(tick * mm) + max(1, round(0.5 * mm)), x:x + round(length * mm)] = 1.0


def _tone(image: np.ndarray, tone: Tone) -> np.ndarray:
    if tone == "bright":
        return image ** 0.7
    if tone == "dark":
        return image ** 1.4
    if tone == "s-curve":
        return 1 / (1 + np.exp(-8 * (image - 0.5)))
    return image


# --- encoding of the display image ------------------------------------------------------------------------------


def _rescale(modality: Modality, bits: int) -> tuple[int, int]:
    """(slope, intercept). DX requires the identity; CR gets a real one, so readers must apply it.  The slope
    stays 1 at 16 bits so the Modality LUT output still fits a 65536-entry VOI LUT."""
    if modality == "DX":
        return 1, 0
    return (2 if bits < 16 else 1), 100


def _voi_lut(bits: int, slope: int) -> np.ndarray:
    """VOI LUT over the whole Modality LUT output range: a mild gamma curve to LUT_BITS bits."""
    entries = (2**bits - 1) * slope + 1
    position = np.arange(entries, dtype=np.float64) / (entries - 1)
    return np.rint(position**GAMMA * (2**LUT_BITS - 1)).astype(np.uint16)


def _stored(image: np.ndarray, bits: int, photometric: Photometric, voi: Voi) -> np.ndarray:
    """Stored values whose display (see _display) is closest to `image`."""
    level = image if photometric == "MONOCHROME2" else 1 - image
    if voi == "lut":
        level = level ** (1 / GAMMA)
    return np.rint(level * (2**bits - 1)).astype(np.uint8 if bits == 8 else np.uint16)


def _display(stored: np.ndarray, bits: int, photometric: Photometric, voi: Voi, slope: int) -> np.ndarray:
    """What a conforming viewer shows, 0..1: the window maps the Modality LUT output range exactly onto 0..1
    (and 'none' is taken to mean that same range), the LUT is looked up, MONOCHROME1 inverted."""
    if voi == "lut":
        level = _voi_lut(bits, slope)[stored.astype(np.int64) * slope].astype(np.float32) / (2**LUT_BITS - 1)
    else:
        level = stored.astype(np.float32) / (2**bits - 1)
    return level if photometric == "MONOCHROME2" else 1 - level


# --- header -----------------------------------------------------------------------------------------------------


def _uid(rng: np.random.Generator) -> UID:
    """A fresh UID that the same seed reproduces."""
    return generate_uid(entropy_srcs=[str(rng.integers(2**63))])


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, scheme, meaning
    return item


def _identify(ds: Dataset, rng: np.random.Generator, non_ascii_name: bool) -> None:
    """Patient, study and timing attributes of a plausible outpatient knee examination."""
    names = NON_ASCII_NAMES if non_ascii_name else ASCII_NAMES
    if non_ascii_name:
        ds.SpecificCharacterSet = "ISO_IR 192"
    study = datetime.datetime(2015, 1, 1, 7) + datetime.timedelta(days=int(rng.integers(3650)),
                                                                  seconds=int(rng.integers(11 * 3600)))
    birth = study.date() - datetime.timedelta(days=int(rng.integers(45 * 365, 85 * 365)))
    age = study.year - birth.year - ((study.month, study.day) < (birth.month, birth.day))
    day, time = study.strftime("%Y%m%d"), study.strftime("%H%M%S")
    ds.PatientName = names[int(rng.integers(len(names)))]
    ds.PatientID = f"KN{rng.integers(10**7):07d}"
    ds.PatientBirthDate = birth.strftime("%Y%m%d")
    ds.PatientSex = "F" if rng.random() < 0.6 else "M"  # knee OA is commoner in women
    ds.PatientAge = f"{age:03d}Y"
    ds.StudyInstanceUID = _uid(rng)
    ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = ds.InstanceCreationDate = day
    ds.StudyTime = ds.SeriesTime = ds.AcquisitionTime = ds.ContentTime = ds.InstanceCreationTime = time
    ds.AccessionNumber = f"A{rng.integers(10**8):08d}"
    ds.ReferringPhysicianName = "REFERRER^ANNA"
    ds.StudyID = f"{rng.integers(1, 10**5)}"
    ds.StudyDescription = "XR KNEE"


def _describe(ds: Dataset, rng: np.random.Generator, modality: Modality, view: View,
              sides: Sequence[Laterality]) -> None:
    """Series, equipment and image attributes; acquisition values typical of a standing knee radiograph."""
    bilateral = len(sides) == 2
    ds.SOPClassUID = DX_STORAGE if modality == "DX" else CR_STORAGE
    ds.SOPInstanceUID = _uid(rng)
    ds.Modality = modality
    ds.SeriesInstanceUID = _uid(rng)
    ds.SeriesNumber = int(rng.integers(1, 20))
    ds.SeriesDescription = "Knees bilateral PA" if bilateral else "Knee PA"
    ds.Manufacturer = "SYNTHETIC"  # never "knee-node": the node skips its own outputs by Manufacturer
    ds.ManufacturerModelName = "knee-node synthetic"
    ds.DeviceSerialNumber = f"{rng.integers(10**6):06d}"
    ds.SoftwareVersions = "1"
    ds.InstitutionName = "Synthetic Knee Clinic"
    ds.StationName = "XR1"
    ds.InstanceNumber = 1
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.PatientOrientation = ["L", "F"]  # columns run to the patient's left, rows to the feet
    ds.BodyPartExamined = "KNEE"
    ds.ViewPosition = view
    ds.ImageLaterality = "B" if bilateral else sides[0].value  # so series Laterality stays absent
    ds.AnatomicRegionSequence = [_code(*KNEE_CODE)]
    ds.KVP = int(rng.integers(60, 71))
    ds.DistanceSourceToDetector = 1150
    ds.ExposureTime = int(rng.integers(10, 40))
    ds.XRayTubeCurrent = int(rng.integers(200, 400))
    ds.BurnedInAnnotation = "NO"
    ds.LossyImageCompression = "00"
    if modality == "DX":
        ds.PresentationIntentType = "FOR PRESENTATION"
        ds.DetectorType = "SCINTILLATOR"
        ds.PositionerType = "COLUMN"  # a wall stand, as for standing knees
        ds.AcquisitionContextSequence = []


def _pixels(ds: Dataset, stored: np.ndarray, bits: Bits, photometric: Photometric, modality: Modality,
            voi: Voi, rescale: tuple[int, int]) -> None:
    """Image Pixel, Modality LUT and VOI LUT attributes for `stored`."""
    slope, intercept = rescale
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.Rows, ds.Columns = stored.shape
    ds.BitsAllocated = 8 if bits == 8 else 16
    ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 0
    ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType = slope, intercept, "US"
    if modality == "DX":
        ds.PixelIntensityRelationship = "LOG"
        # +1: lower values mean less X-ray intensity, i.e. denser (MONOCHROME1 shows them bright).
        ds.PixelIntensityRelationshipSign = 1 if photometric == "MONOCHROME1" else -1
        ds.PresentationLUTShape = "INVERSE" if photometric == "MONOCHROME1" else "IDENTITY"
    low, high = intercept, (2**bits - 1) * slope + intercept  # Modality LUT output range
    if voi == "window":
        ds.WindowCenter = (low + high) / 2 + 0.5
        ds.WindowWidth = high - low + 1
    elif voi == "lut":
        lut = _voi_lut(bits, slope)
        item = Dataset()
        # 65536 entries are written as 0 (PS3.3 C.11.2.1.1); US/OW chosen explicitly, both VRs are ambiguous.
        item.add_new(0x00283002, "US", [lut.size % 65536, low, LUT_BITS])  # LUT Descriptor
        item.LUTExplanation = f"GAMMA {GAMMA}"
        item.add_new(0x00283006, "OW", lut.astype("<u2").tobytes())  # LUT Data
        ds.VOILUTSequence = [item]
    ds.add_new(0x7FE00010, "OB" if bits == 8 else "OW", stored.tobytes())


def _even(length_mm: float, spacing: float) -> int:
    return 2 * round(length_mm / spacing / 2)  # even sizes keep 8-bit pixel data free of padding


def compose(crops: CropSet, indices: Sequence[int], rng: np.random.Generator, *, spacing_mm: float = 0.15,
            field_mm: float = KNEE_KL_FIELD_MM, bits: Bits = 12, photometric: Photometric = "MONOCHROME2",
            modality: Modality = "DX", voi: Voi = "window", spacing_tag: SpacingTag = "imager",
            view: View = "PA", non_ascii_name: bool = False, size_factors: Sequence[float] | None = None,
            full_length: bool = False, metal: Metal | None = None, burned_in: bool = False,
            tone: Tone = "linear") -> Composite:
    """A radiograph of one knee (one index) or of a subject's both knees standing (its R and L crop indices).

    The crop covers `field_mm` times its knee's size factor (default 1) and is resampled to that over
    `spacing_mm` pixels.  `voi` 'window' maps the Modality LUT output range exactly onto the display range, 'lut'
    is a gamma VOI LUT, 'none' leaves the reader to choose.  `view` only sets View Position (a lateral view keeps
    the same picture).  Other sites' films: `full_length` (a hip-to-ankle canvas), `metal` (an implant over every
    knee), `burned_in` (text and a ruler), `tone` (another display curve).
    """
    for name, value, kind in (("bits", bits, Bits), ("photometric", photometric, Photometric),
                              ("modality", modality, Modality), ("voi", voi, Voi),
                              ("spacing_tag", spacing_tag, SpacingTag), ("view", view, View)):
        if value not in get_args(kind):
            raise ValueError(f"{name} must be one of {', '.join(map(str, get_args(kind)))}, not {value!r}")
    if metal is not None and metal not in get_args(Metal):
        raise ValueError(f"metal must be one of {', '.join(get_args(Metal))}, not {metal!r}")
    if tone not in get_args(Tone):
        raise ValueError(f"tone must be one of {', '.join(get_args(Tone))}, not {tone!r}")
    if not (spacing_mm > 0 and field_mm > 0):
        raise ValueError(f"spacing_mm and field_mm must be positive, not {spacing_mm} and {field_mm}")
    factors = tuple(size_factors or [1.0] * len(indices))
    if len(factors) != len(indices) or not all(0.5 <= f <= 2 for f in factors):
        raise ValueError(f"size_factors: one per knee within 0.5..2, not {factors}")
    sides = [crop_laterality(crops.files[i]) for i in indices]
    if len(indices) == 2:
        subjects = {Path(crops.files[i]).stem[:-1] for i in indices}
        if len(subjects) != 1 or set(sides) != set(Laterality):
            names = ", ".join(crops.files[i] for i in indices)
            raise ValueError(f"bilateral needs one subject's R and L crops, not {names}")
        if sides[0] is Laterality.LEFT:
            indices, sides, factors = indices[::-1], sides[::-1], factors[::-1]
    elif len(indices) != 1:
        raise ValueError(f"compose takes one crop or a subject's two, not {len(indices)}")
    height_mm, width_mm = FULL_LENGTH_MM if full_length else BILATERAL_MM if len(indices) == 2 else SINGLE_MM
    shape = (_even(height_mm, spacing_mm), _even(width_mm, spacing_mm))
    sizes = [round(field_mm * factor / spacing_mm) for factor in factors]
    row = height_mm / 2 + rng.uniform(-10, 10)
    if len(indices) == 2:
        # Standing PA: the right knee on the image left, knee centres 180-220 mm apart.
        middle, apart = width_mm / 2 + rng.uniform(-8, 8), rng.uniform(180, 220)
        centres = [(row + rng.uniform(-4, 4), middle + offset) for offset in (-apart / 2, apart / 2)]
    else:
        centres = [(row, width_mm / 2 + rng.uniform(-10, 10))]
    corners = [(round(r / spacing_mm - (size - 1) / 2), round(c / spacing_mm - (size - 1) / 2))
               for (r, c), size in zip(centres, sizes, strict=True)]
    if any(top < 0 or left < 0 or top + size > shape[0] or left + size > shape[1]
           for (top, left), size in zip(corners, sizes, strict=True)):
        raise ValueError(f"a {field_mm} mm crop does not fit the {height_mm:.0f} x {width_mm:.0f} mm canvas")
    resized = [_resample(crops.images[i], size) for i, size in zip(indices, sizes, strict=True)]
    image = _picture(resized, [size / crops.images.shape[1] for size in sizes], sides, shape, corners, spacing_mm,
                     rng)
    knees = tuple(
        KneeTruth(side, int(crops.grades[i]), (top + (size - 1) / 2, left + (size - 1) / 2), crops.files[i], factor)
        for i, side, (top, left), size, factor in zip(indices, sides, corners, sizes, factors, strict=True))
    if metal is not None:
        for knee, size in zip(knees, sizes, strict=True):
            _draw_metal(image, metal, knee, size, spacing_mm, rng)
    if burned_in:
        # A ruler beside the leg(s): at the side of a single knee, between the legs of a bilateral film.
        column = width_mm / 2 if len(indices) == 2 else width_mm - 25.0
        _burn_in(image, spacing_mm, [column], rng)
    image = _tone(np.clip(image, 0, 1), tone).astype(np.float32)

    rescale = _rescale(modality, bits)
    stored = _stored(image, bits, photometric, voi)
    ds = Dataset()
    _identify(ds, rng, non_ascii_name)
    _describe(ds, rng, modality, view, sides)
    _pixels(ds, stored, bits, photometric, modality, voi, rescale)
    if spacing_tag == "imager":
        ds.ImagerPixelSpacing = [spacing_mm, spacing_mm]
    elif spacing_tag == "pixel":
        ds.PixelSpacing = [spacing_mm, spacing_mm]
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    if burned_in:
        ds.BurnedInAnnotation = "YES"
    return Composite(ds, _display(stored, bits, photometric, voi, rescale[0]), knees)


# --- transfer syntaxes ------------------------------------------------------------------------------------------


def _check_syntax(syntax: UID) -> None:
    if syntax not in SYNTAXES:
        raise ValueError(f"unsupported transfer syntax {syntax} ({syntax.name or 'unknown'})")
    if syntax in DCMTK_COMMANDS and shutil.which(DCMTK_COMMANDS[syntax][0]) is None:
        raise ValueError(f"{syntax.name} needs DCMTK's {DCMTK_COMMANDS[syntax][0]}, which is not installed")


def _dcmtk(dataset: Dataset, command: Sequence[str]) -> Dataset:
    """A copy of `dataset` with pixel data encoded by a DCMTK command."""
    with tempfile.TemporaryDirectory() as folder:
        source, target = Path(folder) / "in.dcm", Path(folder) / "out.dcm"
        dcmwrite(source, dataset, enforce_file_format=True)
        done = subprocess.run([*command, str(source), str(target)], capture_output=True, text=True, check=False)
        if done.returncode != 0:
            reason = (done.stderr.strip().splitlines() or ["no message"])[-1]
            raise ValueError(f"{command[0]} failed ({done.returncode}): {reason}")
        encoded = pydicom.dcmread(target)
    described = ("Rows", "Columns", "BitsStored", "PhotometricInterpretation")
    if any(encoded.get(k) != dataset.get(k) for k in described):
        raise ValueError(f"{command[0]} changed the image description ({', '.join(described)})")
    result = copy.deepcopy(dataset)
    result.PixelData = encoded.PixelData
    if encoded.file_meta.TransferSyntaxUID.is_encapsulated:
        result["PixelData"].VR, result["PixelData"].is_undefined_length = "OB", True
    result.file_meta.TransferSyntaxUID = encoded.file_meta.TransferSyntaxUID
    return result


def encode(dataset: Dataset, transfer_syntax_uid: str) -> Dataset:
    """A copy of uncompressed `dataset` in another transfer syntax (one of SYNTAXES); ValueError when impossible.

    Only the pixel data encoding changes, and for lossy syntaxes Lossy Image Compression (ratio, method).
    """
    syntax = UID(transfer_syntax_uid)
    if dataset.file_meta.TransferSyntaxUID.is_compressed:
        raise ValueError("encode takes an uncompressed dataset")
    _check_syntax(syntax)
    bits = int(dataset.BitsStored)
    if bits not in SYNTAX_BITS[syntax]:
        raise ValueError(f"{syntax.name} cannot carry {bits}-bit pixels")
    if syntax in DCMTK_COMMANDS:
        result = _dcmtk(dataset, DCMTK_COMMANDS[syntax])
    else:
        result = copy.deepcopy(dataset)
        if syntax.is_compressed:
            # pydicom creates a new SOP Instance UID by default; ours must stay (they are part of the truth).
            result.compress(syntax, generate_instance_uid=False, jls_error=jpeg_ls_near(bits),
                            j2k_cr=[J2K_RATIO] if syntax == JPEG2000 else None)
        else:
            result.file_meta.TransferSyntaxUID = syntax
    if syntax in LOSSY_SYNTAXES:
        result.LossyImageCompression = "01"
        result.LossyImageCompressionRatio = f"{len(dataset.PixelData) / len(result.PixelData):.2f}"
        result.LossyImageCompressionMethod = LOSSY_METHODS[syntax]
    return result


# Attributes the CR and DX IODs make Type 2 (present, maybe empty) that the composites carry: what an anonymiser or
# a minimal modality may leave out.
TYPE_2_KEYWORDS = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
                   "AccessionNumber", "ReferringPhysicianName", "StudyID", "SeriesNumber", "InstanceNumber",
                   "PatientOrientation")


def minimal_header(dataset: Dataset) -> Dataset:
    """A copy of `dataset` without any of TYPE_2_KEYWORDS: only what the IODs require to be there."""
    stripped = copy.deepcopy(dataset)
    for keyword in TYPE_2_KEYWORDS:
        stripped.pop(keyword, None)
    return stripped


# --- a folder of test radiographs -------------------------------------------------------------------------------


def write_composites(data_dir: Path, out_dir: Path, count: int, *, bilateral_fraction: float = 0.5,
                     syntaxes: Sequence[str] = SYNTAXES, seed: int = 0, spacing_mm: float = 0.15) -> list[dict]:
    """Write `count` composites from the crops in `data_dir` (a knee-kl split) as out_dir/NNNN.dcm, plus
    truth.json; returns its records.  Syntaxes cycle; encodings cycle through every combination of modality,
    photometric, VOI and spacing attribute (in a seeded order); bit depths are drawn among those the syntax takes.
    """
    if count < 1 or not syntaxes or not 0 <= bilateral_fraction <= 1:
        raise ValueError("count must be positive, syntaxes not empty, bilateral_fraction within 0..1")
    for syntax in syntaxes:
        _check_syntax(UID(syntax))
    crops = load_crops(data_dir)
    pairs = bilateral_pairs(crops)
    rng = np.random.default_rng(seed)
    combinations = list(product(*map(get_args, (Modality, Photometric, Voi, SpacingTag))))
    order = rng.permutation(len(combinations))
    out_dir.mkdir(parents=True, exist_ok=True)
    records = []
    for number in range(count):
        syntax = UID(syntaxes[number % len(syntaxes)])
        modality, photometric, voi, spacing_tag = combinations[order[number % len(combinations)]]
        bits = SYNTAX_BITS[syntax][int(rng.integers(len(SYNTAX_BITS[syntax])))]
        bilateral = bool(pairs) and rng.random() < bilateral_fraction
        indices = pairs[int(rng.integers(len(pairs)))] if bilateral else (int(rng.integers(len(crops.files))),)
        composite = compose(crops, indices, rng, spacing_mm=spacing_mm, bits=bits, photometric=photometric,
                            modality=modality, voi=voi, spacing_tag=spacing_tag,
                            non_ascii_name=rng.random() < 0.2)
        name = f"{number + 1:04d}.dcm"
        dcmwrite(out_dir / name, encode(composite.dataset, syntax), enforce_file_format=True)
        records.append({
            "file": name, "syntax": str(syntax), "bits": bits, "photometric": photometric, "modality": modality,
            "voi": voi, "spacing_tag": spacing_tag, "spacing_mm": spacing_mm,
            "knees": [{"laterality": k.laterality.value, "grade": k.grade, "center_row": k.center[0],
                       "center_col": k.center[1], "crop": k.file} for k in composite.knees],
        })
    (out_dir / "truth.json").write_text(json.dumps(records, indent=2) + "\n")
    return records


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.synthetic", description="knee radiographs (DICOM) from "
                                     "knee-kl crops, with truth.json")
    parser.add_argument("--data", type=Path, required=True, help="a knee-kl split folder, e.g. .../knee-kl/val")
    parser.add_argument("--out", type=Path, required=True, help="folder for NNNN.dcm and truth.json")
    parser.add_argument("-n", "--count", type=int, default=20)
    parser.add_argument("--bilateral-fraction", type=float, default=0.5)
    parser.add_argument("--syntax", action="append", metavar="UID", help="transfer syntax (repeatable; default: all)")
    parser.add_argument("--spacing-mm", type=float, default=0.15, help="pixel spacing of the radiographs")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        records = write_composites(args.data, args.out, args.count, bilateral_fraction=args.bilateral_fraction,
                                   syntaxes=args.syntax or [str(s) for s in SYNTAXES], seed=args.seed,
                                   spacing_mm=args.spacing_mm)
    except (OSError, ValueError) as error:
        print(f"synthetic: {error}", file=sys.stderr)
        return 1
    knees = sum(len(record["knees"]) for record in records)
    print(f"wrote {len(records)} radiographs ({knees} knees) and truth.json to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
