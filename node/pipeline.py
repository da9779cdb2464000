"""The one decode -> analyze -> report sequence, shared by the worker and `knee-node analyze`.

Each radiograph is decoded once, all knees of the batch go through the model together, and each radiograph gets
its SC and SR.  A radiograph that cannot be decoded or reported costs that radiograph only; a failing model pass
(out of memory, say) raises, and the caller decides about the whole batch.
"""

from __future__ import annotations

from collections.abc import Sequence
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
    sc: Dataset
    sr: Dataset


@dataclass(frozen=True)
class Failed:
    stage: Literal["decode", "report"]  # decode: the same bytes fail the same way; report: may be retried
    reason: str  # one line


Outcome = Reported | Failed


def run_batch(sources: Sequence[Path | BinaryIO], analyzer: Analyzer, equipment: Equipment) -> list[Outcome]:
    """One outcome per source, in order."""
    outcomes: dict[int, Outcome] = {}
    decoded: dict[int, Radiograph] = {}
    for index, source in enumerate(sources):
        try:
            decoded[index] = read_radiograph(source)
        except DecodeError as error:
            outcomes[index] = Failed("decode", str(error))
    analyses = analyzer.analyze(list(decoded.values()))
    for index, analysis in zip(decoded, analyses, strict=True):
        try:
            outcomes[index] = Reported(analysis, *build_outputs(analysis, analyzer.spec, equipment))
        except Exception as error:  # a header highdicom refuses must cost one radiograph, not the batch
            outcomes[index] = Failed("report", " ".join(f"cannot build results: {error}".split()))
    return [outcomes[index] for index in range(len(sources))]
