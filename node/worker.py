"""The analysis worker: spooled radiographs in batches through one loaded model, results into the outbox.

A batch is whatever is queued, topped up for at most `max_wait_ms` until `batch_size` jobs are in hand.  Each
radiograph is decoded once; all knees of the batch go through the model together.  The SC and SR are written
durably, and the job is completed in the same queue transaction that queues their deliveries.
"""

from __future__ import annotations

import io
import logging
import threading
import time
from pathlib import Path
from typing import Any

from pydicom import Dataset

from node.analyze import Analyzer
from node.audit import AuditLog
from node.config import Config, Destination
from node.decode import DecodeError, read_radiograph
from node.logs import log_event
from node.metrics import Metrics
from node.queue import ANALYZE, DELIVER, Job, Queue
from node.report import Device, build_outputs, file_name
from node.storage import link_durably, write_durably
from node.types import Analysis

RETRY_DELAY_SECONDS = 30.0  # before a batch that failed as a whole (e.g. out of GPU memory) is tried again


def outbox_folder(data_dir: Path, destination: Destination) -> Path:
    """One folder per destination; the AE title is sanitised since it becomes a file name."""
    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in destination.ae_title)
    return data_dir / "outbox" / safe


def encode(dataset: Dataset) -> bytes:
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


class Worker:
    def __init__(self, config: Config, queue: Queue, analyzer: Analyzer, device: Device, metrics: Metrics,
                 audit: AuditLog) -> None:
        self.config, self.queue, self.analyzer, self.device = config, queue, analyzer, device
        self.metrics, self.audit = metrics, audit
        self.results = config.data_dir / "results"
        self.results.mkdir(parents=True, exist_ok=True)
        for destination in config.destinations:
            outbox_folder(config.data_dir, destination).mkdir(parents=True, exist_ok=True)

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                jobs = self.next_batch(stop)
                if jobs:
                    self.process(jobs)
            except Exception as error:  # the queue itself failing (disk full, broker gone): wait, try again
                log_event("worker_error", logging.ERROR, reason=repr(error), traceback=True)
                stop.wait(RETRY_DELAY_SECONDS)

    def next_batch(self, stop: threading.Event) -> list[Job]:
        size = self.config.worker.batch_size
        jobs = self.queue.claim(ANALYZE, size)
        if not jobs:
            self.queue.wait(0.5)
            return []
        deadline = time.monotonic() + self.config.worker.max_wait_ms / 1000
        while len(jobs) < size and not stop.is_set() and (left := deadline - time.monotonic()) > 0:
            self.queue.wait(left)
            jobs += self.queue.claim(ANALYZE, size - len(jobs))
        return jobs

    def process(self, jobs: list[Job]) -> None:
        decoded, radiographs = [], []
        for job in jobs:
            try:
                encoded = Path(job.payload["path"]).read_bytes()
            except OSError as error:  # shared storage (NFS, SMB) not answering, or not showing the file yet
                log_event("spool_unreadable", logging.WARNING, sop_instance_uid=job.key, reason=repr(error))
                self.fail(job, repr(error))
                continue
            try:
                radiographs.append(read_radiograph(io.BytesIO(encoded)))
                decoded.append(job)
            except DecodeError as error:  # the same bytes will fail the same way: no retry
                self.queue.bury(job, str(error))
                self.metrics.failed.labels("analyze").inc()
                log_event("analysis_failed", logging.WARNING, sop_instance_uid=job.key, reason=str(error))
        try:
            analyses = self.analyzer.analyze(radiographs)
        except Exception as error:
            log_event("batch_failed", logging.ERROR, jobs=len(decoded), reason=repr(error), traceback=True)
            for job in decoded:
                self.fail(job, repr(error))
            return
        for job, analysis in zip(decoded, analyses, strict=True):
            try:
                self.publish(job, analysis)
            except Exception as error:  # one bad header must cost one job, not the worker
                log_event("report_failed", logging.ERROR, sop_instance_uid=job.key, reason=repr(error))
                self.fail(job, repr(error))

    def fail(self, job: Job, reason: str) -> None:
        self.metrics.failed.labels("analyze").inc()
        self.queue.retry(job, reason, RETRY_DELAY_SECONDS)

    def publish(self, job: Job, analysis: Analysis) -> None:
        destinations = self.config.destinations
        deliveries: list[tuple[str, str, dict[str, Any]]] = []
        written = []
        sc, sr = build_outputs(analysis, self.analyzer.spec, self.device)
        for dataset in (sr, sc):  # queued, hence delivered, in this order: the report's kB before the image's MB
            name = file_name(dataset)
            # One hard link per destination: each delivery removes its own, the file goes with the last.
            paths = [outbox_folder(self.config.data_dir, d) / name for d in destinations] or [self.results / name]
            write_durably(paths[0], encode(dataset))
            for path in paths[1:]:
                link_durably(paths[0], path)
            written += [str(path) for path in paths]
            deliveries += [(DELIVER, f"{dataset.SOPInstanceUID}@{destination.ae_title}", {
                "path": str(path), "destination": destination.ae_title, "sop_instance_uid": dataset.SOPInstanceUID,
                "source": job.key, "result_at": time.time()})
                for destination, path in zip(destinations, paths[:len(destinations)], strict=True)]
        self.queue.complete(job, then=deliveries)
        Path(job.payload["path"]).unlink(missing_ok=True)
        self.metrics.processed.labels("ok" if analysis.knees else "skipped").inc()
        self.metrics.receive_to_result.observe(time.time() - job.payload["received_at"])
        grades = [f"{knee.roi.laterality.value}:KL{knee.grade}:{knee.confidence:.2f}:{knee.reliability.value}"
                  for knee in analysis.knees]
        log_event("processed", sop_instance_uid=job.key, patient=job.payload.get("patient", ""), knees=grades,
                  reason=analysis.reason, files=written)
        self.audit.record("result", sop_instance_uid=job.key, patient=job.payload.get("patient", ""),
                          model=f"{self.analyzer.spec.name} {self.analyzer.spec.version}",
                          knees=[{"laterality": k.roi.laterality.value, "grade": k.grade,
                                  "confidence": round(k.confidence, 4), "reliability": k.reliability.value}
                                 for k in analysis.knees],
                          reason=analysis.reason, outputs=[Path(p).name for p in written])
