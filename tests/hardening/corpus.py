"""A corpus of odd and broken inputs: crafted from one small valid knee radiograph, plus pydicom's test files.

Each case says what it is and what the node may answer: `analyze` statuses (ok, skipped, error), and whether it
can be sent over DICOM at all (a file without a SOP Instance UID, or no DICOM at all, cannot).
"""

from __future__ import annotations

import copy
import io
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom import Dataset, dcmwrite
from pydicom.data import get_testdata_file
from pydicom.dataelem import RawDataElement
from pydicom.tag import Tag
from pydicom.uid import JPEG2000Lossless

from node.training.data import CropSet
from tools.synthetic import compose, encode

OK, SKIPPED, ERROR = "ok", "skipped", "error"


@dataclass(frozen=True)
class Case:
    name: str
    path: Path
    analyze: frozenset[str]  # acceptable statuses from `knee-node analyze`
    sendable: bool  # a C-STORE can carry it


def write(dataset: Dataset, path: Path, enforce: bool = True) -> Path:
    """As a file; `enforce=False` writes the bare dataset (implicit VR little endian, no file meta)."""
    buffer = io.BytesIO()
    if enforce:
        dcmwrite(buffer, dataset, enforce_file_format=True)
    else:
        dcmwrite(buffer, dataset, implicit_vr=True, little_endian=True)
    path.write_bytes(buffer.getvalue())
    return path


def knee(crops: CropSet) -> Dataset:
    """The valid control: an 8-bit DX right knee, 0.4 mm spacing (small and quick)."""
    return compose(crops, [7], np.random.default_rng(0), spacing_mm=0.4, bits=8).dataset


def raw(tag: int, vr: str, value: bytes) -> Callable[[Dataset], None]:
    """A change storing bytes as they are: values pydicom would refuse to create (they are what we test)."""
    value += b" " * (len(value) % 2)

    def change(dataset: Dataset) -> None:
        dataset[tag] = RawDataElement(Tag(tag), vr, len(value), value, 0, False, True)

    return change


def altered(base: Dataset, change: Callable[[Dataset], None]) -> Dataset:
    dataset = copy.deepcopy(base)
    change(dataset)
    return dataset


def build(folder: Path, crops: CropSet) -> list[Case]:
    folder.mkdir(parents=True, exist_ok=True)
    base = knee(crops)
    good = write(base, folder / "control.dcm").read_bytes()
    cases: list[Case] = []

    def add(name: str, data: bytes | Dataset, analyze: set[str], sendable: bool = True, enforce: bool = True) -> None:
        path = folder / f"{len(cases):02d}-{name}.dcm"
        if isinstance(data, Dataset):
            write(data, path, enforce)
        else:
            path.write_bytes(data)
        cases.append(Case(name, path, frozenset(analyze), sendable))

    def setting(**attributes: object) -> Dataset:
        return altered(base, lambda d: [setattr(d, k, v) for k, v in attributes.items()])

    def deleting(*keywords: str) -> Dataset:
        return altered(base, lambda d: [delattr(d, k) for k in keywords])

    add("control", base, {OK})
    add("empty-file", b"", {ERROR}, sendable=False)
    add("random-bytes", np.random.default_rng(1).bytes(4096), {ERROR}, sendable=False)
    add("text-file", b"patient: nobody\nthis is not DICOM\n", {ERROR}, sendable=False)
    add("truncated-in-header", good[:400], {ERROR}, sendable=False)
    add("truncated-in-pixels", good[: len(good) // 2], {ERROR})
    add("no-pixel-data", deleting("PixelData"), {ERROR})
    add("short-pixel-data", setting(PixelData=base.PixelData[:1000]), {ERROR})
    add("rows-zero", setting(Rows=0), {ERROR})
    add("rows-absurd", setting(Rows=65535, Columns=65535), {ERROR})
    add("columns-mismatch", setting(Columns=int(base.Columns) + 7), {ERROR})
    add("bits-allocated-7", setting(BitsAllocated=7), {ERROR})
    add("samples-3", setting(SamplesPerPixel=3), {ERROR})
    add("photometric-palette", setting(PhotometricInterpretation="PALETTE COLOR"), {ERROR})
    add("photometric-missing", deleting("PhotometricInterpretation"), {ERROR})
    add("frames-2", setting(NumberOfFrames=2), {ERROR})
    add("frames-garbage", altered(base, raw(0x00280008, "IS", b"x1")), {ERROR})
    add("uid-path-characters", setting(SOPInstanceUID="../../../../tmp/owned"), {OK, ERROR})
    add("uid-too-long", setting(SOPInstanceUID="1." + "2" * 80), {OK, ERROR})
    add("uid-letters", setting(SOPInstanceUID="1.2.840.abc.1"), {OK, ERROR})
    add("no-sop-instance-uid", deleting("SOPInstanceUID"), {OK, ERROR}, sendable=False)
    add("no-sop-class-uid", deleting("SOPClassUID"), {ERROR})
    add("window-width-zero", setting(WindowWidth=0), {ERROR})
    add("window-centre-garbage", altered(base, raw(0x00281050, "DS", b"abc")), {ERROR})
    add("rows-wrong-length", altered(base, raw(0x00280010, "US", b"\x01\x02\x03\x04\x05\x06")), {ERROR})
    add("voi-function-unknown", setting(VOILUTFunction="BOGUS"), {ERROR})
    add("rescale-slope-zero", setting(RescaleSlope=0), {ERROR})
    add("rescale-slope-huge", setting(RescaleSlope="1e30"), {OK, SKIPPED, ERROR})
    add("flat-image", altered(base, lambda d: setattr(d, "PixelData", bytes(len(d.PixelData)))), {ERROR})
    add("spacing-zero", setting(ImagerPixelSpacing=[0, 0]), {OK})
    add("spacing-negative", setting(ImagerPixelSpacing=[-0.4, 0.4]), {OK})
    add("spacing-missing", deleting("ImagerPixelSpacing"), {OK})
    add("laterality-garbage", setting(ImageLaterality="X"), {OK})
    add("orientation-garbage", setting(PatientOrientation=["Q", "Z"]), {OK})
    add("lateral-view", setting(ViewPosition="LL"), {SKIPPED})
    add("not-a-knee", setting(BodyPartExamined="CHEST", SeriesDescription="", StudyDescription="XR CHEST"),
        {SKIPPED})
    add("latin1-name", setting(SpecificCharacterSet="ISO_IR 100", PatientName="Müller^Jürgen"), {OK})
    # Patient names cannot be carried over faithfully: no result rather than a garbled name.
    add("unknown-charset", setting(SpecificCharacterSet="ISO_IR 999"), {ERROR})
    add("big-endian", encode(base, "1.2.840.10008.1.2.2"), {OK})
    add("no-file-meta", altered(base, lambda d: setattr(d, "file_meta", pydicom.dataset.FileMetaDataset())), {OK},
        sendable=False, enforce=False)
    # The file meta claims RLE (a UID as long as Explicit VR Little Endian's) for uncompressed pixel data.
    add("says-rle-is-raw", good.replace(b"1.2.840.10008.1.2.1\x00", b"1.2.840.10008.1.2.5\x00", 1), {ERROR})
    j2k = encode(base, JPEG2000Lossless)
    add("jpeg2000-truncated-frame", altered(j2k, lambda d: setattr(d, "PixelData", d.PixelData[:600])), {ERROR})
    for name in ("SC_rgb.dcm", "emri_small.dcm", "CT_small.dcm", "MR_small_bigendian.dcm", "test-SR.dcm",
                 "OT-PAL-8-face.dcm", "US1_J2KR.dcm", "RG1_UNCI.dcm", "RG3_UNCR.dcm", "rtplan.dcm",
                 "ExplVR_BigEndNoMeta.dcm", "MR_truncated.dcm", "no_meta.dcm", "badVR.dcm"):
        path = Path(get_testdata_file(name, download=False))
        readable_meta = name not in ("ExplVR_BigEndNoMeta.dcm", "no_meta.dcm")
        add(f"pydicom-{path.stem}", path.read_bytes(), {SKIPPED, ERROR}, sendable=readable_meta)
    return cases
