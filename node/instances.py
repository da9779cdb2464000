"""Reading DICOM instances without their pixels, and the transfer syntaxes the node accepts.

The receiver, the senders and the selection rules need only headers; `node.analysis.decode` reads the pixels of
exactly the syntaxes listed here.  Whatever cannot be read is a DecodeError with a one-line reason.
"""

from __future__ import annotations

from pathlib import Path
from typing import BinaryIO

import pydicom
from pydicom import Dataset
from pydicom.uid import (
    JPEG2000,
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
)

# What the decoders installed with the node read (pydicom, pylibjpeg-libjpeg/openjpeg/rle, pyjpegls); the SCP
# accepts exactly these.
SUPPORTED_TRANSFER_SYNTAXES: tuple[UID, ...] = (
    ExplicitVRLittleEndian, ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian,
    JPEGBaseline8Bit, JPEGExtended12Bit, JPEGLossless, JPEGLosslessSV1, JPEGLSLossless, JPEGLSNearLossless,
    JPEG2000Lossless, JPEG2000, RLELossless,
)


class DecodeError(ValueError):
    """The input cannot become a radiograph; str() is a one-line reason for the user."""

    def __init__(self, reason: str) -> None:
        super().__init__(" ".join(reason.split()))  # decoders' messages can span lines


def read_header(source: str | Path | BinaryIO) -> Dataset:
    """Parse everything but the pixel data (cheap: for selection before any decode)."""
    return read(source, stop_before_pixels=True)


def read(source: str | Path | BinaryIO, stop_before_pixels: bool) -> Dataset:
    """A DICOM file, with or without file meta; anything else is a DecodeError."""
    try:
        dataset = pydicom.dcmread(source, stop_before_pixels=stop_before_pixels, force=True)
    except Exception as error:
        raise DecodeError(f"not a readable DICOM file ({type(error).__name__}: {error})") from None
    if "SOPClassUID" not in dataset:
        if not dataset.file_meta:
            raise DecodeError("not a DICOM file (neither file meta information nor a SOP Class UID)")
        raise DecodeError("no SOP Class UID: a truncated or malformed DICOM file")
    if "TransferSyntaxUID" not in dataset.file_meta:  # a bare dataset: the encoding it was read in says it
        implicit, little = dataset.original_encoding
        dataset.file_meta.TransferSyntaxUID = (ImplicitVRLittleEndian if implicit else
                                               ExplicitVRLittleEndian if little else ExplicitVRBigEndian)
    return dataset
