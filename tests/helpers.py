"""Helpers shared by the tests: paths, a randomly initialised model folder, external tools."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from node.model import KneeGrader, ModelSpec, save_model
from node.training.data import KNEE_KL_FIELD_MM

REPO = Path(__file__).resolve().parent.parent
KNEE_KL = REPO.parent / "shared" / "datasets" / "knee-kl"


def random_model(folder: Path, input_size: int = 224, seed: int = 0) -> Path:
    """A model folder with randomly initialised weights: the real format, meaningless grades."""
    torch.manual_seed(seed)
    spec = ModelSpec(name="test-random", version="0.0.0-test", input_size=input_size,
                     class_names=("KL0", "KL1", "KL2", "KL3", "KL4"), temperature=1.0, field_mm=KNEE_KL_FIELD_MM,
                     attention_threshold=0.2, confidence_threshold=0.3)
    save_model(KneeGrader(), spec, folder)
    return folder


def require_tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} not installed (make test installs it)")
    return path


def dciodvfy_errors(path: Path) -> list[str]:
    """The error lines of dicom3tools' validator (`-new`: the current standard); warnings are not errors."""
    result = subprocess.run([require_tool("dciodvfy"), "-new", str(path)], capture_output=True, text=True)
    return [line for line in (result.stdout + result.stderr).splitlines() if line.startswith("Error")]
