"""Shared fixtures: a randomly initialised model folder and knee-kl crops."""

from __future__ import annotations

from pathlib import Path

import pytest

from node.training.data import CropSet, load_crops
from tests.helpers import KNEE_KL, random_model


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return random_model(tmp_path_factory.mktemp("model"))


@pytest.fixture(scope="session")
def val_crops() -> CropSet:
    if not (KNEE_KL / "val" / "labels.csv").is_file():
        pytest.skip(f"knee-kl crops not found at {KNEE_KL}")
    return load_crops(KNEE_KL / "val")
