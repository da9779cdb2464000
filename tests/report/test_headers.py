"""Results from any header the CR/DX IODs allow: Type 2 attributes absent or empty, odd but legal values.

Anonymisers and some modalities leave out what is Type 2 (PatientBirthDate, AccessionNumber, ...); the node must
still build valid results, copying what the source has and leaving the rest empty.
"""

from __future__ import annotations

import copy
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from node.analysis.grading import Analyzer
from node.domain import Analysis, Radiograph
from node.report import Equipment, build_outputs
from tests.helpers import dciodvfy_errors
from tools.synthetic import TYPE_2_KEYWORDS


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(changes=st.dictionaries(st.sampled_from(TYPE_2_KEYWORDS), st.sampled_from(["absent", "empty"]), min_size=1),
       laterality=st.sampled_from([None, "B", "R", "L", "U"]),
       zero_spacing=st.booleans(),
       name=st.sampled_from([None, ("ISO_IR 100", "MÜLLER^JÜRGEN"), ("ISO_IR 192", "山田^太郎"),
                             ("ISO_IR 144", "Иванов^Иван")]))
def test_outputs_are_valid_whatever_type_2_attributes_are_missing(changes: dict[str, str], laterality: str | None,
                                                                  zero_spacing: bool, name: tuple[str, str] | None,
                                                                  graded: Analysis, analyzer: Analyzer,
                                                                  equipment: Equipment, tmp_path: Path) -> None:
    header = copy.deepcopy(graded.radiograph.header)
    if zero_spacing:
        header.PixelSpacing = [0, 0]  # legal, and meaning "unknown" on some modalities
    if name is not None:
        header.SpecificCharacterSet, header.PatientName = name
    if laterality is None:
        header.pop("ImageLaterality", None)
    else:
        header.ImageLaterality = laterality  # "B" with one knee in view: legal, if odd
    for keyword, change in changes.items():
        if change == "absent":
            header.pop(keyword, None)
        else:
            setattr(header, keyword, None)
    radiograph = Radiograph(header, graded.radiograph.image, graded.radiograph.spacing_mm)
    analysis = Analysis(radiograph, graded.knees, graded.reason)
    for output in build_outputs(analysis, analyzer.spec, equipment):
        for keyword in ("PatientName", "PatientID", "PatientBirthDate", "AccessionNumber", "StudyDate"):
            assert str(output.get(keyword) or "") == str(header.get(keyword) or ""), keyword
            assert keyword in output  # Type 2: present, empty where the source has none
        path = tmp_path / f"{output.Modality}.dcm"
        output.save_as(path, enforce_file_format=True)
        assert dciodvfy_errors(path) == [], changes
