"""The decode -> analyze -> report sequence at the resolution the analysis needs: same knees, results on the source."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from pydicom import dcmwrite
from pydicom.uid import JPEG2000Lossless

from node.analysis.decode import read_radiograph
from node.analysis.grading import Analyzer
from node.analysis.model import Grader
from node.pipeline import Reported, run_batch
from node.report import Equipment
from node.training.data import CropSet
from tools.synthetic import compose, encode

SPACING_MM = 0.15  # a detector's pitch: the analysis (0.4 mm crops of the test model) takes it reduced twice


def test_a_jpeg2000_radiograph_is_analysed_reduced_and_reported_on_its_source(model_dir: Path,
                                                                            val_crops: CropSet) -> None:
    composite = compose(val_crops, (0, 1), np.random.default_rng(3), spacing_mm=SPACING_MM)
    buffer = io.BytesIO()
    dcmwrite(buffer, encode(composite.dataset, JPEG2000Lossless), enforce_file_format=True)
    analyzer = Analyzer(Grader(model_dir))
    full = analyzer.analyze([read_radiograph(io.BytesIO(buffer.getvalue()))])[0]
    (outcome,) = run_batch([io.BytesIO(buffer.getvalue())], analyzer, Equipment(name="KNEE_NODE"))
    assert isinstance(outcome, Reported)
    reduced = outcome.analysis
    rows, columns = composite.dataset.Rows, composite.dataset.Columns
    assert reduced.radiograph.step == 2 and reduced.radiograph.image.shape == (-(-rows // 2), -(-columns // 2))
    assert [k.roi.laterality for k in reduced.knees] == [k.roi.laterality for k in full.knees] and full.knees
    for before, after in zip(full.knees, reduced.knees, strict=True):  # in source pixels, as the results say
        assert np.hypot(*np.subtract(before.roi.center, after.roi.center)) * SPACING_MM < 1.0
        assert np.allclose(before.roi.half_size, after.roi.half_size, rtol=0.02)
    _, sc, seg = outcome.outputs
    assert (sc.Rows, sc.Columns) == reduced.radiograph.image.shape  # rendered from the image decoded once
    assert (seg.Rows, seg.Columns) == (rows, columns)  # a SEG lies on its source's pixel grid
