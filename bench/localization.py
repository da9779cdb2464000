"""`python -m bench.localization`: the localizer on one single-knee composite per val crop.

The composite's truth is its crop's centre.  knee-kl crops are framed by a detector, and where a crop's joint line
sits varies from crop to crop, so a large error is either the localizer missing the joint or a crop framed away
from the average.  Only the eye tells which reliably (matching the crop on its own with the localizer's template
repeats the localizer's own mistakes), so the bench draws the worst knees: each crop with a red line where the ROI
centre fell.  A well-placed ROI has the joint line a few pixels below its centre, as the typical crop does.
Prints a summary and the worst knees; writes JSON and the sheet.  About 3 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import json
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import cv2
import numpy as np

from node.analysis.decode import decode
from node.analysis.localize import Localizer
from node.training.data import KNEE_KL_FIELD_MM, CropSet, load_crops
from tools import KNEE_KL
from tools.synthetic import compose

CROPS: CropSet = load_crops(KNEE_KL / "val")  # at import, so the worker processes share it
LOCALIZER = Localizer(KNEE_KL_FIELD_MM)
WORST = 8


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


def worst_sheet(indices: np.ndarray, errors: np.ndarray) -> np.ndarray:
    """The crops side by side, each with its centre (grey) and where the ROI centre fell (red)."""
    tiles = []
    for i in indices:
        tile = cv2.cvtColor(CROPS.images[i], cv2.COLOR_GRAY2BGR)
        middle = tile.shape[0] // 2
        roi_row = middle + round(errors[i, 0] * tile.shape[0] / KNEE_KL_FIELD_MM)
        cv2.line(tile, (0, middle), (tile.shape[1], middle), (160, 160, 160), 1)
        cv2.line(tile, (0, roi_row), (tile.shape[1], roi_row), (0, 0, 255), 1)
        cv2.putText(tile, CROPS.files[i], (4, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 255, 255), 1)
        tiles.append(tile)
    return np.hstack(tiles)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("results"), help="folder for localization.json and "
                        "localization-worst.png")
    args = parser.parse_args()
    with ProcessPoolExecutor(2) as pool:
        errors = np.array(list(pool.map(roi_error_mm, range(len(CROPS.files)), chunksize=8)))
    distance = np.hypot(errors[:, 0], errors[:, 1])
    worst = np.argsort(-np.nan_to_num(distance, nan=np.inf))[:WORST]
    print(f"{len(distance)} val crops, one composite each: {int(np.isnan(distance).sum())} not found; ROI centre "
          f"error median {np.nanmedian(distance):.1f} mm, 95th percentile {np.nanpercentile(distance, 95):.1f}, "
          f"{int((distance >= 10).sum())} at 10 mm or more")
    print("| crop | ROI error mm | row error mm |\n|---|---|---|")
    for i in worst:
        print(f"| {CROPS.files[i]} | {distance[i]:.1f} | {errors[i, 0]:+.1f} |")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "localization.json").write_text(json.dumps(
        [{"crop": name, "row_error_mm": float(e[0]), "column_error_mm": float(e[1])}
         for name, e in zip(CROPS.files, errors, strict=True)], indent=1))
    cv2.imwrite(str(args.out / "localization-worst.png"), worst_sheet(worst[~np.isnan(distance[worst])], errors))


if __name__ == "__main__":
    main()
