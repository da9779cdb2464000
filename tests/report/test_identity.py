"""The algorithm's identity (IHE AIR) in every output: the Contributing Equipment item read back with pydicom,
the same identity in the SR's TID 4019, a Device UID that follows the weights, and dciodvfy still at 0 errors."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pydicom
from pydicom import Dataset

from node.analysis.grading import Analyzer
from node.domain import Analysis
from node.report import Equipment, build_outputs
from node.report.identity import algorithm_uid
from node.report.uids import derived_uid
from tests.helpers import dciodvfy_errors


def algorithm_items(output: Dataset) -> list[Dataset]:
    return [item for item in output.get("ContributingEquipmentSequence", [])
            if [(code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning)
                for code in item.PurposeOfReferenceCodeSequence] == [("Newcode1", "99IHE", "Processing Algorithm")]]


def test_every_output_names_the_algorithm_as_ihe_air_asks(tmp_path: Path, graded: Analysis, analyzer: Analyzer,
                                                          equipment: Equipment) -> None:
    spec = analyzer.spec
    outputs = build_outputs(graded, spec, equipment)
    assert [output.Modality for output in outputs] == ["SR", "OT", "SEG"]
    for output in outputs:
        path = tmp_path / f"{output.Modality}.dcm"
        output.save_as(path, enforce_file_format=True)
        assert dciodvfy_errors(path) == [], output.Modality
        read = pydicom.dcmread(path)
        (item,) = algorithm_items(read)
        assert (item.Manufacturer, item.ManufacturerModelName, item.SoftwareVersions) == (
            "knee-node", spec.name, spec.version)
        assert item.DeviceUID == derived_uid("algorithm", spec.sha256)
        assert "99IHE" in [scheme.CodingSchemeDesignator for scheme in read.CodingSchemeIdentificationSequence]


def test_the_sr_repeats_the_identity_in_tid_4019(tmp_path: Path, bilateral: Analysis, analyzer: Analyzer,
                                                 equipment: Equipment) -> None:
    spec = analyzer.spec
    path = tmp_path / "sr.dcm"
    build_outputs(bilateral, spec, equipment)[0].save_as(path, enforce_file_format=True)
    sr = pydicom.dcmread(path)
    (item,) = algorithm_items(sr)
    (measurements,) = [c for c in sr.ContentSequence if c.ConceptNameCodeSequence[0].CodeValue == "126010"]
    assert len(measurements.ContentSequence) == 2  # one group per knee, each with the identity
    for group in measurements.ContentSequence:
        texts = {(c.ConceptNameCodeSequence[0].CodeValue, c.TextValue) for c in group.ContentSequence
                 if c.ValueType == "TEXT"}
        assert {("111001", item.ManufacturerModelName), ("111003", item.SoftwareVersions),
                ("122405", item.Manufacturer), ("111002", f"weights sha256 {spec.sha256}")} <= texts
        (family,) = [c.ConceptCodeSequence[0] for c in group.ContentSequence
                     if c.ConceptNameCodeSequence[0].CodeValue == "111000"]
        assert family.CodeMeaning == "Artificial Intelligence"


def test_the_device_uid_changes_with_the_weights_only(analyzer: Analyzer) -> None:
    spec = analyzer.spec
    retrained = replace(spec, sha256="0" * 64)
    assert algorithm_uid(retrained) != algorithm_uid(spec)
    assert algorithm_uid(replace(spec, temperature=spec.temperature + 0.1)) == algorithm_uid(spec)
