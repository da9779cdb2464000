"""Result objects: a Grad-CAM Secondary Capture and a TID 1500 Structured Report per radiograph."""

from __future__ import annotations

from pydicom import Dataset

from node.model import ModelSpec
from node.report.identity import Device
from node.report.sc import build_sc
from node.report.sr import build_sr
from node.types import Analysis

__all__ = ["Device", "build_outputs", "file_name"]


def build_outputs(analysis: Analysis, spec: ModelSpec, device: Device) -> tuple[Dataset, Dataset]:
    """(Secondary Capture, Structured Report) for one analysed radiograph."""
    return build_sc(analysis, spec, device), build_sr(analysis, spec, device)


def file_name(output: Dataset) -> str:
    """`sc-UID.dcm` or `sr-UID.dcm`: unique, and telling which object a file holds."""
    kind = "sr" if output.Modality == "SR" else "sc"
    return f"{kind}-{output.SOPInstanceUID}.dcm"
