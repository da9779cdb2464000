"""Decode a radiograph once and bring it to display space: Modality LUT, VOI LUT or window, MONOCHROME1 inverted.

The result is what a viewer shows, scaled to 0..1 with dense (bone) bright, whatever the detector, bit depth,
photometric interpretation or transfer syntax.  Anything that is not a single-frame grayscale radiograph is
refused with a one-line reason.

Decoded at the resolution asked for: when the pixel spacing is known, the image is the source reduced by the
largest power of two whose pixels are still no larger than `resolution_mm` (Radiograph.step).  JPEG 2000 stops at
that resolution level of its wavelet (OpenJPEG's `reduce`, through Pillow: a quarter of the work per level);
every other syntax is decoded whole and its stored values averaged over step x step blocks, so that any syntax
gives the same image.
"""

from __future__ import annotations

import io
import math
import struct
from pathlib import Path
from typing import BinaryIO

import cv2
import numpy as np
import pydicom
from PIL import Image
from pydicom import Dataset
from pydicom.encaps import generate_frames
from pydicom.pixels import apply_modality_lut, apply_voi
from pydicom.pixels.decoders import JPEG2000Decoder, JPEG2000LosslessDecoder
from pydicom.uid import JPEG2000, JPEG2000Lossless

from node.domain import Radiograph
from node.instances import DecodeError, read

MIN_SIDE, MAX_SIDE = 64, 16384
MAX_STEP = 16  # reduction of the source at most (a 16384-pixel side to 1024)
PERCENTILE_WINDOW = (1.0, 99.0)  # used when the image carries no VOI

# JPEG 2000 through Pillow first: its OpenJPEG decodes on every core (OPJ_NUM_THREADS, set in node/__init__.py),
# pylibjpeg's on one.  Both are OpenJPEG, so the values are the same; pylibjpeg remains the fallback.
for _decoder in (JPEG2000LosslessDecoder, JPEG2000Decoder):
    _decoder.remove_plugin("pylibjpeg")
    _decoder.add_plugin("pylibjpeg", ("pydicom.pixels.decoders.pylibjpeg", "_decode_frame"))


def read_radiograph(source: str | Path | BinaryIO, resolution_mm: float | None = None) -> Radiograph:
    return decode(read(source, stop_before_pixels=False), resolution_mm)


def decode(dataset: Dataset, resolution_mm: float | None = None) -> Radiograph:
    """Decode the pixel data of `dataset` (which loses it) into a display-space Radiograph, at full resolution or
    reduced towards `resolution_mm` (the coarsest pixel size the caller can use)."""
    try:
        check_radiograph(dataset)
        spacing = pixel_spacing(dataset)
        step = reduction(spacing, resolution_mm)
        image = display_image(stored_values(dataset, step), dataset)
    except DecodeError:
        raise
    except Exception as error:  # malformed attribute values: an input error like any other, said in one line
        raise DecodeError(f"malformed image attributes ({type(error).__name__}: {error})") from None
    del dataset.PixelData
    return Radiograph(header=dataset, image=image, spacing_mm=spacing, step=step)


def reduction(spacing: tuple[float, float] | None, resolution_mm: float | None) -> int:
    """The largest power of two by which the source can be reduced with pixels no larger than `resolution_mm`;
    1 when either is unknown."""
    if spacing is None or resolution_mm is None:
        return 1
    step = 1
    while 2 * step * max(spacing) <= resolution_mm and step < MAX_STEP:
        step *= 2
    return step


def stored_values(dataset: Dataset, step: int) -> np.ndarray:
    """The stored values, reduced `step` times along each axis (shape: rows and columns / step, rounded up)."""
    rows, columns = int(dataset.Rows), int(dataset.Columns)
    shape = (-(-rows // step), -(-columns // step))
    syntax = dataset.file_meta.get("TransferSyntaxUID")
    try:
        reduced = jpeg2000_reduced(dataset, step) if step > 1 and syntax in (JPEG2000Lossless, JPEG2000) else None
        stored = dataset.pixel_array if reduced is None else reduced
    except Exception as error:
        name = syntax.name if syntax else "unknown transfer syntax"
        raise DecodeError(f"cannot decode pixel data ({name}): {error}") from None
    if reduced is not None:
        return downsample(reduced, shape)
    if stored.shape != (rows, columns):
        raise DecodeError(f"pixel data has shape {stored.shape}, expected ({rows}, {columns})")
    return downsample(stored, shape)


def jpeg2000_reduced(dataset: Dataset, step: int) -> np.ndarray | None:
    """The frame decoded at the resolution level nearest `step` (at most its decomposition levels), as stored
    values; None where this path does not apply (signed or multi-component data, no plain codestream, an image
    offset)."""
    frame = next(generate_frames(dataset.PixelData, number_of_frames=1))
    header = codestream_header(frame)
    if header is None or dataset.get("PixelRepresentation", 0) != 0:
        return None
    precision, signed, components, levels = header
    if signed or components != 1 or precision > 16:
        return None
    rows, columns = int(dataset.Rows), int(dataset.Columns)
    level = min(step.bit_length() - 1, levels)
    # Pillow (13.0) sizes a reduced image by rounding, OpenJPEG by rounding up, and the decode fails where the two
    # differ: the finest level where they agree (level 1 always does), the rest is averaged after.
    while level > 1 and any((n + 2 ** (level - 1)) // 2**level != -(-n // 2**level) for n in (rows, columns)):
        level -= 1
    image = Image.open(io.BytesIO(frame), formats=("JPEG2000",))
    image.reduce = level
    values = np.asarray(image)
    if values.shape != (-(-rows // 2**level), -(-columns // 2**level)):
        return None
    # Pillow widens the precision to its mode's (8 or 16 bits) by shifting left: undone here.
    return values >> (8 * values.itemsize - precision)


def codestream_header(frame: bytes) -> tuple[int, bool, int, int] | None:
    """(precision, signed, components, decomposition levels) from a JPEG 2000 codestream's SIZ and COD markers;
    None for anything else."""
    if frame[:4] != b"\xff\x4f\xff\x51":  # SOC, then SIZ
        return None
    components, ssiz = struct.unpack(">HB", frame[40:43])  # Csiz, and the first component's Ssiz
    position = 4 + struct.unpack(">H", frame[4:6])[0]
    while position + 10 <= len(frame):
        marker, length = struct.unpack(">HH", frame[position:position + 4])
        if marker == 0xFF52:  # COD: Lcod, Scod, SGcod (4 bytes), then the number of decomposition levels
            return (ssiz & 0x7F) + 1, bool(ssiz & 0x80), components, frame[position + 9]
        if marker == 0xFF90:  # SOT: the main header ended without COD
            return None
        position += 2 + length
    return None


def downsample(stored: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """`stored` averaged over blocks down to `shape`, in its own integer type."""
    if stored.shape == shape:
        return stored
    size = (shape[1], shape[0])
    if stored.dtype in (np.uint8, np.uint16, np.int16):
        return cv2.resize(stored, size, interpolation=cv2.INTER_AREA)
    return np.rint(cv2.resize(stored.astype(np.float64), size, interpolation=cv2.INTER_AREA)).astype(stored.dtype)


def check_radiograph(dataset: Dataset) -> None:
    """Raise DecodeError unless the header describes a single-frame grayscale image we can hold."""
    if "SOPClassUID" not in dataset or "PixelData" not in dataset:
        raise DecodeError("not an image: no SOP Class UID or no pixel data")
    photometric = str(dataset.get("PhotometricInterpretation", "")).strip()
    if int(dataset.get("SamplesPerPixel", 1) or 1) != 1 or photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise DecodeError(f"not grayscale (PhotometricInterpretation {photometric or 'missing'})")
    frames = int(dataset.get("NumberOfFrames", 1) or 1)
    if frames != 1:
        raise DecodeError(f"multi-frame image ({frames} frames); expected a single radiograph")
    rows, columns = int(dataset.get("Rows", 0) or 0), int(dataset.get("Columns", 0) or 0)
    if not (MIN_SIDE <= rows <= MAX_SIDE and MIN_SIDE <= columns <= MAX_SIDE):
        raise DecodeError(f"implausible image size {rows} x {columns}")


def display_image(stored: np.ndarray, dataset: Dataset) -> np.ndarray:
    """Stored values -> display space in 0..1 (float32), bright = dense."""
    if dataset.get("ModalityLUTSequence"):
        values = apply_modality_lut(stored, dataset).astype(np.float32)
    else:
        slope = dataset.get("RescaleSlope")
        slope = 1.0 if slope in (None, "") else float(slope)
        if slope == 0 or not math.isfinite(slope):
            raise DecodeError(f"invalid Rescale Slope {slope}")
        values = stored.astype(np.float32) * slope + float(dataset.get("RescaleIntercept") or 0)
    if dataset.get("VOILUTSequence"):
        bits = int(dataset.VOILUTSequence[0].LUTDescriptor[2])
        # apply_voi indexes its LUT with the (integer) Modality LUT output.
        image = apply_voi(np.rint(values).astype(np.int64), dataset).astype(np.float32) / (2**bits - 1)
    elif "WindowCenter" in dataset and "WindowWidth" in dataset:
        image = window(values, dataset)
    else:
        low, high = (float(v) for v in np.percentile(values[::4, ::4], PERCENTILE_WINDOW))
        image = (values - low) / max(high - low, 1e-6)
    image = np.clip(image, 0, 1).astype(np.float32, copy=False)
    if dataset.PhotometricInterpretation.strip() == "MONOCHROME1":
        np.subtract(1, image, out=image)
    if image.max() - image.min() < 1e-6:
        raise DecodeError("blank image: every pixel has the same display value")
    return image


def window(values: np.ndarray, dataset: Dataset) -> np.ndarray:
    """The first VOI window (PS3.3 C.11.2.1.2), LINEAR / LINEAR_EXACT / SIGMOID, scaled to 0..1."""
    try:
        center, width = (float(first(dataset[k].value)) for k in ("WindowCenter", "WindowWidth"))
    except (TypeError, ValueError, IndexError):
        raise DecodeError("unreadable VOI window (Window Center / Width)") from None
    function = str(dataset.get("VOILUTFunction", "LINEAR")).upper().strip() or "LINEAR"
    if not math.isfinite(center) or not math.isfinite(width) or width <= 0:
        raise DecodeError(f"invalid VOI window (centre {center}, width {width})")
    if function == "SIGMOID":
        return 1 / (1 + np.exp(-4 * (values - center) / width))
    if function == "LINEAR_EXACT":
        return (values - center) / width + 0.5
    if function != "LINEAR":
        raise DecodeError(f"unsupported VOI LUT Function {function}")
    return (values - (center - 0.5)) / max(width - 1, 1e-6) + 0.5


def pixel_spacing(dataset: Dataset) -> tuple[float, float] | None:
    """(row, column) spacing in mm at the patient; None when absent or not positive.

    PixelSpacing is already calibrated to the patient; ImagerPixelSpacing is at the detector, so it is divided by
    the estimated radiographic magnification when the modality states one.
    """
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        try:
            row, column = (float(v) for v in dataset.get(keyword) or ())
            magnification = 1.0
            if keyword == "ImagerPixelSpacing":
                magnification = float(dataset.get("EstimatedRadiographicMagnificationFactor") or 1)
        except (TypeError, ValueError):
            continue
        spacing = (row / magnification, column / magnification)
        if all(math.isfinite(v) and v > 0 for v in spacing):
            return spacing
    return None


def first(value: object) -> object:
    """The first value of a multi-valued element, or the value itself."""
    return value[0] if isinstance(value, pydicom.multival.MultiValue) else value
