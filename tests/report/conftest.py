from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pydicom
import pytest

from node.analysis.decode import decode
from node.analysis.grading import Analyzer
from node.analysis.model import Grader
from node.domain import Analysis
from node.report import Equipment
from node.training.data import CropSet
from tools.synthetic import bilateral_pairs, compose


@pytest.fixture(scope="package")
def analyzer(model_dir: Path) -> Analyzer:
    return Analyzer(Grader(model_dir, device="cpu"))


@pytest.fixture(scope="package")
def equipment() -> Equipment:
    return Equipment(name="KNEE_NODE", serial_number="TEST-1")


def analyse(analyzer: Analyzer, crops: CropSet, indices: Sequence[int], **options: object) -> Analysis:
    """A composite radiograph (one knee, or a subject's two) through decode and analysis, as the worker sees it."""
    composite = compose(crops, indices, np.random.default_rng(indices[0]), spacing_mm=0.3, **options)
    buffer = io.BytesIO()
    composite.dataset.save_as(buffer, enforce_file_format=True)
    buffer.seek(0)
    return analyzer.analyze([decode(pydicom.dcmread(buffer))])[0]


@pytest.fixture(scope="package")
def graded(analyzer: Analyzer, val_crops: CropSet) -> Analysis:
    analysis = analyse(analyzer, val_crops, [4])
    assert len(analysis.knees) == 1
    return analysis


@pytest.fixture(scope="package")
def bilateral(analyzer: Analyzer, val_crops: CropSet) -> Analysis:
    analysis = analyse(analyzer, val_crops, bilateral_pairs(val_crops)[0])
    assert len(analysis.knees) == 2
    return analysis


@pytest.fixture(scope="package")
def not_graded(graded: Analysis) -> Analysis:
    return Analysis(graded.radiograph, (), "lateral view (ViewPosition LL) is not graded")
