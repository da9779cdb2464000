"""`python -m bench`: the node against DCMTK and against its own model, every figure from one run.

(a) ingest, storescu -> storescp vs storescu -> the node's SCP; (b) per-radiograph stage split and end-to-end
latency against the model's forward; (c) sustained throughput; (d) peak RSS; (e) the Orthanc round trip (upload
to the SR stored back) beside the node's own end to end; on a CUDA machine also the model's crops/s at batch 64.
Prints markdown tables (the layout of BENCHMARKS.md), the targets of issue 22 as ratios within the run, and
writes everything, with the machine and software it ran on, to a JSON file.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from typing import Any

import torch

from bench.gpu import model_on_gpu
from bench.ingest import measure_ingest
from bench.inputs import fresh_copies, make_sources
from bench.pipeline import STAGES, ResultsScp, end_to_end, model_reference, stage_split
from bench.round_trip import round_trip
from node.analysis.grading import Analyzer
from node.analysis.model import SPEC_FILE, Grader, ModelSpec
from node.config import DEFAULT_MODEL_DIR
from tests.helpers import random_model
from tools import KNEE_KL, REPO

# Issue 22: ratios within one run, so that they hold on a busy machine too.
TARGETS = {"ingest_ratio": 1.5, "e2e_over_compute": 1.5, "jpeg2000_over_uncompressed": 1.5,
           "cpu_s_uncompressed": 0.11, "cpu_s_jpeg2000": 0.2, "model_over_forward": 1.2, "orthanc_over_e2e": 2.0,
           "gpu_cam_crops_per_s": 3000.0}
COMPUTE = ("decode", "localize", "model + Grad-CAM")  # the irreducible work of a radiograph


def choose_model(requested: Path | None, work: Path) -> tuple[Path, str]:
    """The model asked for; else the bundled one when trained; else random weights at the real input size."""
    if requested is not None:
        return requested.resolve(), "given"  # the node under test runs in its own folder
    if (DEFAULT_MODEL_DIR / SPEC_FILE).is_file():
        return DEFAULT_MODEL_DIR, "bundled"
    return random_model(work / "random-model", input_size=224), "random weights (no bundled model yet)"


def environment(model_dir: Path, weights: str) -> dict[str, Any]:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    memory_kb = int(Path("/proc/meminfo").read_text().split()[1])
    dcmtk = subprocess.run(["storescp", "--version"], capture_output=True, text=True).stdout.splitlines()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
    dirty = subprocess.run(["git", "status", "--porcelain"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    spec = ModelSpec.read(model_dir / SPEC_FILE)
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"), "cpu": cpu, "cores": os.cpu_count(),
        "memory_gb": round(memory_kb / 2**20, 1), "load_average_start": os.getloadavg(),
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "python": platform.python_version(), "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
        "threading": {name: os.environ.get(name, "")
                      for name in ("OMP_WAIT_POLICY", "OPJ_NUM_THREADS", "OPENBLAS_NUM_THREADS")},
        "pydicom": version("pydicom"), "pynetdicom": version("pynetdicom"), "highdicom": version("highdicom"),
        "dcmtk": (dcmtk or ["?"])[0].strip("$ "),
        "commit": commit.stdout.strip() + (" (modified tree)" if dirty else ""),
        "model": {"path": str(model_dir), "weights": weights, "name": spec.name, "version": spec.version,
                  "input_size": spec.input_size},
    }


def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    model_dir, weights = choose_model(args.model, work)
    report: dict[str, Any] = {"environment": environment(model_dir, weights),
                              "settings": {"instances": args.instances, "radiographs": args.radiographs}}
    say("making test radiographs")
    ingest_source, sources = make_sources(args.data / "val", work / "sources")
    say("(a) ingest")
    report["ingest"] = measure_ingest(ingest_source, args.instances, model_dir, work / "ingest")
    version_ = report["environment"]["model"]["version"]
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    report["stages"], report["end_to_end"] = {}, {}
    results = ResultsScp(work / "results").start()
    try:
        for device in devices:
            report["stages"][device] = {}
            analyzer = Analyzer(Grader(model_dir, device=device))
            for name, paths in sources.items():
                say(f"(b) stage split, {device}, {name}")
                folder = work / f"stages-{device}-{name}"
                split, batches = stage_split(analyzer, fresh_copies(paths, folder / "in", args.radiographs + 1),
                                             results, folder)
                report["stages"][device][name] = split | model_reference(analyzer.grader, batches)
            say(f"(b, c, d) end to end and throughput, {device}")
            report["end_to_end"][device] = end_to_end(model_dir, device, sources, args.radiographs, version_,
                                                      results, work / f"e2e-{device}")
    finally:
        results.stop()
    say("(e) Orthanc round trip, cpu")
    report["orthanc"] = round_trip(model_dir, "cpu", sources, args.radiographs, version_, work / "orthanc")
    if torch.cuda.is_available():
        say("GPU model throughput")
        report["gpu_model"] = model_on_gpu(model_dir)
    report["environment"]["load_average_end"] = os.getloadavg()
    report["targets"] = targets(report)
    return report


def compute_s(split: dict[str, Any]) -> float:
    return sum(split["stages"][stage]["wall_ms"] for stage in COMPUTE) / 1000


def targets(report: dict[str, Any]) -> list[dict[str, Any]]:
    cpu, stages, orthanc = report["end_to_end"]["cpu"], report["stages"]["cpu"], report["orthanc"]
    model = stages["uncompressed"]["stages"]["model + Grad-CAM"]["wall_ms"] / stages["uncompressed"]["forward_ms"]
    ingest = report["ingest"]
    rows = [("ingest / storescp tuned", ingest["node"]["mb_per_s"] / ingest["storescp_tuned"]["mb_per_s"], ">=",
             TARGETS["ingest_ratio"]),
            ("e2e p50 / (decode + localize + model), uncompressed",
             cpu["uncompressed"]["p50_s"] / compute_s(stages["uncompressed"]), "<=", TARGETS["e2e_over_compute"]),
            ("e2e p50 JPEG 2000 / uncompressed", cpu["jpeg2000"]["p50_s"] / cpu["uncompressed"]["p50_s"], "<=",
             TARGETS["jpeg2000_over_uncompressed"]),
            ("node CPU s / radiograph, uncompressed", cpu["uncompressed"]["node_cpu_s_per_radiograph"], "<=",
             TARGETS["cpu_s_uncompressed"]),
            ("node CPU s / radiograph, JPEG 2000", cpu["jpeg2000"]["node_cpu_s_per_radiograph"], "<=",
             TARGETS["cpu_s_jpeg2000"]),
            ("model stage / bare forward (same batch, precision)", model, "<=", TARGETS["model_over_forward"]),
            *[(f"Orthanc round trip p50 / node e2e p50, {name}", orthanc[name]["lone_p50_s"] / cpu[name]["p50_s"],
               "<=", TARGETS["orthanc_over_e2e"]) for name in orthanc]]
    if "gpu_model" in report:
        best = max(max(row.get("eager_crops_per_s", 0), row.get("cuda_graph_crops_per_s", 0))
                   for row in report["gpu_model"]["rows"] if row["kind"] != "forward")
        rows.append(("GPU model + Grad-CAM, batch 64 (crops/s)", best, ">=", TARGETS["gpu_cam_crops_per_s"]))
    return [{"target": name, "measured": value, "goal": f"{sign} {goal:g}",
             "met": value >= goal if sign == ">=" else value <= goal} for name, value, sign, goal in rows]


def table(header: list[str], rows: list[list[Any]]) -> str:
    def cell(value: Any) -> str:
        return f"{value:.3g}" if isinstance(value, float) else str(value)
    lines = [header, ["---"] * len(header), *[[cell(v) for v in row] for row in rows]]
    return "\n".join("| " + " | ".join(line) + " |" for line in lines)


def render(report: dict[str, Any]) -> str:
    env, ingest = report["environment"], report["ingest"]
    load = f"{env['load_average_start'][0]:.1f} -> {env['load_average_end'][0]:.1f}"
    model = env["model"]
    parts = [
        "### Run", table(["date", "CPU", "cores", "load avg (1 min, start -> end)", "GPU", "torch (threads)",
                          "model", "commit"],
                         [[env["date"], env["cpu"], env["cores"], load, env["gpu"] or "none",
                           f"{env['torch']} ({env['torch_threads']})",
                           f"{model['name']} {model['version']}, {model['input_size']} px, {model['weights']}",
                           env["commit"]]]),
        f"### (a) Ingest: {ingest['instances_per_round']} x {ingest['instance_mb']:.1f} MB DX, storescu on one "
        f"association, median of {ingest['rounds']} rounds",
        table(["receiver", "MB/s", "CPU ms / instance", "peak RSS MB"],
              [[ingest[name]["label"], *[ingest[name][k] for k in ("mb_per_s", "cpu_ms_per_instance", "peak_rss_mb")]]
               for name in ("storescp", "storescp_tuned", "node")]),
        f"Node / the faster storescp ({ingest['ratio']['reference']}): "
        f"**{ingest['ratio']['node_over_reference']:.2f}**",
    ]
    for device, syntaxes in report["stages"].items():
        names = list(syntaxes)
        header = ["stage (ms, median)", *[f"{n} {k}" for n in names for k in ("wall", "CPU", "share")]]
        rows = [[stage, *[v for n in names for v in (syntaxes[n]["stages"][stage]["wall_ms"],
                                                     syntaxes[n]["stages"][stage]["cpu_ms"],
                                                     f"{100 * syntaxes[n]['stages'][stage]['share']:.0f} %")]]
                for stage in STAGES]
        rows.append(["sum of stages", *[v for n in names for v in (syntaxes[n]["sum_of_stages_ms"], "", "")]])
        rows.append(["model forward alone", *[v for n in names for v in (syntaxes[n]["forward_ms"], "", "")]])
        rows.append(["model forward + Grad-CAM", *[v for n in names for v in (syntaxes[n]["forward_with_cam_ms"],
                                                                              "", "")]])
        rows.append(["model stage / bare forward", *[v for n in names for v in (
            syntaxes[n]["stages"]["model + Grad-CAM"]["wall_ms"] / syntaxes[n]["forward_ms"], "", "")]])
        rows.append(["decode + localize + model", *[v for n in names for v in (1000 * compute_s(syntaxes[n]), "",
                                                                               "")]])
        first = syntaxes[names[0]]
        parts += [f"### (b) Stage split on {device}: {first['radiographs']} radiographs per input, "
                  f"{first['knees_per_radiograph']:.1f} knees each, one radiograph per batch", table(header, rows)]
    rows = []
    for device, outcome in report["end_to_end"].items():
        for name in report["stages"][device]:
            e2e = outcome[name]
            forward = report["stages"][device][name]["forward_ms"] / 1000
            rows.append([device, name, e2e["p50_s"], e2e["p95_s"], e2e["p50_s"] / forward, e2e["burst_p50_s"],
                         e2e["burst_p95_s"], e2e["per_minute"], e2e["node_cpu_s_per_radiograph"],
                         outcome["peak_rss_mb"]])
    worker = report["end_to_end"]["cpu"]["worker"]
    parts += [f"### (b, c, d) End to end through `knee-node serve` (batch_size {worker['batch_size']}, "
              f"max_wait_ms {worker['max_wait_ms']}): C-STORE acknowledged -> SR at the destination; burst: all "
              "sent at once, each from the burst's start",
              table(["device", "input", "p50 s", "p95 s", "p50 / forward", "burst p50 s", "burst p95 s",
                     "radiographs/min", "node CPU s / radiograph", "node peak RSS MB"], rows)]
    orthanc, cpu = report["orthanc"], report["end_to_end"]["cpu"]
    parts += ["### (e) Orthanc round trip (cpu): upload to Orthanc -> SR stored in Orthanc, beside the node's own e2e",
              table(["input", "round trip p50 s", "p95 s", "burst p50 s", "burst p95 s", "node e2e p50 s",
                     "round trip / node e2e"],
                    [[name, o["lone_p50_s"], o["lone_p95_s"], o["burst_p50_s"], o["burst_p95_s"],
                      cpu[name]["p50_s"], o["lone_p50_s"] / cpu[name]["p50_s"]] for name, o in orthanc.items()])]
    if "gpu_model" in report:
        gpu = report["gpu_model"]
        parts += [f"### Model on {gpu['device']}, batch {gpu['batch']}, {gpu['input_size']} px",
                  table(["precision", "kind", "eager crops/s", "CUDA graph crops/s", "Grad-CAM cost (eager)",
                         "max |p - p_fp32|"],
                        [[r["precision"], r["kind"], r.get("eager_crops_per_s", r.get("eager_error", "")),
                          r.get("cuda_graph_crops_per_s", r.get("cuda_graph_error", "")), r.get("eager_cam_cost", ""),
                          r["max_probability_difference_vs_fp32"]] for r in gpu["rows"]])]
    parts += ["### Targets", table(["target", "measured", "goal", "met"],
                                   [[t["target"], t["measured"], t["goal"], "yes" if t["met"] else "no"]
                                    for t in report["targets"]])]
    return "\n\n".join(parts) + "\n"


def say(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--instances", type=int, default=20, help="ingest: instances per round (10 MB each)")
    parser.add_argument("--radiographs", type=int, default=12, help="radiographs per stage split, latency and "
                        "throughput run")
    parser.add_argument("--model", type=Path, help="model folder (default: the bundled model, else random weights)")
    parser.add_argument("--data", type=Path, default=KNEE_KL, help="knee-kl folder (its val/ crops make the "
                        "test radiographs)")
    parser.add_argument("--json", type=Path, default=REPO / "results" / "bench.json", help="where to write JSON")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="knee-bench-") as folder:
        report = run(args, Path(folder))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    print(render(report))
    say(f"JSON written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
