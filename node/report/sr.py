"""The Comprehensive SR (TID 1500) of one radiograph: one measurement group (TID 1501) per graded knee.

The structure is the contract docs/results.md describes; tests/report/test_results_doc.py reads an SR back against it.
"""

from __future__ import annotations

import highdicom as hd
from highdicom.sr import (
    CodeContentItem,
    CodedConcept,
    ContainerContentItem,
    ContentSequence,
    CoordinatesForMeasurement,
    DeviceObserverIdentifyingAttributes,
    FindingSite,
    ImageContentItem,
    ImageRegion,
    LanguageOfContentItemAndDescendants,
    Measurement,
    MeasurementsAndQualitativeEvaluations,
    NumContentItem,
    ObservationContext,
    ObserverContext,
    QualitativeEvaluation,
    RelationshipTypeValues,
    SourceImageForRegion,
    TextContentItem,
    TrackingIdentifier,
)
from highdicom.sr.enum import GraphicTypeValues
from pydicom import Dataset
from pydicom.sr.codedict import codes

from node.analysis.model import ModelSpec
from node.domain import Analysis, KneeResult, Radiograph
from node.report import codes as kl
from node.report.identity import (
    SR_SERIES_NUMBER,
    Equipment,
    add_algorithm_equipment,
    algorithm_identification,
    output_attributes,
    with_type_2,
)
from node.report.uids import derived_uid

ENGLISH = CodedConcept("en-US", "RFC5646", "English (United States)")
QUALITATIVE_EVALUATIONS = CodedConcept("C0034375", "UMLS", "Qualitative Evaluations")
SOURCE = CodedConcept("260753009", "SCT", "Source")
PIXELS = CodedConcept("{pixels}", "UCUM", "Pixels")
MODALITY_NAMES = {"CR": "Computed Radiography", "DX": "Digital Radiography"}

CONTAINS = RelationshipTypeValues.CONTAINS
ACQUISITION_CONTEXT = RelationshipTypeValues.HAS_ACQ_CONTEXT


def build_sr(analysis: Analysis, spec: ModelSpec, equipment: Equipment) -> hd.sr.ComprehensiveSR:
    header = analysis.radiograph.header
    root = ContainerContentItem(name=codes.cid7021.ImagingMeasurementReport, template_id="1500")
    root.ContentSequence = ContentSequence()
    root.ContentSequence.extend(LanguageOfContentItemAndDescendants(ENGLISH))
    root.ContentSequence.extend(ObservationContext(observer_device_context=ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=DeviceObserverIdentifyingAttributes(
            uid=equipment.uid, name=equipment.name, manufacturer_name=equipment.manufacturer,
            model_name=equipment.model_name, serial_number=equipment.serial_number),
    )))
    root.ContentSequence.append(CodeContentItem(name=codes.DCM.ProcedureReported, value=kl.IMAGING_PROCEDURE,
                                                relationship_type=RelationshipTypeValues.HAS_CONCEPT_MOD))
    root.ContentSequence.append(image_library(analysis.radiograph))
    if analysis.knees:
        measurements = ContainerContentItem(name=codes.DCM.ImagingMeasurements, relationship_type=CONTAINS)
        measurements.ContentSequence = ContentSequence()
        for knee in analysis.knees:
            measurements.ContentSequence.extend(measurement_group(knee, header, spec, equipment))
        root.ContentSequence.append(measurements)
    # A refused knee gets no measurement group, only the reason; a radiograph with no knee found, its reason.
    comments = [f"{knee.roi.laterality.word} knee: {knee.refusal.reason}" for knee in analysis.refused]
    if analysis.reason and not analysis.refused:
        comments.append(f"No knee graded: {analysis.reason}")
    if comments:
        evaluations = ContainerContentItem(name=QUALITATIVE_EVALUATIONS, relationship_type=CONTAINS)
        evaluations.ContentSequence = ContentSequence([
            TextContentItem(name=codes.DCM.Comment, value=comment[:1024], relationship_type=CONTAINS)
            for comment in comments])
        root.ContentSequence.append(evaluations)
    sr = hd.sr.ComprehensiveSR(
        evidence=[with_type_2(header)],
        content=root,
        series_number=SR_SERIES_NUMBER,
        is_complete=True,
        is_final=False,
        is_verified=False,
        series_description="knee-node KL grading report",
        **output_attributes(header, spec, equipment, kind="sr"),
    )
    add_algorithm_equipment(sr, spec, equipment)
    return sr


def knee_label(knee: KneeResult) -> str:
    """What a viewer shows for the knee's measurement, e.g. "Right knee: KL 2, 78 %"."""
    return f"{knee.roi.laterality.word} knee: KL {knee.grade}, {100 * knee.confidence:.0f} %"


def measurement_group(knee: KneeResult, header: Dataset, spec: ModelSpec,
                      equipment: Equipment) -> MeasurementsAndQualitativeEvaluations:
    """One knee's TID 1501 group, laid out as docs/results.md describes (and OHIF's SR adapter reads it).

    The knee's box is both the group's region (a SCOORD the group CONTAINS: how OHIF picks its rectangle tool) and
    what the first measurement, the grade number, is INFERRED FROM (where OHIF takes the box's coordinates).  The
    Comment is the label OHIF gives the measurement.
    """
    side = knee.roi.laterality
    source = SourceImageForRegion(referenced_sop_class_uid=header.SOPClassUID,
                                  referenced_sop_instance_uid=header.SOPInstanceUID)
    box = {"graphic_type": GraphicTypeValues.POLYLINE, "graphic_data": knee.roi.corners, "source_image": source}
    grade_number = Measurement(name=kl.KL_GRADE_NUMBER, value=knee.grade, unit=kl.NO_UNITS,
                               referenced_coordinates=[CoordinatesForMeasurement(**box, purpose=kl.IMAGE_REGION)])
    probabilities = [Measurement(name=kl.kl_probability(grade), value=round(100 * p, 2), unit=kl.PERCENT)
                     for grade, p in enumerate(knee.probabilities)]
    group = MeasurementsAndQualitativeEvaluations(
        tracking_identifier=TrackingIdentifier(
            uid=derived_uid(header.SOPInstanceUID, spec.version, "knee", side.value),
            identifier=f"{side.word} knee"),
        finding_type=kl.kl_grade_value(knee.grade),
        finding_sites=[FindingSite(anatomic_location=kl.KNEE_JOINT, laterality=kl.LATERALITY[side])],
        algorithm_id=algorithm_identification(spec, equipment),
        measurements=[
            grade_number,
            Measurement(name=kl.KL_CONFIDENCE, value=round(100 * knee.confidence, 2), unit=kl.PERCENT),
            *probabilities,
            Measurement(name=kl.JOINT_ATTENTION, value=round(100 * knee.attention, 2), unit=kl.PERCENT),
        ],
        qualitative_evaluations=[
            QualitativeEvaluation(name=kl.KL_GRADE, value=kl.kl_grade_value(knee.grade)),
            QualitativeEvaluation(name=kl.RELIABILITY, value=kl.RELIABILITY_VALUES[knee.reliability]),
        ],
    )
    group[0].ContentSequence.extend([
        ImageRegion(**box),
        TextContentItem(name=kl.COMMENT, value=knee_label(knee), relationship_type=CONTAINS),
    ])
    return group


def image_library(radiograph: Radiograph) -> ContainerContentItem:
    """TID 1600 for the one source radiograph, with the TID 1603 descriptors its header actually has.

    (highdicom's ImageLibrary insists on PatientOrientation and ImagerPixelSpacing, which a CR may lack.)
    """
    header = radiograph.header
    modality = str(header.get("Modality", ""))
    descriptors = [
        CodeContentItem(name=codes.DCM.Modality, relationship_type=ACQUISITION_CONTEXT,
                        value=CodedConcept(modality, "DCM", MODALITY_NAMES.get(modality, modality))),
        NumContentItem(name=codes.DCM.PixelDataRows, value=header.Rows, unit=PIXELS,
                       relationship_type=ACQUISITION_CONTEXT),
        NumContentItem(name=codes.DCM.PixelDataColumns, value=header.Columns, unit=PIXELS,
                       relationship_type=ACQUISITION_CONTEXT),
    ]
    orientation = header.get("PatientOrientation")
    if orientation and len(orientation) == 2:
        descriptors += [
            TextContentItem(name=codes.DCM.PatientOrientationRow, value=orientation[0],
                            relationship_type=ACQUISITION_CONTEXT),
            TextContentItem(name=codes.DCM.PatientOrientationColumn, value=orientation[1],
                            relationship_type=ACQUISITION_CONTEXT),
        ]
    if radiograph.spacing_mm:
        row_mm, column_mm = radiograph.spacing_mm
        descriptors += [
            NumContentItem(name=codes.DCM.HorizontalPixelSpacing, value=column_mm,
                           unit=codes.UCUM.Millimeter, relationship_type=ACQUISITION_CONTEXT),
            NumContentItem(name=codes.DCM.VerticalPixelSpacing, value=row_mm,
                           unit=codes.UCUM.Millimeter, relationship_type=ACQUISITION_CONTEXT),
        ]
    image = ImageContentItem(name=SOURCE, referenced_sop_class_uid=header.SOPClassUID,
                             referenced_sop_instance_uid=header.SOPInstanceUID, relationship_type=CONTAINS)
    image.ContentSequence = ContentSequence(descriptors)
    group = ContainerContentItem(name=codes.DCM.ImageLibraryGroup, relationship_type=CONTAINS)
    group.ContentSequence = ContentSequence([image])
    library = ContainerContentItem(name=codes.DCM.ImageLibrary, relationship_type=CONTAINS)
    library.ContentSequence = ContentSequence([group])
    return library
