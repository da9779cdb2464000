"""The Secondary Capture: valid, in the source study, heatmap inside the knee ROI only, labels and disclaimer."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np

from node.analysis.grading import Analyzer
from node.domain import Analysis, KneeResult, KneeRoi, Laterality, Radiograph, Refusal, RefusedKnee, Reliability
from node.report import Equipment
from node.report.sc import MAX_SIDE, Layout, build_sc, knee_label, overlaps, render
from tests.helpers import dciodvfy_errors


def colourful(pixels: np.ndarray) -> np.ndarray:
    """Where R, G and B differ: heatmap, box, legend or coloured text (the radiograph itself is grey)."""
    channels = pixels.astype(np.int16)
    return (np.abs(channels[..., 0] - channels[..., 1]) > 8) | (np.abs(channels[..., 1] - channels[..., 2]) > 8)


def roi_box(knee: KneeResult, scale: float) -> tuple[int, int, int, int]:
    (row, col), (half_rows, half_cols) = knee.roi.center, knee.roi.half_size
    return (round((row - half_rows) * scale), round((row + half_rows) * scale),
            round((col - half_cols) * scale), round((col + half_cols) * scale))


def test_sc_is_a_valid_derived_image_of_the_source(tmp_path: Path, graded: Analysis, analyzer: Analyzer,
                                                   equipment: Equipment) -> None:
    sc = build_sc(graded, analyzer.spec, equipment)
    sc.save_as(tmp_path / "sc.dcm", enforce_file_format=True)
    assert dciodvfy_errors(tmp_path / "sc.dcm") == []
    source = graded.radiograph.header
    assert sc.SOPClassUID == "1.2.840.10008.5.1.4.1.1.7"
    assert list(sc.ImageType) == ["DERIVED", "SECONDARY"]
    assert (sc.PhotometricInterpretation, sc.SamplesPerPixel, sc.BitsAllocated) == ("RGB", 3, 8)
    assert sc.BurnedInAnnotation == "YES"
    assert sc.ImageLaterality == graded.knees[0].roi.laterality.value
    assert sc.StudyInstanceUID == source.StudyInstanceUID and sc.SeriesInstanceUID != source.SeriesInstanceUID
    (reference,) = sc.SourceImageSequence
    assert (reference.ReferencedSOPClassUID, reference.ReferencedSOPInstanceUID) == (source.SOPClassUID,
                                                                                      source.SOPInstanceUID)
    assert list(sc.PatientOrientation) == list(source.PatientOrientation)


def test_heatmap_only_inside_the_knee_roi(graded: Analysis, analyzer: Analyzer) -> None:
    pixels = render(graded, analyzer.spec)
    top, bottom, left, right = roi_box(graded.knees[0], 1.0)  # small radiograph: rendered at full size
    assert pixels.shape[:2] == graded.radiograph.image.shape
    colour = colourful(pixels)
    inside = colour[top + 4:bottom - 4, left + 4:right - 4]
    assert inside.mean() > 0.2  # the map covers much of the joint
    outside = colour.copy()
    outside[top - 80:bottom + 6, left - 6:right + 6] = False  # box and the label block above it
    rows = pixels.shape[0]
    outside[:rows // 12] = False  # legend
    outside[-rows // 10:] = False  # disclaimer lines
    assert outside.mean() == 0


def test_a_bilateral_sc_shows_each_knee_with_its_own_label(bilateral: Analysis, analyzer: Analyzer) -> None:
    pixels = render(bilateral, analyzer.spec)
    colour = colourful(pixels)
    for knee in bilateral.knees:
        top, bottom, left, right = roi_box(knee, 1.0)
        assert colour[top + 4:bottom - 4, left + 4:right - 4].mean() > 0.2  # its own heatmap
        assert colour[max(top - 70, 0):top - 4, left:right].any()  # its label above its box
    assert sorted(knee_label(knee)[0] for knee in bilateral.knees) == ["L", "R"]


def test_sc_without_a_graded_knee_has_no_heatmap(not_graded: Analysis, analyzer: Analyzer, equipment: Equipment,
                                                 tmp_path: Path) -> None:
    pixels = render(not_graded, analyzer.spec)
    colour = colourful(pixels)
    rows = pixels.shape[0]
    assert colour[rows // 12:-rows // 10].sum() == 0
    assert colour[: rows // 12].any()  # the reason, in amber, and the legend
    sc = build_sc(not_graded, analyzer.spec, equipment)
    sc.save_as(tmp_path / "sc.dcm", enforce_file_format=True)
    assert dciodvfy_errors(tmp_path / "sc.dcm") == []


def test_large_radiographs_are_rendered_at_most_max_side(graded: Analysis, analyzer: Analyzer) -> None:
    image = np.repeat(np.repeat(graded.radiograph.image, 3, axis=0), 3, axis=1)
    large = Radiograph(graded.radiograph.header, image, graded.radiograph.spacing_mm)
    knee = graded.knees[0]
    roi = replace(knee.roi, center=(3 * knee.roi.center[0], 3 * knee.roi.center[1]),
                  half_size=(3 * knee.roi.half_size[0], 3 * knee.roi.half_size[1]))
    pixels = render(Analysis(large, (replace(knee, roi=roi),)), analyzer.spec)
    assert max(pixels.shape[:2]) == MAX_SIDE


def test_knee_label() -> None:
    roi = KneeRoi(center=(500, 400), half_size=(300, 300), laterality=Laterality.RIGHT)
    knee = KneeResult(roi, (0.02, 0.1, 0.78, 0.08, 0.02), 0.6, Reliability.NO_CONCERN, np.zeros((7, 7)))
    assert knee_label(knee) == "R KL 2 (78%)"


def test_labels_stay_inside_the_image_and_off_each_other() -> None:
    """Blocks asked for beyond every border, and on top of each other, land inside the canvas, none covering
    another."""
    canvas = np.zeros((700, 500, 3), np.uint8)
    layout = Layout(canvas, 0.5)
    wanted = [(-50, -50), (450, -20), (480, 690), (-10, 680), (200, 300), (200, 300), (210, 310)]
    for x, y in wanted:
        layout.place([("R KL 2 (78%)", 0.6, (255, 255, 255)), ("Caution: low confidence", 0.5, (255, 191, 0))], x, y)
    for index, (left, top, right, bottom) in enumerate(layout.taken):
        assert 0 <= left < right <= 500 and 0 <= top < bottom <= 700
        assert not any(overlaps(layout.taken[index], other) for other in layout.taken[index + 1:])


def test_a_refused_knee_shows_its_box_and_reason_without_a_heatmap(bilateral: Analysis, analyzer: Analyzer) -> None:
    graded, refused = bilateral.knees
    analysis = replace(bilateral, knees=(graded,), refused=(RefusedKnee(refused.roi, Refusal.METAL),))
    colour = colourful(render(analysis, analyzer.spec))
    top, bottom, left, right = roi_box(refused, 1.0)
    assert colour[top + 8:bottom - 8, left + 8:right - 8].sum() == 0  # no heatmap inside its box
    assert colour[top - 2:top + 3, left + 8:right - 8].all(axis=1).any()  # its amber box
    top, bottom, left, right = roi_box(graded, 1.0)
    assert colour[top + 4:bottom - 4, left + 4:right - 4].mean() > 0.2
