"""A few dozen knee-kl crops in the knee-kl layout: enough to run the training pipeline, not to learn."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import pytest

from tools import KNEE_KL


def small_split(source: Path, target: Path, per_grade: int) -> None:
    """The first `per_grade` crops of each grade: a few dozen crops in the knee-kl layout."""
    with (source / "labels.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    chosen = [row for grade in "01234" for row in [r for r in rows if r["kl_grade"] == grade][:per_grade]]
    for row in chosen:
        (target / row["file"]).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(source / row["file"], target / row["file"])
    with (target / "labels.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, ["file", "kl_grade"])
        writer.writeheader()
        writer.writerows(chosen)


@pytest.fixture(scope="module")
def small_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not (KNEE_KL / "val" / "labels.csv").is_file():
        pytest.skip(f"knee-kl crops not found at {KNEE_KL}")
    root = tmp_path_factory.mktemp("knee-kl-small")
    # Both splits drawn from val/ on purpose: this checks the pipeline, not the model.
    small_split(KNEE_KL / "val", root / "train", per_grade=8)
    small_split(KNEE_KL / "val", root / "val", per_grade=4)
    return root
