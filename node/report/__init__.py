"""Result objects: a Grad-CAM Secondary Capture and a TID 1500 Structured Report per radiograph."""

from __future__ import annotations

from pydicom import Dataset

from node.analysis.model import ModelSpec
from node.domain import Analysis
from node.report.identity import Equipment
from node.report.sc import build_sc
from node.report.sr import build_sr

__all__ = ["Equipment", "build_outputs"]


def build_outputs(analysis: Analysis, spec: ModelSpec, equipment: Equipment) -> tuple[Dataset, Dataset]:
    """(Secondary Capture, Structured Report) for one analysed radiograph."""
    return build_sc(analysis, spec, equipment), build_sr(analysis, spec, equipment)

