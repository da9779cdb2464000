"""`python -m bench.decoding`: decoders per transfer syntax, and what decoding at the analysis's resolution changes.

(1) Decode time of one single-knee DX (2000 x 1600, 0.15 mm, 12 bits; 8 for JPEG baseline) in every transfer
syntax the node accepts: the node's decode at full resolution and at the resolution the analysis needs
(Analyzer.resolution_mm), and for JPEG 2000 the two OpenJPEG bindings at full resolution (Pillow, pylibjpeg) and
Pillow at each reduction.  Median wall and CPU ms of 3, file bytes parsed each time.

(2) Agreement: every radiograph of bench.radiographs' sets analysed from a full-resolution decode and from the
reduced one, as encoded there and as JPEG 2000 lossless: share of knees with the same outcome (grade, or the same
refusal), and how far the ROI centre moved (mm).  Writes JSON.
"""

from __future__ import annotations

import argparse
import io
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import openjpeg
from PIL import Image
from pydicom import Dataset, dcmwrite
from pydicom.encaps import generate_frames
from pydicom.uid import JPEG2000, JPEG2000Lossless

from bench.measure import percentile
from bench.radiographs import sets
from node.analysis.decode import read_radiograph
from node.analysis.grading import Analyzer
from node.analysis.model import Grader
from node.config import DEFAULT_MODEL_DIR
from node.domain import Analysis, Radiograph
from node.instances import read
from node.training.data import load_crops
from tools import KNEE_KL
from tools.synthetic import SYNTAX_BITS, SYNTAXES, compose, encode

SPACING_MM, BITS = 0.15, 12


def as_bytes(dataset: Dataset) -> bytes:
    buffer = io.BytesIO()
    dcmwrite(buffer, dataset, enforce_file_format=True)
    return buffer.getvalue()


def timed(function: Callable[..., object], *args: object, repeats: int = 3) -> dict[str, float]:
    walls, cpus = [], []
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        function(*args)
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return {"wall_ms": round(1000 * percentile(walls, 50), 1), "cpu_ms": round(1000 * percentile(cpus, 50), 1)}


def decoders(resolution_mm: float) -> list[dict[str, Any]]:
    crops = load_crops(KNEE_KL / "val")
    knee = {bits: compose(crops, [3], np.random.default_rng(0), spacing_mm=SPACING_MM, bits=bits).dataset
            for bits in (8, BITS)}
    rows = []
    for syntax in SYNTAXES:
        bits = BITS if BITS in SYNTAX_BITS[syntax] else 8
        data = as_bytes(encode(knee[bits], syntax))
        row: dict[str, Any] = {"syntax": syntax.name, "bits": bits, "mb": round(len(data) / 1e6, 2),
                               "node_full": timed(decode_bytes, data, None),
                               "node_reduced": timed(decode_bytes, data, resolution_mm)}
        row["step"] = decode_bytes(data, resolution_mm).step
        if syntax in (JPEG2000Lossless, JPEG2000):
            frame = next(generate_frames(read(io.BytesIO(data), stop_before_pixels=False).PixelData,
                                         number_of_frames=1))
            row["pylibjpeg_full"] = timed(openjpeg.decode, frame)
            for level in range(3):
                row[f"pillow_reduce_{level}"] = timed(pillow, frame, level)
        rows.append(row)
    return rows


def decode_bytes(data: bytes, resolution_mm: float | None) -> Radiograph:
    return read_radiograph(io.BytesIO(data), resolution_mm)


def pillow(frame: bytes, level: int) -> np.ndarray:
    image = Image.open(io.BytesIO(frame), formats=("JPEG2000",))
    image.reduce = level
    return np.asarray(image)


def outcomes(analysis: Analysis) -> list[tuple[str, str, tuple[float, float]]]:
    """(side, grade or refusal, centre) of each knee found, left to right."""
    found = [(k.roi, f"KL{k.grade}") for k in analysis.knees] + [(k.roi, k.refusal.value) for k in analysis.refused]
    return [(roi.laterality.value, what, roi.center) for roi, what in sorted(found, key=lambda f: f[0].center[1])]


def agreement(analyzer: Analyzer, count: int) -> dict[str, Any]:
    tally: dict[str, Any] = {}
    for name, cases in sets(count).items():
        same = knees = radiographs = 0
        moved: list[float] = []
        differing: list[str] = []
        for case in cases:
            for syntax in (None, JPEG2000Lossless):
                try:
                    data = as_bytes(encode(case.dataset, syntax) if syntax else case.dataset)
                except ValueError:  # already compressed (the shifted set's JPEG baseline)
                    continue
                full, reduced = (decode_bytes(data, resolution) for resolution in (None, analyzer.resolution_mm))
                before, after = (outcomes(a) for a in analyzer.analyze([full, reduced]))
                radiographs += 1
                knees += len(before)
                spacing = full.spacing_mm or (1.0, 1.0)
                for (side, what, centre), match in zip(before, after, strict=False):
                    same += (side, what) == match[:2]
                    moved.append(float(np.hypot((centre[0] - match[2][0]) * spacing[0],
                                                (centre[1] - match[2][1]) * spacing[1])))
                if [o[:2] for o in before] != [o[:2] for o in after]:
                    differing.append(f"{syntax.name if syntax else 'as made'}: {before} -> {after}")
        tally[name] = {"radiographs": radiographs, "knees": knees, "same_outcome": same,
                       "roi_moved_mm_p50": round(percentile(moved, 50), 2),
                       "roi_moved_mm_max": round(max(moved, default=0.0), 2), "differing": differing}
        print(name, json.dumps(tally[name]), flush=True)
    return tally


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.decoding", description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL_DIR)
    parser.add_argument("-n", "--count", type=int, default=40, help="radiographs per set of bench.radiographs")
    parser.add_argument("--out", type=Path, default=Path("results/decoding.json"))
    args = parser.parse_args()
    analyzer = Analyzer(Grader(args.model))
    report = {"resolution_mm": analyzer.resolution_mm, "decoders": decoders(analyzer.resolution_mm)}
    for row in report["decoders"]:
        print(json.dumps(row), flush=True)
    report["agreement"] = agreement(analyzer, args.count)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
