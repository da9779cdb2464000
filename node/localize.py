"""Find the knee joints on a radiograph.

Placeholder stage: one ROI of the model's physical field, centred on the image, laterality from the header.
"""

from __future__ import annotations

from node.types import KneeRoi, Laterality, Radiograph

ASSUMED_SPACING_MM = 0.15  # typical DR/CR detector pitch, used when the header gives no usable spacing


def find_knees(radiograph: Radiograph, field_mm: float) -> tuple[list[KneeRoi], str]:
    """The knee ROIs of `radiograph`, or no ROI and the reason."""
    header = radiograph.header
    side = str(header.get("ImageLaterality") or header.get("Laterality") or "").upper()
    if side not in ("R", "L"):
        return [], f"knee laterality not stated (ImageLaterality {side or 'missing'})"
    row_mm, col_mm = radiograph.spacing_mm or (ASSUMED_SPACING_MM, ASSUMED_SPACING_MM)
    rows, columns = radiograph.image.shape
    half = (field_mm / 2 / row_mm, field_mm / 2 / col_mm)
    return [KneeRoi(center=(rows / 2, columns / 2), half_size=half, laterality=Laterality(side),
                    confidence=1.0)], ""
