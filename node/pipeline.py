"""The one decode -> analyze -> report sequence, shared by the worker and `knee-node analyze`.

Each radiograph is decoded once, at the resolution the analysis needs (Analyzer.resolution_mm; the SC is rendered
from the same image), all knees of the batch go through the model together, and each radiograph gets its results
(SR, SC, SEG).  A radiograph that cannot be decoded or reported costs that radiograph only; a failing model pass
(out of memory, say) raises, and the caller decides about the whole batch.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Literal

from pydicom import Dataset

from node.analysis.decode import read_radiograph
from node.analysis.grading import Analyzer
from node.domain import Analysis, Radiograph
from node.instances import DecodeError
from node.report import Equipment, build_outputs


@dataclass(frozen=True)
class Reported:
    analysis: Analysis
    outputs: tuple[Dataset, ...]  # SR, SC and, when a knee is graded, SEG (node.report.build_outputs)


@dataclass(frozen=True)
class Failed:
    stage: Literal["decode", "report"]  # decode: the same bytes fail the same way; report: may be retried
    reason: str  # one line


Outcome = Reported | Failed


def run_batch(sources: Sequence[Path | BinaryIO], analyzer: Analyzer, equipment: Equipment) -> Iterator[Outcome]:
    """One outcome per source, in order.  Decoding and the model pass happen now (a failing model pass raises
    here); each radiograph's results are built as the caller takes its outcome, so the first result can go out
    while the others are still being built."""
    failed: dict[int, Failed] = {}
    decoded: dict[int, Radiograph] = {}
    for index, source in enumerate(sources):
        try:
            decoded[index] = read_radiograph(source, analyzer.resolution_mm)
        except DecodeError as error:
            failed[index] = Failed("decode", str(error))
    analyses = dict(zip(decoded, analyzer.analyze(list(decoded.values())), strict=True))

    def report() -> Iterator[Outcome]:
        for index in range(len(sources)):
            outcome = failed.get(index)
            if outcome is None:
                analysis = analyses[index]
                try:
                    outcome = Reported(analysis, build_outputs(analysis, analyzer.spec, equipment))
                except Exception as error:  # a header highdicom refuses must cost one radiograph, not the batch
                    outcome = Failed("report", " ".join(f"cannot build results: {error}".split()))
            yield outcome

    return report()
