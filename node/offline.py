"""The offline path: DICOM files in, result files (SR, SC, SEG) out, through the same pipeline as the network node."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any, Literal

from node.analysis.grading import Analyzer
from node.instances import DecodeError, read_header
from node.pipeline import Failed, run_batch
from node.report import Equipment
from node.report.outbox import Outbox
from node.selection import SelectionRules

Status = Literal["ok", "skipped", "error"]


@dataclass
class FileResult:
    file: str
    status: Status
    reason: str = ""
    knees: list[dict[str, Any]] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)


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


def analyze_files(inputs: Iterable[Path], out_dir: Path, analyzer: Analyzer, equipment: Equipment,
                  rules: SelectionRules | None, batch_size: int = 8) -> Iterator[FileResult]:
    """One FileResult per input file, in input order; `rules=None` grades whatever decodes (--force)."""
    outbox = Outbox([out_dir])
    files = expand(inputs)
    while batch := list(islice(files, batch_size)):
        results: dict[Path, FileResult] = {}
        selected = []
        for path in batch:
            try:
                if rules is not None and (reason := rules.reason_to_skip(read_header(path))):
                    results[path] = FileResult(str(path), "skipped", reason)
                else:
                    selected.append(path)
            except DecodeError as error:
                results[path] = FileResult(str(path), "error", str(error))
        for path, outcome in zip(selected, run_batch(selected, analyzer, equipment), strict=True):
            if isinstance(outcome, Failed):
                results[path] = FileResult(str(path), "error", outcome.reason)
                continue
            analysis = outcome.analysis
            try:
                outputs = [str(outbox.write(dataset)[0]) for dataset in outcome.outputs]
            except OSError as error:
                results[path] = FileResult(str(path), "error", f"cannot write results: {error}")
                continue
            results[path] = FileResult(str(path), "ok" if analysis.knees else "skipped", analysis.reason,
                                       analysis.summaries(), outputs)
        yield from (results[path] for path in batch)
