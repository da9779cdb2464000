"""`python -m bench.batching`: the worker's batching policy (batch_size, max_wait_ms) for a lone radiograph and a burst.

`knee-node serve` as in bench.pipeline's end-to-end run, once per policy, with uncompressed radiographs: e2e p50/p95
one at a time, and all N sent at once (each from the burst's start), radiographs/min and node CPU per radiograph.
Prints a table, writes JSON.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

from bench.__main__ import choose_model, say, table
from bench.inputs import make_sources
from bench.pipeline import ResultsScp, end_to_end
from node.analysis.model import SPEC_FILE, ModelSpec
from node.config import WorkerConfig
from tools import KNEE_KL, REPO

POLICIES = ((1, 0), (8, 0), (8, 50), (16, 0))  # (batch_size, max_wait_ms); (8, 0) is the default


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.batching", description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="model folder (default: the bundled model, else random weights)")
    parser.add_argument("--radiographs", type=int, default=12, help="one at a time, and in the burst")
    parser.add_argument("--json", type=Path, default=REPO / "results" / "batching.json")
    args = parser.parse_args()
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="knee-bench-batching-") as folder:
        work = Path(folder)
        model_dir, _ = choose_model(args.model, work)
        version = ModelSpec.read(model_dir / SPEC_FILE).version
        _, sources = make_sources(KNEE_KL / "val", work / "sources")
        results = ResultsScp(work / "results").start()
        try:
            for batch_size, max_wait_ms in POLICIES:
                say(f"batch_size {batch_size}, max_wait_ms {max_wait_ms}")
                outcome = end_to_end(model_dir, "cpu", {"uncompressed": sources["uncompressed"]}, args.radiographs,
                                     version, results, work / f"e2e-{batch_size}-{max_wait_ms}",
                                     WorkerConfig(batch_size=batch_size, max_wait_ms=max_wait_ms))
                rows.append({"batch_size": batch_size, "max_wait_ms": max_wait_ms} | outcome["uncompressed"]
                            | {"peak_rss_mb": outcome["peak_rss_mb"]})
        finally:
            results.stop()
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(rows, indent=1) + "\n")
    print(table(["batch_size", "max_wait_ms", "lone p50 s", "lone p95 s", "burst p50 s", "burst p95 s",
                 "radiographs/min", "node CPU s / radiograph", "peak RSS MB"],
                [[r["batch_size"], r["max_wait_ms"], r["p50_s"], r["p95_s"], r["burst_p50_s"], r["burst_p95_s"],
                  r["per_minute"], r["node_cpu_s_per_radiograph"], r["peak_rss_mb"]] for r in rows]))


if __name__ == "__main__":
    main()
