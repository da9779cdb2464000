"""`python -m bench.gpu`: the model on a CUDA device, and the end-to-end limit its CPU side sets.

The model alone: crops/s at batch 64 and 256 for the plain forward and for forward + Grad-CAM, in fp32, bf16 and
fp16 (autocast, as the node runs it), eager and replayed from a CUDA graph (fixed batch shape).  Each figure is the
mean of REPEATS calls timed with CUDA events after WARMUP calls; the probabilities of each precision are compared
with fp32's on the same inputs.  The e2e limit: the bench's stage split with the model on the GPU; the CPU work of a
radiograph outside the model (decode, localize, SC, SR, SEG, write) bounds one worker process at 1000 / that many
ms radiographs per second, whatever the GPU.  Only where torch.cuda.is_available(); prints tables, writes JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from bench.inputs import fresh_copies, make_sources
from bench.pipeline import ResultsScp, stage_split
from node.analysis.grading import Analyzer
from node.analysis.model import Grader, standardize
from node.config import DEFAULT_MODEL_DIR
from tools import KNEE_KL, REPO

BATCHES, WARMUP, REPEATS = (64, 256), 5, 30
OUTSIDE_MODEL = ("decode", "localize", "SC build", "SR build", "SEG build", "write")
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def seconds_per_call(run: Callable[[], object]) -> float:
    for _ in range(WARMUP):
        run()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(REPEATS):
        run()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / 1000 / REPEATS


def graphed(run: Callable[[], object]) -> Callable[[], object]:
    """`run` captured once as a CUDA graph (static input and output buffers); returns its replay."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):  # cuDNN picks its algorithms before capture
            run()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        run()
    return graph.replay


def model_on_gpu(model_dir: Path, batch: int = BATCHES[0]) -> dict[str, Any]:
    grader = Grader(model_dir, device="cuda")
    module, size = grader.module, grader.spec.input_size
    inputs = standardize(torch.rand(batch, 1, size, size, device="cuda")).contiguous(memory_format=torch.channels_last)
    rows: list[dict[str, Any]] = []
    with torch.no_grad():
        reference = torch.softmax(module(inputs).float(), 1)
        for precision, dtype in PRECISIONS.items():
            for kind, call in (("forward", module.forward), ("forward + Grad-CAM", module.forward_with_cam)):
                def run(call: Callable[[torch.Tensor], Any] = call, dtype: torch.dtype | None = dtype) -> Any:
                    # cache_enabled=False: autocast's weight cache cannot live inside a CUDA graph.
                    with torch.autocast("cuda", dtype=dtype or torch.float32, enabled=dtype is not None,
                                        cache_enabled=False):
                        return call(inputs)

                output = run()
                logits = output[0] if isinstance(output, tuple) else output
                row: dict[str, Any] = {
                    "precision": precision, "kind": kind,
                    "max_probability_difference_vs_fp32": float((torch.softmax(logits.float(), 1) - reference)
                                                                .abs().max())}
                for mode, timed in (("eager", run), ("cuda_graph", None)):
                    try:
                        seconds = seconds_per_call(timed or graphed(run))
                        row[f"{mode}_crops_per_s"] = batch / seconds
                    except Exception as error:  # a capture failure is a result too: reported, not hidden
                        row[f"{mode}_error"] = " ".join(str(error).split())[:300]
                rows.append(row)
    plain = {r["precision"]: r for r in rows if r["kind"] == "forward"}
    for row in rows:
        if row["kind"] != "forward":
            base = plain[row["precision"]]
            for mode in ("eager", "cuda_graph"):
                if f"{mode}_crops_per_s" in row and f"{mode}_crops_per_s" in base:
                    row[f"{mode}_cam_cost"] = base[f"{mode}_crops_per_s"] / row[f"{mode}_crops_per_s"]
    return {"device": torch.cuda.get_device_name(), "batch": batch, "input_size": size, "rows": rows}


def e2e_limit(model_dir: Path, radiographs: int, work: Path) -> dict[str, Any]:
    """Per input syntax: CPU ms per radiograph outside the model (stage split, model on the GPU) and the
    radiographs/s one worker process can therefore reach."""
    analyzer = Analyzer(Grader(model_dir, device="cuda"))
    _, sources = make_sources(KNEE_KL / "val", work / "sources")
    results = ResultsScp(work / "results").start()
    limits = {}
    try:
        for name, paths in sources.items():
            split, _ = stage_split(analyzer, fresh_copies(paths, work / name / "in", radiographs + 1), results,
                                   work / name)
            cpu_ms = sum(split["stages"][stage]["cpu_ms"] for stage in OUTSIDE_MODEL)
            limits[name] = {"cpu_ms_outside_model": cpu_ms, "radiographs_per_s": 1000 / cpu_ms,
                            "model_wall_ms": split["stages"]["model + Grad-CAM"]["wall_ms"]}
    finally:
        results.stop()
    return limits


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu", description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL_DIR)
    parser.add_argument("--radiographs", type=int, default=12, help="per input syntax for the e2e limit")
    parser.add_argument("--json", type=Path, default=REPO / "results" / "bench-gpu.json")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("bench.gpu: no CUDA device here", file=sys.stderr)
        return 1
    report: dict[str, Any] = {"date": datetime.now(UTC).isoformat(timespec="seconds"),
                              "device": torch.cuda.get_device_name(), "torch": torch.__version__,
                              "command": " ".join(["python -m bench.gpu", *sys.argv[1:]]),
                              "model": [model_on_gpu(args.model, batch) for batch in BATCHES]}
    with tempfile.TemporaryDirectory(prefix="knee-bench-gpu-") as folder:
        report["e2e_limit"] = e2e_limit(args.model, args.radiographs, Path(folder))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    print(f"### Model on {report['device']}, {report['date']}\n")
    print("| batch | precision | kind | eager crops/s | CUDA graph crops/s | max abs p - p_fp32 |\n"
          "| --- | --- | --- | --- | --- | --- |")
    for model in report["model"]:
        for row in model["rows"]:
            print(f"| {model['batch']} | {row['precision']} | {row['kind']} | "
                  f"{row.get('eager_crops_per_s', row.get('eager_error', ''))} | "
                  f"{row.get('cuda_graph_crops_per_s', row.get('cuda_graph_error', ''))} | "
                  f"{row['max_probability_difference_vs_fp32']:.2g} |")
    print("\n| input | CPU ms per radiograph outside the model | e2e limit, radiographs/s (one worker) | "
          "model + Grad-CAM wall ms |\n| --- | --- | --- | --- |")
    for name, limit in report["e2e_limit"].items():
        print(f"| {name} | {limit['cpu_ms_outside_model']:.0f} | {limit['radiographs_per_s']:.1f} | "
              f"{limit['model_wall_ms']:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
