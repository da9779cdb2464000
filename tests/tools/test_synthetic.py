"""Synthetic knee radiographs: geometry, ground truth, pixel encodings, transfer syntaxes, header validity."""

from __future__ import annotations

import io
import json
import subprocess
from pathlib import Path

import cv2
import numpy as np
import pydicom
import pytest
from pydicom import Dataset, dcmwrite
from pydicom.pixels import apply_modality_lut, apply_voi
from pydicom.uid import (
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLSNearLossless,
    RLELossless,
)

from node.domain import Laterality
from node.training.data import CropSet
from tests.helpers import require_tool
from tools import KNEE_KL
from tools.synthetic import (
    LOSSY_SYNTAXES,
    SYNTAX_BITS,
    SYNTAXES,
    Composite,
    bilateral_pairs,
    compose,
    encode,
    jpeg_ls_near,
    write_composites,
)

SPACING = 0.35  # mm: small images, fast tests
# Lossy syntaxes other than JPEG-LS near-lossless (whose bound is exact): mean and largest error allowed, as a
# share of the stored range.  Measured: mean 0.07-0.5 %, largest 0.5-6 % (6 %: JPEG baseline q90 at 8 bits).
LOSSY_MEAN, LOSSY_MAX = 0.01, 0.10


def reread(dataset: Dataset) -> Dataset:
    """Write and read back, as a receiver would get it."""
    buffer = io.BytesIO()
    dcmwrite(buffer, dataset, enforce_file_format=True)
    buffer.seek(0)
    return pydicom.dcmread(buffer)


def viewer(dataset: Dataset) -> np.ndarray:
    """PS3.3 display pipeline written out independently: Modality LUT, VOI LUT or linear window, MONOCHROME1
    inverted, scaled to 0..1."""
    values = apply_modality_lut(dataset.pixel_array, dataset)
    if "VOILUTSequence" in dataset:
        bits = dataset.VOILUTSequence[0].LUTDescriptor[2]
        shown = apply_voi(np.rint(values).astype(np.int64), dataset) / (2**bits - 1)
    else:
        center, width = float(dataset.WindowCenter), float(dataset.WindowWidth)
        shown = np.clip((values - (center - 0.5)) / (width - 1) + 0.5, 0, 1)
    return 1 - shown if dataset.PhotometricInterpretation == "MONOCHROME1" else shown


@pytest.fixture(scope="module")
def by_bits(val_crops: CropSet) -> dict[int, Composite]:
    """One single-knee composite per bit depth, CR with a real Modality LUT and a VOI LUT."""
    return {bits: compose(val_crops, (bits,), np.random.default_rng(bits), spacing_mm=SPACING, bits=bits,
                          modality="CR", voi="lut") for bits in (8, 12, 16)}


@pytest.mark.parametrize("syntax", SYNTAXES, ids=lambda s: s.name)
def test_each_syntax_decodes_to_the_stored_values(by_bits: dict[int, Composite], syntax: str) -> None:
    bits = max(SYNTAX_BITS[syntax])
    original = by_bits[bits].dataset
    received = reread(encode(original, syntax))
    assert original.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian  # encode works on a copy
    assert received.file_meta.TransferSyntaxUID == syntax
    assert received.SOPInstanceUID == original.SOPInstanceUID
    assert received.VOILUTSequence[0].LUTDescriptor == original.VOILUTSequence[0].LUTDescriptor
    error = np.abs(received.pixel_array.astype(np.int64) - original.pixel_array.astype(np.int64))
    full_scale = 2**bits - 1
    if syntax not in LOSSY_SYNTAXES:
        assert received.LossyImageCompression == "00"
        assert error.max() == 0
        return
    assert received.LossyImageCompression == "01"
    assert float(received.LossyImageCompressionRatio) > 1
    assert received.LossyImageCompressionMethod.startswith("ISO_")
    if syntax == JPEGLSNearLossless:
        assert 0 < error.max() <= jpeg_ls_near(bits)
    else:
        assert 0 < error.max() <= LOSSY_MAX * full_scale
    assert error.mean() <= LOSSY_MEAN * full_scale


def test_encode_refuses_what_it_cannot_make(by_bits: dict[int, Composite]) -> None:
    with pytest.raises(ValueError, match="12-bit"):
        encode(by_bits[12].dataset, JPEGBaseline8Bit)
    with pytest.raises(ValueError, match="16-bit"):
        encode(by_bits[16].dataset, JPEGExtended12Bit)
    with pytest.raises(ValueError, match="unsupported"):
        encode(by_bits[8].dataset, "1.2.840.10008.1.2.4.201")  # HTJ2K Lossless: not made here
    with pytest.raises(ValueError, match="uncompressed"):
        encode(encode(by_bits[8].dataset, RLELossless), JPEG2000Lossless)


@pytest.mark.parametrize(("bits", "photometric", "modality", "voi"), [
    (8, "MONOCHROME2", "DX", "window"),
    (12, "MONOCHROME1", "CR", "window"),
    (16, "MONOCHROME2", "DX", "window"),
    (8, "MONOCHROME1", "CR", "lut"),
    (12, "MONOCHROME2", "CR", "lut"),
    (16, "MONOCHROME1", "DX", "lut"),
])
def test_display_is_what_the_stored_values_and_voi_mean(val_crops: CropSet, bits: int, photometric: str,
                                                         modality: str, voi: str) -> None:
    composite = compose(val_crops, (5,), np.random.default_rng(3), spacing_mm=SPACING, bits=bits,
                        photometric=photometric, modality=modality, voi=voi)
    received = reread(composite.dataset)
    assert composite.display.dtype == np.float32
    assert composite.display.shape == (received.Rows, received.Columns)
    assert composite.display.min() >= 0 and composite.display.max() <= 1
    np.testing.assert_allclose(viewer(received), composite.display, atol=1e-6)
    if modality == "CR":
        assert float(received.RescaleSlope) != 1 or float(received.RescaleIntercept) != 0
    else:
        assert (float(received.RescaleSlope), float(received.RescaleIntercept)) == (1, 0)
    linear = received.pixel_array / (2**bits - 1)
    linear = 1 - linear if photometric == "MONOCHROME1" else linear
    # The window reproduces the full stored range; the LUT is a gamma curve a reader must apply to get it right.
    assert (np.abs(linear - composite.display).max() > 0.05) == (voi == "lut")


def test_without_voi_the_display_is_the_full_stored_range(val_crops: CropSet) -> None:
    composite = compose(val_crops, (7,), np.random.default_rng(4), spacing_mm=SPACING, bits=12,
                        photometric="MONOCHROME1", modality="CR", voi="none", spacing_tag="none")
    ds = composite.dataset
    assert not {"WindowCenter", "WindowWidth", "VOILUTSequence", "PixelSpacing", "ImagerPixelSpacing"} & set(ds.dir())
    np.testing.assert_allclose(composite.display, 1 - ds.pixel_array / 4095, atol=1e-6)


def crop_correlation(composite: Composite, crops: CropSet, knee: int, shift: int = 0) -> float:
    """Correlation of the crop with the composite around the knee's truth centre (moved `shift` pixels)."""
    truth = composite.knees[knee]
    size = round(90 / SPACING)
    crop = cv2.resize(crops.images[crops.files.index(truth.file)], (size, size)).astype(np.float32)
    top, left = (round(v - (size - 1) / 2) for v in truth.center)
    inner = slice(size // 8, size - size // 8)  # inside the blend with the surroundings
    window = composite.display[top + shift:top + shift + size, left:left + size]
    return float(np.corrcoef(window[inner, inner].ravel(), crop[inner, inner].ravel())[0, 1])


def test_bilateral_puts_the_right_knee_on_the_image_left(val_crops: CropSet) -> None:
    right, left = bilateral_pairs(val_crops)[0]
    composite = compose(val_crops, (left, right), np.random.default_rng(5), spacing_mm=SPACING)
    ds = composite.dataset
    assert [k.laterality for k in composite.knees] == [Laterality.RIGHT, Laterality.LEFT]
    assert [k.file for k in composite.knees] == [val_crops.files[right], val_crops.files[left]]
    assert [k.grade for k in composite.knees] == [int(val_crops.grades[right]), int(val_crops.grades[left])]
    right_col, left_col = (k.center[1] for k in composite.knees)
    assert right_col < ds.Columns / 2 < left_col
    assert 175 <= (left_col - right_col) * SPACING <= 225
    assert 400 <= ds.Columns * SPACING <= 460 and 320 <= ds.Rows * SPACING <= 380
    assert (ds.ImageLaterality, ds.SeriesDescription, ds.PatientOrientation) == ("B", "Knees bilateral PA",
                                                                                 ["L", "F"])
    for knee in (0, 1):
        assert crop_correlation(composite, val_crops, knee) > 0.95
        assert crop_correlation(composite, val_crops, knee, shift=round(10 / SPACING)) < 0.8


def test_single_knee_geometry_and_lateral_view(val_crops: CropSet) -> None:
    index = next(i for i, f in enumerate(val_crops.files) if f.endswith("R.jpg"))
    pa = compose(val_crops, (index,), np.random.default_rng(6), spacing_mm=SPACING)
    lateral = compose(val_crops, (index,), np.random.default_rng(6), spacing_mm=SPACING, view="LL")
    ds = pa.dataset
    assert 230 <= ds.Columns * SPACING <= 250 and 290 <= ds.Rows * SPACING <= 310
    (knee,) = pa.knees
    assert knee.laterality is Laterality.RIGHT and ds.ImageLaterality == "R"
    assert 0 < knee.center[0] < ds.Rows and 0 < knee.center[1] < ds.Columns
    assert abs(knee.center[1] * SPACING - 120) <= 12  # near the middle, not exactly
    assert crop_correlation(pa, val_crops, 0) > 0.95
    # The lead marker: near white, in the upper corner of the exposed field on the outer side (image left for a
    # right knee).  The field is where the direct-exposure background darkens most rows and columns.
    rows, columns = (np.flatnonzero(np.median(pa.display, axis=axis) < 0.5) for axis in (1, 0))
    corner = round(50 / SPACING)
    outer = pa.display[rows[0]:rows[0] + corner, columns[0]:columns[0] + corner]
    inner = pa.display[rows[0]:rows[0] + corner, columns[-1] - corner:columns[-1]]
    assert outer.max() > 0.9 > inner.max()
    # The view option changes View Position and nothing else.
    assert (ds.ViewPosition, lateral.dataset.ViewPosition) == ("PA", "LL")
    np.testing.assert_array_equal(pa.display, lateral.display)
    lateral.dataset.ViewPosition = "PA"
    assert lateral.dataset == ds


def test_compose_refuses_unknown_options(val_crops: CropSet) -> None:
    (right, _), (other_right, _) = bilateral_pairs(val_crops)[:2]
    with pytest.raises(ValueError, match="bits"):
        compose(val_crops, (right,), np.random.default_rng(0), bits=10)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="subject"):
        compose(val_crops, (right, other_right), np.random.default_rng(0))
    with pytest.raises(ValueError, match="fit"):
        compose(val_crops, (right,), np.random.default_rng(0), spacing_mm=SPACING, field_mm=400)


def test_same_seed_gives_identical_files_and_truth(val_crops: CropSet, tmp_path: Path) -> None:
    def run(name: str, seed: int, count: int) -> list[dict]:
        return write_composites(KNEE_KL / "val", tmp_path / name, count, bilateral_fraction=0.5,
                                syntaxes=SYNTAXES, seed=seed, spacing_mm=SPACING)

    count = len(SYNTAXES) + 1
    records = run("a", 7, count)
    assert run("b", 7, count) == records
    run("c", 8, 1)
    names = [f"{n:04d}.dcm" for n in range(1, count + 1)] + ["truth.json"]
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == names
    for name in names:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    assert (tmp_path / "a" / "0001.dcm").read_bytes() != (tmp_path / "c" / "0001.dcm").read_bytes()
    assert json.loads((tmp_path / "a" / "truth.json").read_text()) == records
    assert [r["syntax"] for r in records] == [*SYNTAXES, SYNTAXES[0]]
    assert {len(r["knees"]) for r in records} == {1, 2}
    for record in records:
        ds = pydicom.dcmread(tmp_path / "a" / record["file"])
        assert ds.file_meta.TransferSyntaxUID == record["syntax"]
        assert (ds.BitsStored, ds.PhotometricInterpretation, ds.Modality) == (
            record["bits"], record["photometric"], record["modality"])
        assert ds.pixel_array.shape == (ds.Rows, ds.Columns)
        assert ("VOILUTSequence" in ds, "WindowCenter" in ds) == (record["voi"] == "lut", record["voi"] == "window")
        columns = [knee["center_col"] for knee in record["knees"]]
        assert [knee["laterality"] for knee in record["knees"]] == (["R", "L"] if len(columns) == 2 else
                                                                   [ds.ImageLaterality])
        assert columns == sorted(columns)
        for knee in record["knees"]:
            assert 0 < knee["center_row"] < ds.Rows and 0 < knee["center_col"] < ds.Columns
            assert knee["crop"] in val_crops.files


@pytest.mark.parametrize(("modality", "options"), [
    ("DX", {"bits": 12, "photometric": "MONOCHROME2", "voi": "window"}),
    ("DX", {"bits": 16, "photometric": "MONOCHROME1", "voi": "lut"}),
    ("CR", {"bits": 12, "photometric": "MONOCHROME1", "voi": "window", "non_ascii_name": True}),
    ("CR", {"bits": 8, "photometric": "MONOCHROME2", "voi": "lut", "spacing_tag": "pixel"}),
])
def test_dciodvfy_finds_no_error(val_crops: CropSet, tmp_path: Path, modality: str, options: dict) -> None:
    tool = require_tool("dciodvfy")
    right, left = bilateral_pairs(val_crops)[2]
    composite = compose(val_crops, (right, left), np.random.default_rng(9), spacing_mm=SPACING,
                        modality=modality, **options)
    path = tmp_path / "image.dcm"
    dcmwrite(path, composite.dataset, enforce_file_format=True)
    done = subprocess.run([tool, "-new", str(path)], capture_output=True, text=True, check=False)
    report = done.stdout + done.stderr
    assert ("DXImageForPresentation" if modality == "DX" else "CRImage") in report
    assert [line for line in report.splitlines() if line.startswith("Error")] == []
    if options.get("non_ascii_name"):
        received = pydicom.dcmread(path)
        assert received.SpecificCharacterSet == "ISO_IR 192"
        assert str(received.PatientName) == str(composite.dataset.PatientName)
        assert not str(received.PatientName).isascii()
