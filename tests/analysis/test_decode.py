"""Decoding to display space: every supported transfer syntax, VOI, photometric; refusals with one-line reasons."""

from __future__ import annotations

import io
from pathlib import Path

import cv2
import numpy as np
import pydicom
import pytest
from pydicom import Dataset, dcmwrite
from pydicom.data import get_testdata_file
from pydicom.uid import JPEGBaseline8Bit

from node.analysis.decode import (
    decode,
    jpeg2000_reduced,
    pixel_spacing,
    read_radiograph,
    reduction,
    stored_values,
)
from node.instances import SUPPORTED_TRANSFER_SYNTAXES, DecodeError
from node.training.data import CropSet
from tools.synthetic import LOSSY_SYNTAXES, SYNTAX_BITS, SYNTAXES, Composite, compose, encode

SPACING = 0.35  # mm: small radiographs, fast tests


def as_received(dataset: Dataset) -> io.BytesIO:
    """The bytes a receiver would spool."""
    buffer = io.BytesIO()
    dcmwrite(buffer, dataset, enforce_file_format=True)
    buffer.seek(0)
    return buffer


@pytest.fixture(scope="module")
def knee(val_crops: CropSet) -> dict[int, Composite]:
    """One right knee at 8 and at 12 bits (JPEG baseline carries only 8)."""
    return {bits: compose(val_crops, [3], np.random.default_rng(7), spacing_mm=SPACING, bits=bits)
            for bits in (8, 12)}


def test_the_scp_accepts_exactly_what_is_tested_here() -> None:
    assert set(SUPPORTED_TRANSFER_SYNTAXES) == set(SYNTAXES)


@pytest.mark.parametrize("syntax", SYNTAXES, ids=lambda uid: uid.name)
def test_every_transfer_syntax_decodes_to_the_same_display_image(knee: dict[int, Composite], syntax: str) -> None:
    bits = 12 if 12 in SYNTAX_BITS[syntax] else 8
    radiograph = read_radiograph(as_received(encode(knee[bits].dataset, syntax)))
    error = np.abs(radiograph.image - knee[bits].display)
    if syntax in LOSSY_SYNTAXES:
        assert error.mean() < 0.01 and error.max() < 0.1
    else:
        assert error.max() < 1e-5
    assert radiograph.spacing_mm == pytest.approx((SPACING, SPACING))
    assert "PixelData" not in radiograph.header  # decoded once, then dropped


@pytest.mark.parametrize("modality", ["DX", "CR"])  # CR carries a non-identity rescale
@pytest.mark.parametrize("voi", ["window", "lut"])
def test_monochrome1_and_monochrome2_twins_give_the_same_display_image(val_crops: CropSet, modality: str,
                                                                      voi: str) -> None:
    twins = [compose(val_crops, [5], np.random.default_rng(1), spacing_mm=SPACING, bits=16, modality=modality,
                     voi=voi, photometric=photometric) for photometric in ("MONOCHROME1", "MONOCHROME2")]
    assert not np.array_equal(twins[0].dataset.pixel_array, twins[1].dataset.pixel_array)
    images = [read_radiograph(as_received(twin.dataset)).image for twin in twins]
    assert all(image.dtype == np.float32 for image in images)
    # The twins' stored values round differently by at most one grey level (of 65535), a few after a VOI LUT.
    np.testing.assert_allclose(images[0], images[1], atol=1e-4)
    np.testing.assert_allclose(images[0], twins[0].display, atol=1e-5)


def test_without_voi_a_robust_window_is_used(val_crops: CropSet) -> None:
    composite = compose(val_crops, [9], np.random.default_rng(2), spacing_mm=SPACING, voi="none")
    image = read_radiograph(as_received(composite.dataset)).image
    assert image.dtype == np.float32
    assert np.percentile(image, 0.5) == 0 and np.percentile(image, 99.5) == 1  # 1st-99th percentile stretched
    inside = (image > 0) & (image < 1)
    # Inside the window the mapping is linear in the stored values.
    assert np.corrcoef(image[inside], composite.display[inside])[0, 1] > 0.9999


def test_real_cr_in_monochrome1_and_jpeg2000() -> None:
    """WG04 RG1 (chest CR, MONOCHROME1, 15-bit): JPEG 2000 lossless decodes to the uncompressed display."""
    uncompressed = read_radiograph(get_testdata_file("RG1_UNCR.dcm", download=False))
    j2k = read_radiograph(get_testdata_file("RG1_J2KR.dcm", download=False))
    np.testing.assert_array_equal(uncompressed.image, j2k.image)
    assert uncompressed.spacing_mm is None  # its PixelSpacing is 0.000\\0.000: unknown, not zero
    # The lungs (little attenuation) are dark after MONOCHROME1 inversion, the mediastinum bright.
    rows, columns = uncompressed.image.shape
    lung = uncompressed.image[rows // 3, columns // 4]
    spine = uncompressed.image[rows // 3, columns // 2]
    assert lung < spine


@pytest.mark.parametrize("syntax", SYNTAXES, ids=lambda uid: uid.name)
def test_every_transfer_syntax_decodes_to_the_same_reduced_image(knee: dict[int, Composite], syntax: str) -> None:
    """Asked for pixels up to 2.5 times the source's, every syntax gives the display image averaged over 2 x 2
    blocks; JPEG 2000 its wavelet's next resolution level, whose low-pass filter is no plain average and is
    centred on the even pixels, half a pixel from the block's centre (a mean difference of about 1 %)."""
    bits = 12 if 12 in SYNTAX_BITS[syntax] else 8
    radiograph = read_radiograph(as_received(encode(knee[bits].dataset, syntax)), resolution_mm=2.5 * SPACING)
    display = knee[bits].display
    assert radiograph.step == 2
    assert radiograph.image.shape == (-(-display.shape[0] // 2), -(-display.shape[1] // 2))
    averaged = cv2.resize(display, radiograph.image.shape[::-1], interpolation=cv2.INTER_AREA)
    error = np.abs(radiograph.image - averaged)
    assert error.mean() < (0.02 if "2000" in syntax.name else 0.01 if syntax in LOSSY_SYNTAXES else 1e-3)
    assert radiograph.spacing_mm == pytest.approx((SPACING, SPACING))  # of the source's pixels, as positions are


@pytest.mark.parametrize(("spacing", "resolution", "step"), [
    ((0.15, 0.15), 0.5, 2), ((0.1, 0.1), 0.5, 4), ((0.1, 0.2), 0.5, 2), ((0.3, 0.3), 0.5, 1), ((0.15, 0.15), None, 1),
    (None, 0.5, 1), ((0.01, 0.01), 10.0, 16),
])
def test_reduction_is_the_largest_power_of_two_within_the_resolution(
        spacing: tuple[float, float] | None, resolution: float | None, step: int) -> None:
    assert reduction(spacing, resolution) == step


def test_real_jpeg2000_decodes_at_a_reduced_resolution_level() -> None:
    """WG04 RG1 (15-bit CR, 1955 x 1841, 5 decomposition levels): OpenJPEG stops a level early, and the result is
    the lossless image averaged over 2 x 2 blocks but for the wavelet's filter.  Reduced 4 times, its odd sizes
    take a level from OpenJPEG (see jpeg2000_reduced) and an average after; with a pixel spacing, decode does so."""
    j2k = pydicom.dcmread(get_testdata_file("RG1_J2KR.dcm", download=False))
    stored = pydicom.dcmread(get_testdata_file("RG1_UNCR.dcm", download=False)).pixel_array
    for step in (2, 4):
        reduced = stored_values(j2k, step)
        assert reduced.shape == (-(-stored.shape[0] // step), -(-stored.shape[1] // step))
        averaged = cv2.resize(stored, reduced.shape[::-1], interpolation=cv2.INTER_AREA)
        assert np.abs(reduced.astype(np.float32) - averaged).mean() < 0.005 * stored.max()
    level_1 = jpeg2000_reduced(j2k, 2)
    assert level_1 is not None and level_1.shape == (978, 921)
    j2k.PixelSpacing = [0.1, 0.1]
    radiograph = decode(j2k, resolution_mm=0.4)
    assert radiograph.step == 4 and radiograph.image.shape == (489, 461)


def header_only(**attributes: object) -> Dataset:
    dataset = Dataset()
    dataset.SOPClassUID = "1.2.840.10008.5.1.4.1.1.1"
    for keyword, value in attributes.items():
        setattr(dataset, keyword, value)
    return dataset


@pytest.mark.parametrize(("name", "reason"), [
    ("SC_rgb.dcm", "not grayscale (PhotometricInterpretation RGB)"),
    ("emri_small.dcm", "multi-frame image (10 frames)"),
])
def test_non_radiographs_are_refused_with_a_reason(name: str, reason: str) -> None:
    with pytest.raises(DecodeError, match=reason.replace("(", r"\(").replace(")", r"\)")):
        read_radiograph(get_testdata_file(name))


def test_broken_inputs_are_refused_with_a_reason(tmp_path: Path, knee: dict[int, Composite]) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("not an image at all\n")
    with pytest.raises(DecodeError, match="not a DICOM file"):
        read_radiograph(text)
    with pytest.raises(DecodeError, match="no SOP Class UID or no pixel data"):
        decode(header_only(Rows=512, Columns=512))
    tiny = pydicom.dcmread(as_received(knee[8].dataset))
    tiny.Rows = 16
    with pytest.raises(DecodeError, match="implausible image size 16 x"):
        decode(tiny)
    short = pydicom.dcmread(as_received(knee[8].dataset))
    short.PixelData = short.PixelData[:1000]
    with pytest.raises(DecodeError, match="cannot decode pixel data"):
        decode(short)
    flat = pydicom.dcmread(as_received(knee[8].dataset))
    flat.PixelData = bytes(len(flat.PixelData))
    del flat.WindowCenter, flat.WindowWidth
    with pytest.raises(DecodeError, match="blank image"):
        decode(flat)
    truncated = tmp_path / "truncated.dcm"
    truncated.write_bytes(as_received(encode(knee[8].dataset, JPEGBaseline8Bit)).getvalue()[:5000])
    with pytest.raises(DecodeError):
        read_radiograph(truncated)


@pytest.mark.parametrize(("attributes", "expected"), [
    ({"PixelSpacing": [0.2, 0.1], "ImagerPixelSpacing": [0.3, 0.3]}, (0.2, 0.1)),  # calibrated wins
    ({"ImagerPixelSpacing": [0.22, 0.22], "EstimatedRadiographicMagnificationFactor": 1.1}, (0.2, 0.2)),
    ({"PixelSpacing": [0, 0], "ImagerPixelSpacing": [0.15, 0.15]}, (0.15, 0.15)),
    ({"PixelSpacing": [0, 0]}, None),
    ({"ImagerPixelSpacing": [-0.1, 0.1]}, None),
    ({"ImagerPixelSpacing": [0.1]}, None),
    ({}, None),
])
def test_pixel_spacing(attributes: dict[str, object], expected: tuple[float, float] | None) -> None:
    spacing = pixel_spacing(header_only(**attributes))
    assert spacing == (pytest.approx(expected) if expected else None)
