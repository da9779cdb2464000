"""The bench's radiographs: composites from tools.synthetic, copied under fresh UIDs for every run."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
from pydicom import Dataset
from pydicom.uid import JPEG2000Lossless, generate_uid

from node.training.data import load_crops
from tools.synthetic import compose, encode

INGEST_SPACING_MM, INGEST_BITS = 0.12, 16  # 2500 x 2000 pixels, 16 bits: a 10 MB DX
PIPELINE_SPACING_MM, PIPELINE_BITS = 0.15, 12  # 2000 x 1600 pixels, 12 bits: a single-knee DX, 6.4 MB
SYNTAXES = {"uncompressed": None, "jpeg2000": JPEG2000Lossless}
DISTINCT = 4  # different knees among the pipeline radiographs


def make_sources(crops_dir: Path, folder: Path, seed: int = 0) -> tuple[Path, dict[str, list[Path]]]:
    """One large DX for ingest, and DISTINCT single-knee DX per pipeline syntax; returns their paths."""
    crops = load_crops(crops_dir)
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    large = compose(crops, [0], rng, spacing_mm=INGEST_SPACING_MM, bits=INGEST_BITS).dataset
    ingest = folder / "ingest.dcm"
    large.save_as(ingest, enforce_file_format=True)
    pipeline: dict[str, list[Path]] = {name: [] for name in SYNTAXES}
    for number, index in enumerate(rng.choice(len(crops.files), DISTINCT, replace=False)):
        knee = compose(crops, [int(index)], rng, spacing_mm=PIPELINE_SPACING_MM, bits=PIPELINE_BITS).dataset
        for name, syntax in SYNTAXES.items():
            path = folder / f"{name}-{number}.dcm"
            (encode(knee, syntax) if syntax else knee).save_as(path, enforce_file_format=True)
            pipeline[name].append(path)
    return ingest, pipeline


def fresh_copies(sources: list[Path], folder: Path, count: int) -> list[tuple[Path, str]]:
    """`count` files cycling through `sources`, each with a new SOP Instance UID: the node sees new work (its
    queue keys and output UIDs derive from it).  Returns (path, SOP Instance UID) pairs."""
    folder.mkdir(parents=True, exist_ok=True)
    datasets: list[Dataset] = [pydicom.dcmread(path) for path in sources]
    copies = []
    for number in range(count):
        dataset = datasets[number % len(datasets)]
        uid = generate_uid()
        dataset.SOPInstanceUID = dataset.file_meta.MediaStorageSOPInstanceUID = uid
        path = folder / f"{number:04d}.dcm"
        dataset.save_as(path, enforce_file_format=True)
        copies.append((path, str(uid)))
    return copies
