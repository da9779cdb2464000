"""Which instances the node grades: knee radiographs (CR/DX), never its own outputs.

Shared by `analyze` and the Storage SCP; it reads the header only.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydicom import Dataset
from pydicom.uid import UID

MANUFACTURER = "knee-node"  # written into every output, so the node can recognise its own objects
RADIOGRAPH_CLASSES = frozenset({
    UID("1.2.840.10008.5.1.4.1.1.1"),  # Computed Radiography Image Storage
    UID("1.2.840.10008.5.1.4.1.1.1.1"),  # Digital X-Ray Image Storage - For Presentation
    UID("1.2.840.10008.5.1.4.1.1.1.1.1"),  # Digital X-Ray Image Storage - For Processing
})
DESCRIPTIVE_KEYWORDS = ("BodyPartExamined", "StudyDescription", "SeriesDescription", "ProtocolName")


@dataclass(frozen=True)
class SelectionRules:
    modalities: tuple[str, ...] = ("CR", "DX")
    # Matched case-insensitively as substrings of the descriptive attributes above.
    body_part_keywords: tuple[str, ...] = ("KNEE", "KNIE", "GENOU", "GINOCCHIO", "RODILLA", "JOELHO", "KNÄ")

    def __post_init__(self) -> None:
        if not self.modalities or not all(self.modalities):
            raise ValueError("modalities: list at least one modality")
        if not self.body_part_keywords or not all(self.body_part_keywords):
            raise ValueError("body_part_keywords: list at least one non-empty keyword")

    def reason_to_skip(self, header: Dataset) -> str | None:
        """None when `header` should be graded, else a one-line reason."""
        if str(header.get("Manufacturer", "")) == MANUFACTURER:
            return "one of knee-node's own outputs"
        sop_class = UID(str(header.get("SOPClassUID", "")))
        if sop_class not in RADIOGRAPH_CLASSES:
            return f"not a CR/DX radiograph (SOP class {sop_class.name or 'missing'})"
        modality = str(header.get("Modality", "")).upper()
        if modality not in self.modalities:
            return f"modality {modality or 'missing'} is not one of {', '.join(self.modalities)}"
        described = " ".join(str(header.get(k, "")) for k in DESCRIPTIVE_KEYWORDS).upper()
        if not any(keyword.upper() in described for keyword in self.body_part_keywords):
            return f"not a knee examination (body part {header.get('BodyPartExamined', '') or 'missing'})"
        return None
