"""The model alone on a CUDA device: crops/s at batch 64 for the plain forward and for forward + Grad-CAM, in
fp32, bf16 and fp16 (autocast, as the node runs it), eager and replayed from a CUDA graph (fixed batch shape).

Only where torch.cuda.is_available().  Each figure is the mean of REPEATS calls timed with CUDA events after
WARMUP calls; the probabilities of each precision are compared with fp32's on the same inputs.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from node.analysis.model import Grader, standardize

BATCH, WARMUP, REPEATS = 64, 5, 30
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


def model_on_gpu(model_dir: Path) -> dict[str, Any]:
    grader = Grader(model_dir, device="cuda")
    module, size = grader.module, grader.spec.input_size
    inputs = standardize(torch.rand(BATCH, 1, size, size, device="cuda")).contiguous(memory_format=torch.channels_last)
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
                        row[f"{mode}_crops_per_s"] = BATCH / seconds
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
    return {"device": torch.cuda.get_device_name(), "batch": BATCH, "input_size": size, "rows": rows}
