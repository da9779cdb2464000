from __future__ import annotations

import pytest
from pydicom import Dataset

from node.selection import MANUFACTURER, SelectionRules

CR, DX, SC = "1.2.840.10008.5.1.4.1.1.1", "1.2.840.10008.5.1.4.1.1.1.1", "1.2.840.10008.5.1.4.1.1.7"


def header(**attributes: str) -> Dataset:
    dataset = Dataset()
    dataset.SOPClassUID = attributes.pop("SOPClassUID", DX)
    dataset.Modality = attributes.pop("Modality", "DX")
    for keyword, value in attributes.items():
        setattr(dataset, keyword, value)
    return dataset


@pytest.mark.parametrize("attributes", [
    {"BodyPartExamined": "KNEE"},
    {"BodyPartExamined": "", "SeriesDescription": "Knie beidseits a.p."},
    {"SOPClassUID": CR, "Modality": "CR", "StudyDescription": "XR GENOU DROIT"},
    {"ProtocolName": "Bilateral standing knees PA"},
])
def test_knee_radiographs_are_selected(attributes: dict[str, str]) -> None:
    assert SelectionRules().reason_to_skip(header(**attributes)) is None


@pytest.mark.parametrize(("attributes", "reason"), [
    ({"BodyPartExamined": "CHEST"}, "not a knee examination (body part CHEST)"),
    ({"SOPClassUID": SC, "Modality": "OT", "BodyPartExamined": "KNEE"}, "not a CR/DX radiograph"),
    ({"Modality": "MG", "BodyPartExamined": "KNEE"}, "modality MG is not one of CR, DX"),
    ({"BodyPartExamined": "KNEE", "Manufacturer": MANUFACTURER}, "knee-node's own outputs"),
    ({"SOPClassUID": "", "BodyPartExamined": "KNEE"}, "SOP class missing"),
])
def test_everything_else_is_skipped_with_a_reason(attributes: dict[str, str], reason: str) -> None:
    assert reason in (SelectionRules().reason_to_skip(header(**attributes)) or "")


def test_rules_are_configurable() -> None:
    rules = SelectionRules(modalities=("DX",), body_part_keywords=("LEG",))
    assert rules.reason_to_skip(header(BodyPartExamined="LEG")) is None
    assert rules.reason_to_skip(header(BodyPartExamined="KNEE")) is not None
