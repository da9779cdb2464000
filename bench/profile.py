"""`python -m bench.profile`: where the analysis of a radiograph spends its time, function by function.

Runs the bench's stage split (decode to delivery, one radiograph at a time, CPU) under cProfile and prints the
functions with the largest own time, as shares of the total: shares stay meaningful on a busy machine, where wall
times do not.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import tempfile
from pathlib import Path

from bench.__main__ import choose_model
from bench.inputs import SYNTAXES, fresh_copies, make_sources
from bench.pipeline import ResultsScp, stage_split
from node.analysis.grading import Analyzer
from node.analysis.model import Grader
from tools import KNEE_KL


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__.splitlines()[0])
    parser.add_argument("--input", choices=list(SYNTAXES), default="uncompressed")
    parser.add_argument("--radiographs", type=int, default=8)
    parser.add_argument("--model", type=Path, help="model folder (default: the bundled model, else random weights)")
    parser.add_argument("--top", type=int, default=30, help="functions to list")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="knee-profile-") as folder:
        work = Path(folder)
        model_dir, _ = choose_model(args.model, work)
        _, sources = make_sources(KNEE_KL / "val", work / "sources")
        copies = fresh_copies(sources[args.input], work / "in", args.radiographs)
        analyzer = Analyzer(Grader(model_dir, device="cpu"))
        results = ResultsScp(work / "results").start()
        profiler = cProfile.Profile()
        try:
            stage_split(analyzer, copies[:2], results, work / "warm-up")  # lazy imports and caches, not profiled
            profiler.enable()
            stage_split(analyzer, copies, results, work)
            profiler.disable()
        finally:
            results.stop()
    stats = pstats.Stats(profiler)
    total = sum(own for _, _, own, _, _ in stats.stats.values())  # type: ignore[attr-defined]
    print(f"{args.radiographs} radiographs ({args.input}), {total:.2f} s profiled; own time by function:")
    entries = stats.stats.items()  # type: ignore[attr-defined]
    for (file, line, name), (_, calls, own, cumulative, _) in sorted(entries, key=lambda e: -e[1][2])[:args.top]:
        print(f"{100 * own / total:5.1f} %  {own:7.3f} s  cum {cumulative:7.3f} s  {calls:7d}x  "
              f"{Path(file).name}:{line} {name}")
    print("\nthe node's functions by cumulative time:")
    ours = [e for e in entries if f"{Path('node')}/" in e[0][0] and "/site-packages/" not in e[0][0]]
    for (file, line, name), (_, calls, _, cumulative, _) in sorted(ours, key=lambda e: -e[1][3])[:args.top]:
        print(f"{100 * cumulative / total:5.1f} %  {cumulative:7.3f} s  {calls:7d}x  "
              f"{file.split('/node/', 1)[1]}:{line} {name}")


if __name__ == "__main__":
    main()
