"""The offline path: DICOM files in, SC + SR files out, through the same stages as the network node."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any, Literal

from pydicom import Dataset

from node.analyze import Analyzer
from node.decode import DecodeError, read_header, read_radiograph
from node.report import Device, build_outputs, file_name
from node.selection import SelectionRules
from node.types import Analysis, KneeResult, Radiograph

Status = Literal["ok", "skipped", "error"]


@dataclass
class FileResult:
    file: str
    status: Status
    reason: str = ""
    knees: list[dict[str, Any]] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)


def knee_summary(knee: KneeResult) -> dict[str, Any]:
    return {
        "laterality": knee.roi.laterality.value,
        "grade": knee.grade,
        "confidence": round(knee.confidence, 4),
        "probabilities": [round(p, 4) for p in knee.probabilities],
        "attention": round(knee.attention, 4),
        "reliability": knee.reliability.value,
        "roi": [round(float(v), 1) for v in (*knee.roi.center, *knee.roi.half_size)],
    }


def write_dataset(dataset: Dataset, folder: Path) -> Path:
    path = folder / file_name(dataset)
    dataset.save_as(path, enforce_file_format=True)
    return path


def has_dicom_preamble(path: Path) -> bool:
    """A DICOM Part 10 file: "DICM" after the 128-byte preamble."""
    with path.open("rb") as handle:
        return handle.read(132)[128:] == b"DICM"


def expand(inputs: Iterable[Path]) -> Iterator[Path]:
    """Files as given; folders searched recursively, in a stable order, for DICOM files (a folder's notes,
    JSON or images of other formats are not inputs)."""
    for path in inputs:
        if path.is_dir():
            yield from sorted(p for p in path.rglob("*") if p.is_file() and has_dicom_preamble(p))
        else:
            yield path


def analyze_files(inputs: Iterable[Path], out_dir: Path, analyzer: Analyzer, device: Device,
                  rules: SelectionRules | None, batch_size: int = 8) -> Iterator[FileResult]:
    """One FileResult per input file, in input order; `rules=None` grades whatever decodes (--force)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    files = expand(inputs)
    while batch := list(islice(files, batch_size)):
        pending: list[tuple[Path, Radiograph]] = []
        results: dict[Path, FileResult] = {}
        for path in batch:
            try:
                if rules is not None and (reason := rules.reason_to_skip(read_header(path))):
                    results[path] = FileResult(str(path), "skipped", reason)
                    continue
                pending.append((path, read_radiograph(path)))
            except DecodeError as error:
                results[path] = FileResult(str(path), "error", str(error))
        analyses = analyzer.analyze([radiograph for _, radiograph in pending])
        for (path, _), analysis in zip(pending, analyses, strict=True):
            try:
                results[path] = report(path, analysis, out_dir, analyzer, device)
            except Exception as error:  # a header highdicom refuses must cost one file, not the run
                results[path] = FileResult(str(path), "error", " ".join(f"cannot build results: {error}".split()))
        yield from (results[path] for path in batch)


def report(path: Path, analysis: Analysis, out_dir: Path, analyzer: Analyzer, device: Device) -> FileResult:
    outputs = [str(write_dataset(output, out_dir)) for output in build_outputs(analysis, analyzer.spec, device)]
    knees = [knee_summary(knee) for knee in analysis.knees]
    if analysis.knees:
        return FileResult(str(path), "ok", "", knees, outputs)
    return FileResult(str(path), "skipped", analysis.reason, knees, outputs)
