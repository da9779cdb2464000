"""Who made an output and which series it joins: attributes shared by the SC, the SR and the SEG."""

from __future__ import annotations

import socket
from dataclasses import dataclass, field
from typing import Any, Literal

from pydicom import Dataset
from pydicom.uid import UID

from node import __version__
from node.analysis.model import ModelSpec
from node.report.codes import SCHEME_IDENTIFICATION
from node.report.uids import derived_uid
from node.selection import MANUFACTURER

SC_SERIES_NUMBER = 9901
SR_SERIES_NUMBER = 9902
SEG_SERIES_NUMBER = 9903


@dataclass(frozen=True)
class Equipment:
    """The node as observer (SR) and creator (SC, SR, SEG) of its results."""

    name: str = "KNEE_NODE"
    serial_number: str = field(default_factory=socket.gethostname)
    manufacturer: str = MANUFACTURER
    model_name: str = f"knee-node {__version__}"

    @property
    def uid(self) -> UID:
        return derived_uid("device", self.name, self.serial_number)  # "device": as before the rename, same UID


# Patient and study attributes the outputs copy that are Type 2 in the source's IOD: present, maybe empty.
TYPE_2_COPIED = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "AccessionNumber", "StudyID",
                 "StudyDate", "StudyTime", "ReferringPhysicianName")


def with_type_2(header: Dataset) -> Dataset:
    """The source header with each of TYPE_2_COPIED present, empty where the source has none.

    Anonymisers and some modalities leave them out; highdicom reads them as if always present.  The outputs then
    copy what the source has and leave the rest empty, as Type 2 allows.
    """
    complete = Dataset(dict(header))  # a new mapping of the same elements: the source stays as it is
    for keyword in TYPE_2_COPIED:
        if keyword not in complete:
            setattr(complete, keyword, None)
    return complete


def output_attributes(header: Dataset, spec: ModelSpec, equipment: Equipment,
                      kind: Literal["sc", "sr", "seg"]) -> dict[str, Any]:
    """UIDs derived from (source, model version), equipment, and the source's character set."""
    attributes: dict[str, Any] = {
        # One result series per source series, one result instance per source instance.
        "series_instance_uid": derived_uid(header.SeriesInstanceUID, spec.version, kind, "series"),
        "sop_instance_uid": derived_uid(header.SOPInstanceUID, spec.version, kind),
        "instance_number": max(1, int(header.get("InstanceNumber") or 1)),
        "manufacturer": equipment.manufacturer,
        "manufacturer_model_name": equipment.model_name,
        "device_serial_number": equipment.serial_number,
        "software_versions": f"{spec.name} {spec.version}",
        "coding_schemes": [SCHEME_IDENTIFICATION],
    }
    if "SpecificCharacterSet" in header:
        attributes["specific_character_set"] = header.SpecificCharacterSet
    return attributes
