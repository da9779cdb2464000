"""The Structured Report: valid (dciodvfy, dsrdump, PixelMed), readable back with highdicom, per docs/results.md."""

from __future__ import annotations

import subprocess
from dataclasses import replace
from pathlib import Path

import highdicom as hd
import numpy as np
import pytest
from pydicom.sr.codedict import codes

from node.analysis.grading import Analyzer
from node.domain import Analysis, Laterality, Refusal, RefusedKnee
from node.report import Equipment, build_outputs
from node.report.sr import build_sr
from node.training.data import CropSet
from tests.helpers import dciodvfy_errors, pixelmed_sr_findings, require_tool
from tests.report.conftest import analyse


def written(tmp_path: Path, analysis: Analysis, analyzer: Analyzer, equipment: Equipment) -> Path:
    path = tmp_path / "sr.dcm"
    build_sr(analysis, analyzer.spec, equipment).save_as(path, enforce_file_format=True)
    return path


def box(item: hd.sr.ContentItem) -> hd.sr.ScoordContentItem:
    """The one SCOORD directly under `item` (a measurement group or a NUM)."""
    (region,) = [child for child in item.ContentSequence if child.ValueType == "SCOORD"]
    return region


def dsrdump(path: Path, *options: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([require_tool("dsrdump"), *options, str(path)], capture_output=True, text=True)


def test_sr_is_valid_and_dsrdump_reads_it_without_warnings(tmp_path: Path, graded: Analysis, analyzer: Analyzer,
                                                           equipment: Equipment) -> None:
    path = written(tmp_path, graded, analyzer, equipment)
    assert dciodvfy_errors(path) == []
    dump = dsrdump(path)
    assert dump.returncode == 0
    assert [line for line in (dump.stdout + dump.stderr).splitlines() if line[:2] in ("W:", "E:", "F:")] == []
    assert "Imaging Measurement Report" in dump.stdout and "Kellgren-Lawrence grade" in dump.stdout


def test_sr_round_trips_through_highdicom(tmp_path: Path, graded: Analysis, analyzer: Analyzer,
                                          equipment: Equipment) -> None:
    knee = graded.knees[0]
    sr = hd.sr.srread(written(tmp_path, graded, analyzer, equipment))
    assert sr.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.33"
    assert (sr.CompletionFlag, sr.VerificationFlag, sr.PreliminaryFlag) == ("COMPLETE", "UNVERIFIED", "PRELIMINARY")
    assert sr.Modality == "SR" and sr.StudyInstanceUID == graded.radiograph.header.StudyInstanceUID
    assert sr.SeriesInstanceUID != graded.radiograph.header.SeriesInstanceUID
    assert [item.CodingSchemeDesignator for item in sr.CodingSchemeIdentificationSequence] == ["99KNEEKL", "99IHE"]
    (group,) = sr.content.get_image_measurement_groups()
    side = knee.roi.laterality
    assert group.tracking_identifier == f"{side.word} knee"
    assert group.finding_type == hd.sr.CodedConcept(f"KL{knee.grade}", "99KNEEKL", f"KL grade {knee.grade}")
    (site,) = group.finding_sites
    assert site.value == hd.sr.CodedConcept("49076000", "SCT", "Knee joint")
    assert site.laterality == {Laterality.RIGHT: hd.sr.CodedConcept("24028007", "SCT", "Right"),
                               Laterality.LEFT: hd.sr.CodedConcept("7771000", "SCT", "Left")}[side]

    def number(code: str) -> float:
        (measurement,) = group.get_measurements(name=hd.sr.CodedConcept(code, "99KNEEKL", "x"))
        return float(measurement.value)

    def coded(code: str) -> str:
        (evaluation,) = group.get_qualitative_evaluations(name=hd.sr.CodedConcept(code, "99KNEEKL", "x"))
        return str(evaluation.value.value)

    assert number("KLN") == knee.grade
    assert coded("KLG") == f"KL{knee.grade}"
    assert number("KLC") == pytest.approx(100 * knee.confidence, abs=0.005)
    assert [number(f"KLP{k}") for k in range(5)] == pytest.approx([100 * p for p in knee.probabilities], abs=0.005)
    assert number("ATJ") == pytest.approx(100 * knee.attention, abs=0.005)
    assert coded("REL") == knee.reliability.value
    # The box twice: the group's region, and what the grade number is inferred from (both read by OHIF).
    (grade_number,) = group.get_measurements(name=hd.sr.CodedConcept("KLN", "99KNEEKL", "x"))
    for region in (box(group[0]), box(grade_number[0])):
        assert region.graphic_type == hd.sr.GraphicTypeValues.POLYLINE
        np.testing.assert_allclose(region.value, knee.roi.corners, atol=0.01)
        (source,) = region.ContentSequence  # SELECTED FROM the radiograph
        assert source.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == graded.radiograph.header.SOPInstanceUID
    (label,) = [item.value for item in group[0].ContentSequence if item.name == codes.DCM.Comment]
    assert label == f"{side.word} knee: KL {knee.grade}, {100 * knee.confidence:.0f} %"
    parameters = [item.TextValue for item in group[0].ContentSequence
                  if item.ConceptNameCodeSequence[0].CodeMeaning == "Algorithm Parameters"]
    assert f"weights sha256 {analyzer.spec.sha256}" in parameters


def test_a_bilateral_radiograph_gives_one_measurement_group_per_knee(tmp_path: Path, bilateral: Analysis,
                                                                    analyzer: Analyzer, equipment: Equipment) -> None:
    path = written(tmp_path, bilateral, analyzer, equipment)
    assert dciodvfy_errors(path) == []
    groups = hd.sr.srread(path).content.get_image_measurement_groups()
    assert sorted(group.tracking_identifier for group in groups) == ["Left knee", "Right knee"]
    for group in groups:
        knee = next(k for k in bilateral.knees if f"{k.roi.laterality.word} knee" == group.tracking_identifier)
        (grade,) = group.get_measurements(name=hd.sr.CodedConcept("KLN", "99KNEEKL", "x"))
        assert float(grade.value) == knee.grade
        np.testing.assert_allclose(box(group[0]).value, knee.roi.corners, atol=0.01)
    # PixelMed: no errors.  Its template tables (2022) lack TID 1501 rows 11 and 12, the group's coded and text
    # qualitative evaluations, and TID 4019 row 2b, Algorithm Manufacturer, so it calls KLG, REL, the label and the
    # manufacturer "not in template" (docs/results.md).
    findings = pixelmed_sr_findings(path)
    assert [line for line in findings if line.startswith("Error")] == []
    warned = {line.split("/")[-1] for line in findings}
    assert warned == {f'{item}: Content Item not in template' for item in (
        'CODE (KLG,99KNEEKL,"Kellgren-Lawrence grade")', 'CODE (REL,99KNEEKL,"Result reliability")',
        'TEXT (121106,DCM,"Comment")', 'TEXT (122405,DCM,"Algorithm Manufacturer")')}, findings


def test_sr_without_a_graded_knee_says_why(tmp_path: Path, not_graded: Analysis, analyzer: Analyzer,
                                           equipment: Equipment) -> None:
    path = written(tmp_path, not_graded, analyzer, equipment)
    assert dciodvfy_errors(path) == []
    sr = hd.sr.srread(path)
    assert sr.content.get_image_measurement_groups() == []
    texts = [item for item in hd.sr.utils.find_content_items(sr, recursive=True)
             if item.ValueType == "TEXT" and item.name == codes.DCM.Comment]
    assert [item.value for item in texts] == ["No knee graded: lateral view (ViewPosition LL) is not graded"]
    dump = dsrdump(path)
    assert "No knee graded" in dump.stdout and "W:" not in dump.stdout + dump.stderr


def test_output_uids_depend_only_on_source_and_model_version(graded: Analysis, analyzer: Analyzer,
                                                             equipment: Equipment) -> None:
    first = build_outputs(graded, analyzer.spec, equipment)
    again = build_outputs(graded, analyzer.spec, equipment)
    for one, two in zip(first, again, strict=True):
        assert (one.SOPInstanceUID, one.SeriesInstanceUID) == (two.SOPInstanceUID, two.SeriesInstanceUID)
    newer = build_outputs(graded, replace(analyzer.spec, version="9.9.9"), equipment)
    assert {o.SOPInstanceUID for o in first}.isdisjoint(o.SOPInstanceUID for o in newer)
    assert len({o.SOPInstanceUID for o in first} | {o.SeriesInstanceUID for o in first}) == 6  # SR, SC, SEG


def test_patient_study_and_character_set_are_carried_over(tmp_path: Path, analyzer: Analyzer, equipment: Equipment,
                                                          val_crops: CropSet) -> None:
    analysis = analyse(analyzer, val_crops, [11], non_ascii_name=True)
    source = analysis.radiograph.header
    for output in build_outputs(analysis, analyzer.spec, equipment):
        for keyword in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID",
                        "AccessionNumber", "StudyDate", "SpecificCharacterSet"):
            assert str(output.get(keyword)) == str(source.get(keyword)), keyword
        output.save_as(tmp_path / "out.dcm", enforce_file_format=True)
        assert dciodvfy_errors(tmp_path / "out.dcm") == []
    assert source.SpecificCharacterSet == "ISO_IR 192" and not str(source.PatientName).isascii()


def test_a_refused_knee_gets_its_reason_and_no_measurement_group(tmp_path: Path, bilateral: Analysis,
                                                                  analyzer: Analyzer, equipment: Equipment) -> None:
    """One knee of a bilateral radiograph refused (metal over it): the other keeps its group, the refused one gets a
    TEXT item with the reason, and nothing else is said of it."""
    graded, refused = bilateral.knees
    analysis = replace(bilateral, knees=(graded,), refused=(RefusedKnee(refused.roi, Refusal.METAL),))
    path = written(tmp_path, analysis, analyzer, equipment)
    assert dciodvfy_errors(path) == []
    sr = hd.sr.srread(path)
    groups = sr.content.get_image_measurement_groups()
    assert [group.tracking_identifier for group in groups] == [f"{graded.roi.laterality.word} knee"]
    texts = [item.value for item in hd.sr.utils.find_content_items(sr, recursive=True)
             if item.ValueType == "TEXT" and item.name == codes.DCM.Comment]
    # The graded knee's own Comment is its label; the refused knee has only its reason.
    assert [text for text in texts if text.startswith(refused.roi.laterality.word)] == [
        f"{refused.roi.laterality.word} knee: metal implant over the joint: not graded"]
    dump = dsrdump(path)
    assert "W:" not in dump.stdout + dump.stderr
