"""Who made an output and which series it joins: attributes shared by the SC, the SR and the SEG.

Every output names the algorithm that made it as IHE AI Results (AIR) asks: an item of the Contributing Equipment
Sequence with Purpose of Reference (Newcode1, 99IHE, "Processing Algorithm"), the manufacturer, the model's name as
Manufacturer's Model Name, its version as Software Versions, and a Device UID derived from the weights' sha256, so
that it changes whenever the weights do.  The SR repeats the identity in TID 4019 (`algorithm_identification`).
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, field
from typing import Any, Literal

from highdicom.coding_schemes import CodingSchemeIdentificationItem
from highdicom.sr import AlgorithmIdentification, CodedConcept
from pydicom import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import UID

from node import __version__
from node.analysis.model import ModelSpec
from node.report.codes import SCHEME_IDENTIFICATION
from node.report.uids import derived_uid
from node.selection import MANUFACTURER

SC_SERIES_NUMBER = 9901
SR_SERIES_NUMBER = 9902
SEG_SERIES_NUMBER = 9903

# IHE AIR's code for the algorithm among the contributing equipment; 99IHE is declared like our own scheme.
PROCESSING_ALGORITHM = CodedConcept("Newcode1", "99IHE", "Processing Algorithm")
IHE_SCHEME_IDENTIFICATION = CodingSchemeIdentificationItem(
    designator="99IHE", name="IHE Radiology AI Results (AIR) codes", responsible_organization="IHE International")


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
        "coding_schemes": [SCHEME_IDENTIFICATION, IHE_SCHEME_IDENTIFICATION],
    }
    if "SpecificCharacterSet" in header:
        attributes["specific_character_set"] = header.SpecificCharacterSet
    return attributes


def algorithm_uid(spec: ModelSpec) -> UID:
    """The algorithm's Device UID: the same weights always give the same UID, other weights another one."""
    return derived_uid("algorithm", spec.sha256)


def algorithm_equipment(spec: ModelSpec, equipment: Equipment) -> Dataset:
    """The IHE AIR item of the Contributing Equipment Sequence: which algorithm made the output."""
    item = Dataset()
    item.PurposeOfReferenceCodeSequence = [PROCESSING_ALGORITHM]
    item.Manufacturer = equipment.manufacturer
    item.ManufacturerModelName = spec.name
    item.SoftwareVersions = spec.version
    item.DeviceUID = algorithm_uid(spec)
    return item


def add_algorithm_equipment(output: Dataset, spec: ModelSpec, equipment: Equipment) -> None:
    """Append the algorithm's item to the output's Contributing Equipment Sequence (highdicom lists itself there)."""
    output.ContributingEquipmentSequence = [*output.get("ContributingEquipmentSequence", []),
                                            algorithm_equipment(spec, equipment)]


def algorithm_identification(spec: ModelSpec, equipment: Equipment) -> AlgorithmIdentification:
    """TID 4019 for the SR: the same algorithm as the Contributing Equipment item, with the weights' sha256."""
    return AlgorithmIdentification(
        name=spec.name, version=spec.version, manufacturer=equipment.manufacturer,
        family=codes.cid7162.ArtificialIntelligence,
        parameters=[f"weights sha256 {spec.sha256}", f"temperature {spec.temperature}"])
