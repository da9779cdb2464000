"""Result objects per radiograph: a Structured Report (TID 1500), a Grad-CAM Secondary Capture and, when a knee is
graded, a Segmentation holding the Grad-CAM as a toggleable overlay."""

from __future__ import annotations

from pydicom import Dataset

from node.analysis.model import ModelSpec
from node.domain import Analysis
from node.report.identity import Equipment
from node.report.sc import build_sc
from node.report.seg import build_seg
from node.report.sr import build_sr

__all__ = ["Equipment", "build_outputs"]


def build_outputs(analysis: Analysis, spec: ModelSpec, equipment: Equipment) -> tuple[Dataset, ...]:
    """(SR, SC) and, when a knee is graded, the SEG: in the order they are delivered, the report's kB first."""
    outputs = (build_sr(analysis, spec, equipment), build_sc(analysis, spec, equipment))
    return (*outputs, build_seg(analysis, spec, equipment)) if analysis.knees else outputs
