"""Decode a radiograph once and bring it to display space: Modality LUT, VOI LUT or window, MONOCHROME1 inverted.

The result is what a viewer shows, scaled to 0..1 with dense (bone) bright, whatever the detector, bit depth,
photometric interpretation or transfer syntax.  Anything that is not a single-frame grayscale radiograph is
refused with a one-line reason.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pydicom
from pydicom import Dataset
from pydicom.pixels import apply_modality_lut, apply_voi
from pydicom.pixels.decoders import JPEG2000Decoder, JPEG2000LosslessDecoder

from node.domain import Radiograph
from node.instances import DecodeError, read

MIN_SIDE, MAX_SIDE = 64, 16384
PERCENTILE_WINDOW = (1.0, 99.0)  # used when the image carries no VOI

# JPEG 2000 through Pillow first: its OpenJPEG decodes on every core (OPJ_NUM_THREADS, set in node/__init__.py),
# pylibjpeg's on one.  Both are OpenJPEG, so the values are the same; pylibjpeg remains the fallback.
for _decoder in (JPEG2000LosslessDecoder, JPEG2000Decoder):
    _decoder.remove_plugin("pylibjpeg")
    _decoder.add_plugin("pylibjpeg", ("pydicom.pixels.decoders.pylibjpeg", "_decode_frame"))


def read_radiograph(source: str | Path | BinaryIO) -> Radiograph:
    return decode(read(source, stop_before_pixels=False))


def decode(dataset: Dataset) -> Radiograph:
    """Decode the pixel data of `dataset` (which loses it) into a display-space Radiograph."""
    try:
        check_radiograph(dataset)
        try:
            stored = dataset.pixel_array
        except Exception as error:
            syntax = dataset.file_meta.get("TransferSyntaxUID")
            name = syntax.name if syntax else "unknown transfer syntax"
            raise DecodeError(f"cannot decode pixel data ({name}): {error}") from None
        if stored.shape != (dataset.Rows, dataset.Columns):
            raise DecodeError(f"pixel data has shape {stored.shape}, expected ({dataset.Rows}, {dataset.Columns})")
        image = display_image(stored, dataset)
    except DecodeError:
        raise
    except Exception as error:  # malformed attribute values: an input error like any other, said in one line
        raise DecodeError(f"malformed image attributes ({type(error).__name__}: {error})") from None
    del dataset.PixelData
    return Radiograph(header=dataset, image=image, spacing_mm=pixel_spacing(dataset))


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
