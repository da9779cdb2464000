"""The Segmentation: valid (dciodvfy), a FRACTIONAL Grad-CAM over the source radiograph, one attention segment."""

from __future__ import annotations

from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom

from node.analysis.grading import Analyzer
from node.domain import Analysis
from node.report import Equipment, build_outputs
from node.report.seg import build_seg
from tests.helpers import dciodvfy_errors


def test_seg_is_a_valid_fractional_attention_map_of_the_source(tmp_path: Path, bilateral: Analysis,
                                                               analyzer: Analyzer, equipment: Equipment) -> None:
    path = tmp_path / "seg.dcm"
    build_seg(bilateral, analyzer.spec, equipment).save_as(path, enforce_file_format=True)
    assert dciodvfy_errors(path) == []
    seg = hd.seg.segread(path)
    source = bilateral.radiograph.header
    assert seg.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.4" and seg.Modality == "SEG"
    assert (seg.SegmentationType, seg.SegmentationFractionalType, seg.MaximumFractionalValue) == (
        "FRACTIONAL", "PROBABILITY", 255)
    assert seg.StudyInstanceUID == source.StudyInstanceUID and seg.SeriesInstanceUID != source.SeriesInstanceUID
    (segment,) = seg.SegmentSequence
    assert segment.SegmentLabel == "Grad-CAM attention"
    assert segment.SegmentAlgorithmType == "AUTOMATIC"
    assert segment.SegmentedPropertyCategoryCodeSequence[0].CodeMeaning == "Spatial and Relational Concept"
    assert segment.SegmentedPropertyTypeCodeSequence[0].CodeValue == "ATM"
    (algorithm,) = segment.SegmentationAlgorithmIdentificationSequence
    assert (algorithm.AlgorithmName, algorithm.AlgorithmVersion) == (analyzer.spec.name, analyzer.spec.version)
    assert seg.get_source_image_uids() == [(source.StudyInstanceUID, source.SeriesInstanceUID, source.SOPInstanceUID)]
    (frame,) = seg.PerFrameFunctionalGroupsSequence
    (derived_from,) = frame.DerivationImageSequence[0].SourceImageSequence
    assert derived_from.ReferencedSOPInstanceUID == source.SOPInstanceUID

    # Over the source's pixel grid: each knee's map, scaled to its maximum, inside its ROI; nothing elsewhere.
    pixels = pydicom.dcmread(path).pixel_array
    assert pixels.shape == (source.Rows, source.Columns)
    outside = np.ones(pixels.shape, bool)
    for knee in bilateral.knees:
        (row, col), (half_rows, half_cols) = knee.roi.center, knee.roi.half_size
        inside = (slice(max(round(row - half_rows), 0), round(row + half_rows)),
                  slice(max(round(col - half_cols), 0), round(col + half_cols)))
        assert pixels[inside].max() == 255 and pixels[inside].mean() > 0.1 * 255
        outside[inside] = False
    assert pixels[outside].max() == 0


def test_a_radiograph_without_a_graded_knee_gets_no_seg(not_graded: Analysis, analyzer: Analyzer,
                                                       equipment: Equipment) -> None:
    assert [output.Modality for output in build_outputs(not_graded, analyzer.spec, equipment)] == ["SR", "OT"]
