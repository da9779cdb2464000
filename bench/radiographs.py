"""`python -m bench.radiographs`: what the node grades and refuses on radiographs unlike the training crops.

Every set is built from val crops with tools.synthetic (see its docstring for how a composite is made):

- plain: single and bilateral composites as the suite makes them; every knee should be graded.
- shifted: another site's processing: 8-bit JPEG baseline (lossy), 0.2-0.3 mm pixels, another display curve,
  burned-in text and a ruler; every knee should be graded.
- sizes: knees 0.8-1.25 times the training crops' size, single and bilateral (the two knees' sizes differing by up
  to 25 %); every knee found on its side and graded as well as the model grades the crop itself.
- full-length: hip-to-ankle standing films, 0.15-0.2 mm pixels, ruler and text, knees of different sizes.
- metal: each synthetic implant (knee replacement, unicompartmental, plate and screws, screws) over every knee;
  none should be graded, each with the metal reason.
- negatives: what is not a frontal knee: the WG04 CR images (chest, hand) and composites turned by 90 degrees;
  nothing should be graded.

Per set it prints radiographs, knees, knees found (ROI centre within a quarter field of the truth), side right,
graded, refused by reason, and per-knee accuracy against the model's accuracy on the same crops.  Writes JSON.
"""

from __future__ import annotations

import argparse
import copy
import json
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom import Dataset
from pydicom.data import get_testdata_file
from pydicom.uid import JPEGBaseline8Bit

from node.analysis.decode import decode
from node.analysis.grading import Analyzer
from node.analysis.model import Grader
from node.config import DEFAULT_MODEL_DIR
from node.training.data import KNEE_KL_FIELD_MM, load_crops
from tools import KNEE_KL
from tools.synthetic import METALS, TONES, Composite, KneeTruth, bilateral_pairs, compose, encode

WG04 = ("RG1_UNCR.dcm", "RG3_UNCR.dcm", "RG1_J2KR.dcm", "RG3_J2KR.dcm")


@dataclass(frozen=True)
class Case:
    dataset: Dataset
    knees: tuple[KneeTruth, ...]  # () for a negative
    spacing_mm: float = 0.0


Builder = Callable[[np.random.Generator], Composite]


def composites(build: Builder, count: int, seed: int) -> Iterator[Case]:
    rng = np.random.default_rng(seed)
    for _ in range(count):
        composite = build(rng)
        yield Case(composite.dataset, composite.knees, float(composite.dataset.ImagerPixelSpacing[0]))


def turned(dataset: Dataset) -> Dataset:
    """The radiograph turned by 90 degrees (a knee lying on its side)."""
    rotated = copy.deepcopy(dataset)
    pixels = np.ascontiguousarray(np.rot90(dataset.pixel_array))
    rotated.Rows, rotated.Columns = pixels.shape
    rotated.PixelData = pixels.tobytes()
    return rotated


def sets(count: int) -> dict[str, Iterator[Case]]:
    crops = load_crops(KNEE_KL / "val")
    pairs = bilateral_pairs(crops)

    def single_or_pair(rng: np.random.Generator) -> tuple[int, ...]:
        return pairs[int(rng.integers(len(pairs)))] if rng.random() < 0.5 else (int(rng.integers(len(crops.files))),)

    def factors(rng: np.random.Generator, knees: int) -> tuple[float, ...]:
        first = float(rng.uniform(0.8, 1.25))
        return (first,) if knees == 1 else (first, float(np.clip(first * rng.uniform(0.8, 1.25), 0.8, 1.25)))

    def plain(rng: np.random.Generator) -> Composite:
        return compose(crops, single_or_pair(rng), rng, spacing_mm=float(rng.uniform(0.12, 0.2)))

    def shifted(rng: np.random.Generator) -> Composite:
        composite = compose(crops, single_or_pair(rng), rng, spacing_mm=float(rng.uniform(0.2, 0.3)), bits=8,
                            tone=TONES[int(rng.integers(len(TONES)))], burned_in=True)
        return Composite(encode(composite.dataset, JPEGBaseline8Bit), composite.display, composite.knees)

    def sizes(rng: np.random.Generator) -> Composite:
        indices = single_or_pair(rng)
        return compose(crops, indices, rng, spacing_mm=float(rng.uniform(0.12, 0.2)),
                       size_factors=factors(rng, len(indices)))

    def full_length(rng: np.random.Generator) -> Composite:
        indices = pairs[int(rng.integers(len(pairs)))]
        return compose(crops, indices, rng, spacing_mm=float(rng.uniform(0.15, 0.2)), full_length=True,
                       burned_in=True, size_factors=factors(rng, 2))

    def metal(rng: np.random.Generator) -> Composite:
        return compose(crops, single_or_pair(rng), rng, spacing_mm=float(rng.uniform(0.12, 0.25)),
                       metal=METALS[int(rng.integers(len(METALS)))])

    def negatives() -> Iterator[Case]:
        for name in WG04:
            yield Case(pydicom.dcmread(get_testdata_file(name, download=False)), ())
        for case in composites(plain, max(count - len(WG04), 0), seed=5):
            yield Case(turned(case.dataset), ())

    return {"plain": composites(plain, count, 1), "shifted": composites(shifted, count, 2),
            "sizes": composites(sizes, count, 3), "full-length": composites(full_length, max(count // 4, 1), 4),
            "metal": composites(metal, count, 6), "negatives": negatives()}


def evaluate(analyzer: Analyzer, cases: Iterator[Case], crop_correct: dict[str, bool]) -> dict:
    """Figures of one set; `crop_correct` says whether the model grades each val crop (by file) right."""
    tally: Counter[str] = Counter()
    reasons: Counter[str] = Counter()
    for case in cases:
        radiograph = decode(case.dataset)
        (analysis,) = analyzer.analyze([radiograph])
        tally["radiographs"] += 1
        tally["knees"] += len(case.knees)
        found = [(knee.roi, knee) for knee in analysis.knees] + [(refused.roi, None) for refused in analysis.refused]
        for refused in analysis.refused:
            reasons[refused.refusal.value] += 1
        if not found and analysis.reason:
            reasons[analysis.reason.split(" (")[0]] += 1
        tally["graded"] += len(analysis.knees)
        for truth in case.knees:
            reach = 0.25 * truth.size_factor * KNEE_KL_FIELD_MM / case.spacing_mm
            near = [(roi, knee) for roi, knee in found
                    if np.hypot(roi.center[0] - truth.center[0], roi.center[1] - truth.center[1]) <= reach]
            if not near:
                continue
            roi, knee = near[0]
            tally["found"] += 1
            tally["side_right"] += roi.laterality is truth.laterality
            if knee is not None:
                tally["graded_found"] += 1
                tally["correct"] += knee.grade == truth.grade
                tally["crop_correct"] += crop_correct[truth.file]
    figures = dict(tally)
    figures["refused"] = dict(reasons)
    if tally["graded_found"]:
        figures["accuracy"] = round(tally["correct"] / tally["graded_found"], 4)
        figures["crop_accuracy"] = round(tally["crop_correct"] / tally["graded_found"], 4)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL_DIR)
    parser.add_argument("-n", "--count", type=int, default=100, help="radiographs per set (full-length: a quarter)")
    parser.add_argument("--out", type=Path, default=Path("results/radiographs.json"))
    args = parser.parse_args()
    analyzer = Analyzer(Grader(args.model))
    crops = load_crops(KNEE_KL / "val")
    probabilities, _, _ = analyzer.grader.predict(crops.images)
    crop_correct = dict(zip(crops.files, (probabilities.argmax(1) == crops.grades).tolist(), strict=True))
    results = {}
    for name, cases in sets(args.count).items():
        results[name] = evaluate(analyzer, cases, crop_correct)
        print(name, json.dumps(results[name]), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
