"""`python -m bench.localization`: the localizer on one single-knee composite per val crop, against two references.

The composite's truth is its crop's centre.  But knee-kl crops are framed by a detector, and how far a crop's
joint sits from the average crop's varies: the "framing offset" is the row shift at which the mean knee's middle
band (the joint and 28 mm either side) best matches the crop on its own, with the localizer's own match, no
composite around it.  Where the ROI error follows the framing offset, the localizer found the joint where the
average framing puts it, and the miss is the crop's framing; where it does not, the radiograph around the knee
misled it.  Prints a summary and the worst knees; writes JSON.  About 3 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import json
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from node.decode import decode
from node.localize import Localizer, match, vertical_edges
from node.synthetic import compose
from node.training.data import KNEE_KL_FIELD_MM, CropSet, load_crops
from node.training.template import TEMPLATE_SIZE, right_knees
from tests.helpers import KNEE_KL

BAND_ROWS, BAND_COLUMNS = slice(12, 52), slice(8, 56)  # of the 64-pixel template
CROPS: CropSet = load_crops(KNEE_KL / "val")  # at import, so the worker processes share it
LOCALIZER = Localizer(KNEE_KL_FIELD_MM)


def roi_error_mm(index: int) -> tuple[float, float]:
    """(row, column) of the ROI centre minus the crop centre, mm, on a composite of crop `index`."""
    rng = np.random.default_rng(1000 + index)
    composite = compose(CROPS, (index,), rng, spacing_mm=float(rng.uniform(0.12, 0.2)))
    radiograph = decode(composite.dataset)
    rois, _ = LOCALIZER.find_knees(radiograph)
    if not rois:
        return np.nan, np.nan
    (row, col), truth, spacing = rois[0].center, composite.knees[0].center, radiograph.spacing_mm
    return (row - truth[0]) * spacing[0], (col - truth[1]) * spacing[1]


def framing_offsets_mm(crops: CropSet) -> np.ndarray:
    """Row offset of each crop's joint from where the mean crop has it, mm (positive: lower)."""
    band, unit_mm = LOCALIZER.template[BAND_ROWS, BAND_COLUMNS], KNEE_KL_FIELD_MM / TEMPLATE_SIZE
    offsets = []
    for knee in right_knees(crops).astype(np.float32) / 255:
        scores = match(knee, vertical_edges(knee, unit_mm), band, unit_mm)
        row = np.unravel_index(np.argmax(scores), scores.shape)[0]
        offsets.append((row - BAND_ROWS.start) * unit_mm)
    return np.array(offsets)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, default=Path("results/localization.json"))
    args = parser.parse_args()
    with ProcessPoolExecutor(2) as pool:
        errors = np.array(list(pool.map(roi_error_mm, range(len(CROPS.files)), chunksize=8)))
    distance = np.hypot(errors[:, 0], errors[:, 1])
    framing = framing_offsets_mm(CROPS)
    context = np.abs(errors[:, 0] - framing)
    print(f"{len(distance)} val crops, one composite each: {int(np.isnan(distance).sum())} not found; ROI centre "
          f"error median {np.nanmedian(distance):.1f} mm, 95th percentile {np.nanpercentile(distance, 95):.1f}, "
          f"{int((distance >= 10).sum())} at 10 mm or more")
    print(f"framing offsets: 90 % within {np.percentile(np.abs(framing), 90):.1f} mm, "
          f"{int((np.abs(framing) >= 10).sum())} at 10 mm or more; row error minus framing offset: 95th percentile "
          f"{np.nanpercentile(context, 95):.1f} mm, correlation {np.corrcoef(errors[:, 0], framing)[0, 1]:.2f}")
    print("| crop | ROI error mm | row error mm | framing offset mm |\n|---|---|---|---|")
    for i in np.argsort(-np.nan_to_num(distance, nan=np.inf))[:8]:
        print(f"| {CROPS.files[i]} | {distance[i]:.1f} | {errors[i, 0]:+.1f} | {framing[i]:+.1f} |")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps([{"crop": name, "row_error_mm": float(e[0]), "column_error_mm": float(e[1]),
                                      "framing_offset_mm": float(f)}
                                     for name, e, f in zip(CROPS.files, errors, framing, strict=True)], indent=1))


if __name__ == "__main__":
    main()
