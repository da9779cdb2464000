"""(b) Where a radiograph's time goes, and how long it takes end to end; (c) sustained throughput; (d) peak RSS.

Stage split: the node's own stage code in this process, one radiograph at a time (the batch a lone radiograph
gets): decode (at the resolution the analysis needs), localize, crop + model + Grad-CAM, SC, SR and SEG build,
durable write of all three, delivery by the real Dispatcher to a pynetdicom Storage SCP.  The reference is the
model's plain forward (no Grad-CAM) on the same batch, at the node's precision (its autocast).

End to end: `knee-node serve` with the default worker settings, fed over C-STORE one radiograph at a time; the
latency runs from the C-STORE acknowledgement to the SR's arrival at the destination.  Throughput: all
radiographs sent at once (a burst), from the first send to the last SR in, each one's latency from the burst's
start; the node's CPU time per radiograph beside it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pynetdicom import evt

from bench.inputs import fresh_copies
from bench.measure import cpu_seconds, percentile
from node.analysis.decode import read_radiograph
from node.analysis.grading import Analyzer
from node.analysis.model import Grader, autocast, model_inputs
from node.config import Config, Destination, WorkerConfig
from node.dispatch import BATCH, Dispatcher
from node.infra.audit import AuditLog
from node.infra.metrics import Metrics
from node.queue import DELIVER, DeliverJob, open_queue
from node.report import Equipment
from node.report.outbox import Outbox
from node.report.sc import build_sc
from node.report.seg import build_seg
from node.report.sr import build_sr
from node.report.uids import derived_uid
from node.scu import send
from tests.helpers import NodeProcess, StoreScp, memory_mb

STAGES = ("decode", "localize", "model + Grad-CAM", "SC build", "SR build", "SEG build", "write", "send")
RESULT_TIMEOUT = 120.0  # seconds for one SR to arrive before the run counts as failed


class ResultsScp(StoreScp):
    """The results' destination: notes when each instance arrives and keeps nothing (decoding 10 MB SCs here
    would only load the machine the node runs on)."""

    def __init__(self, folder: Path) -> None:
        super().__init__(folder, ae_title="DEST")
        self.arrivals: dict[str, float] = {}
        self.arrived = threading.Condition()

    def on_store(self, event: evt.Event) -> int:
        with self.arrived:
            self.arrivals[str(event.request.AffectedSOPInstanceUID)] = time.monotonic()
            self.arrived.notify_all()
        return 0x0000

    def wait(self, uid: str) -> float:
        """When `uid` arrived (monotonic clock); waits for it."""
        with self.arrived:
            if not self.arrived.wait_for(lambda: uid in self.arrivals, RESULT_TIMEOUT):
                raise TimeoutError(f"no result {uid} within {RESULT_TIMEOUT} s")
            return self.arrivals[uid]

    def destination(self) -> Destination:
        return Destination(self.ae_title, "127.0.0.1", self.port)


@contextmanager
def timed(into: dict[str, list[float]], stage: str, device: torch.device) -> Iterator[None]:
    """Wall and CPU (this process, all threads) time of the block, appended to into[stage] as (wall, cpu)."""
    wall, cpu = time.perf_counter(), time.process_time()
    yield
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    into.setdefault(stage, []).append((time.perf_counter() - wall, time.process_time() - cpu))


@contextmanager
def spy(owner: object, method: str, into: dict[str, list[tuple[float, float]]], stage: str, device: torch.device,
        arguments: list[Any] | None = None) -> Iterator[None]:
    """Within the block, calls of owner.method are timed into into[stage] (and their first argument kept), so
    that the node's own code runs once, unchanged, and its inner stages are still measured."""
    original = getattr(owner, method)

    def timed_call(*args: Any, **kwargs: Any) -> Any:
        if arguments is not None:
            arguments.append(args[0])
        with timed(into, stage, device):
            return original(*args, **kwargs)

    setattr(owner, method, timed_call)
    try:
        yield
    finally:
        delattr(owner, method)  # the class's method again


def summary(samples: list[tuple[float, float]]) -> dict[str, float]:
    walls, cpus = [w for w, _ in samples], [c for _, c in samples]
    return {"wall_ms": 1000 * percentile(walls, 50), "cpu_ms": 1000 * percentile(cpus, 50)}


def stage_split(analyzer: Analyzer, copies: list[tuple[Path, str]], results: ResultsScp,
                work: Path) -> tuple[dict[str, Any], list[np.ndarray]]:
    """Median wall and CPU ms per stage over `copies` (the first is a warm-up and not counted), and the batch of
    crops each radiograph gave the model."""
    grader, spec, equipment = analyzer.grader, analyzer.spec, Equipment(name="KNEE_NODE")
    config = Config(data_dir=work, destinations=(results.destination(),))
    queue = open_queue(config)
    dispatcher = Dispatcher(config, queue, Metrics(), AuditLog(work))
    outbox = Outbox([work])
    samples: dict[str, list[tuple[float, float]]] = {}
    batches, knees = [], []
    try:
        for index, (path, _) in enumerate(copies):
            times: dict[str, list[tuple[float, float]]] = {}
            with timed(times, "decode", grader.device):
                radiograph = read_radiograph(path, analyzer.resolution_mm)
            crops: list[np.ndarray] = []
            with (spy(analyzer.localizer, "find_knees", times, "localize", grader.device),
                  spy(grader, "predict", times, "model + Grad-CAM", grader.device, crops)):
                analysis = analyzer.analyze([radiograph])[0]
            with timed(times, "SC build", grader.device):
                sc = build_sc(analysis, spec, equipment)
            with timed(times, "SR build", grader.device):
                sr = build_sr(analysis, spec, equipment)
            with timed(times, "SEG build", grader.device):
                seg = [build_seg(analysis, spec, equipment)] if analysis.knees else []
            with timed(times, "write", grader.device):
                written = [(output, outbox.write(output)[0]) for output in (sr, sc, *seg)]  # the worker's order
            for output, file in written:
                queue.put(f"{output.SOPInstanceUID}@DEST", DeliverJob(
                    path=str(file), destination="DEST", sop_instance_uid=output.SOPInstanceUID, source=path.name,
                    result_at=time.time()))
            with timed(times, "send", grader.device):
                dispatcher.deliver("DEST", queue.claim(DELIVER, BATCH))
            if index:  # the first radiograph warms caches and lazy imports up
                for stage, values in times.items():
                    samples.setdefault(stage, []).extend(values)
                batches.extend(crops)
                knees.append(len(analysis.knees))
    finally:
        dispatcher.close()  # the association it keeps open between radiographs
        queue.close()
    stages = {stage: summary(samples[stage]) for stage in STAGES}
    total = sum(stage["wall_ms"] for stage in stages.values())
    for stage in stages.values():
        stage["share"] = stage["wall_ms"] / total
    return {"radiographs": len(knees), "knees_per_radiograph": float(np.mean(knees)),
            "stages": stages, "sum_of_stages_ms": total}, batches


def model_reference(grader: Grader, batches: list[np.ndarray]) -> dict[str, float]:
    """Median ms of the plain forward and of forward + Grad-CAM on the same batches, at the node's precision."""
    samples: dict[str, list[tuple[float, float]]] = {}
    on = grader.device
    with torch.inference_mode(), autocast(on):
        grader.module(model_inputs(batches[0], grader.spec.input_size, on))  # warm-up
        for crops in batches:
            inputs = model_inputs(crops, grader.spec.input_size, on)
            with timed(samples, "forward", on):
                grader.module(inputs)
            with timed(samples, "forward + Grad-CAM", on):
                grader.module.forward_with_cam(inputs)
    return {"forward_ms": summary(samples["forward"])["wall_ms"],
            "forward_with_cam_ms": summary(samples["forward + Grad-CAM"])["wall_ms"]}


def end_to_end(model_dir: Path, device: str, sources: dict[str, list[Path]], count: int, version: str,
               results: ResultsScp, work: Path, policy: WorkerConfig | None = None) -> dict[str, Any]:
    """Latency (one at a time) and throughput (all at once) through `knee-node serve`, per input syntax, with the
    batching policy (batch_size, max_wait_ms) and threads of `policy` (the defaults unless given)."""
    policy = policy or WorkerConfig()
    worker = {"device": device, "threads": policy.threads, "batch_size": policy.batch_size,
              "max_wait_ms": policy.max_wait_ms}
    node = NodeProcess(work / "node", model_dir, log_level="INFO", worker=worker,
                       destinations=[{"ae_title": "DEST", "host": "127.0.0.1", "port": results.port}]).start()
    assert node.process is not None
    pid = node.process.pid
    outcome: dict[str, Any] = {"worker": worker}
    try:
        for name, paths in sources.items():
            copies = fresh_copies(paths, work / f"{name}-latency", count + 1)
            latencies = []
            for index, ((_, uid), sent) in enumerate(zip(copies, send([p for p, _ in copies], node.peer(),
                                                                          "STORESCU"), strict=True)):
                acknowledged = time.monotonic()
                if sent.status != 0x0000:
                    raise RuntimeError(f"node answered {sent.status} ({sent.reason})")
                arrived = results.wait(derived_uid(uid, version, "sr"))
                if index:  # the first warms the node up
                    latencies.append(arrived - acknowledged)
            copies = fresh_copies(paths, work / f"{name}-throughput", count)
            cpu, started = cpu_seconds(pid), time.monotonic()
            failed = [sent for sent in send([p for p, _ in copies], node.peer(), "STORESCU") if sent.status != 0]
            if failed:
                raise RuntimeError(f"node refused {len(failed)} radiographs ({failed[0].reason})")
            burst = [results.wait(derived_uid(uid, version, "sr")) - started for _, uid in copies]
            last = started + max(burst)
            for _, uid in copies:  # the node's CPU time counts the SCs' delivery too
                results.wait(derived_uid(uid, version, "sc"))
            outcome[name] = {
                "radiographs": len(latencies), "p50_s": percentile(latencies, 50), "p95_s": percentile(latencies, 95),
                "latencies_s": latencies, "burst_p50_s": percentile(burst, 50), "burst_p95_s": percentile(burst, 95),
                "throughput_radiographs": count, "per_minute": 60 * count / (last - started),
                "node_cpu_s_per_radiograph": (cpu_seconds(pid) - cpu) / count}
        outcome["peak_rss_mb"] = memory_mb(pid, "VmHWM")
    finally:
        node.stop()
    return outcome
