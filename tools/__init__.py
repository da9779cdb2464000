"""Tooling for tests, benchmarks and the demo (not installed with the node): test radiographs, a local Orthanc."""

from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
KNEE_KL = REPO.parent / "shared" / "datasets" / "knee-kl"  # the development machines' copy of the crops
