"""Coded concepts of the result encoding (docs/results.md); 99KNEEKL is our private coding scheme."""

from __future__ import annotations

from highdicom.coding_schemes import CodingSchemeIdentificationItem
from highdicom.sr import CodedConcept

from node.domain import Laterality, Reliability

SCHEME = "99KNEEKL"
SCHEME_IDENTIFICATION = CodingSchemeIdentificationItem(
    designator=SCHEME,
    name="knee-node Kellgren-Lawrence grading",
    responsible_organization="knee-node project",
)


def _private(value: str, meaning: str) -> CodedConcept:
    return CodedConcept(value, SCHEME, meaning)


KL_GRADE = _private("KLG", "Kellgren-Lawrence grade")
KL_GRADE_NUMBER = _private("KLN", "Kellgren-Lawrence grade number")
KL_CONFIDENCE = _private("KLC", "Confidence of Kellgren-Lawrence grade")
JOINT_ATTENTION = _private("ATJ", "Grad-CAM attention on joint region")
RELIABILITY = _private("REL", "Result reliability")
RELIABILITY_VALUES = {
    Reliability.NO_CONCERN: _private("REL0", "No concern"),
    Reliability.ATTENTION_OUTSIDE_JOINT: _private("REL1", "Attention outside joint"),
    Reliability.LOW_CONFIDENCE: _private("REL2", "Low confidence"),
}


# The SEG's one segment: an algorithm's map over the image, not anatomy (CID 7150 category, private type).
SPATIAL_AND_RELATIONAL_CONCEPT = CodedConcept("309825002", "SCT", "Spatial and Relational Concept")
ATTENTION_MAP = _private("ATM", "Grad-CAM attention map")


def kl_grade_value(grade: int) -> CodedConcept:
    return _private(f"KL{grade}", f"KL grade {grade}")


def kl_probability(grade: int) -> CodedConcept:
    return _private(f"KLP{grade}", f"Probability of KL grade {grade}")


KNEE_JOINT = CodedConcept("49076000", "SCT", "Knee joint")
LATERALITY = {
    Laterality.RIGHT: CodedConcept("24028007", "SCT", "Right"),
    Laterality.LEFT: CodedConcept("7771000", "SCT", "Left"),
}
# CID 100 has no radiography of the knee; its generic entry (the knee is the finding site, CR/DX the modality).
IMAGING_PROCEDURE = CodedConcept("363679005", "SCT", "Imaging procedure")
IMAGE_REGION = CodedConcept("111030", "DCM", "Image Region")
COMMENT = CodedConcept("121106", "DCM", "Comment")
NO_UNITS = CodedConcept("1", "UCUM", "no units")
PERCENT = CodedConcept("%", "UCUM", "percent")
