"""The analysis worker: spooled radiographs in batches through one loaded model, results into the outbox.

A batch is whatever is queued, topped up for at most `max_wait_ms` until `batch_size` jobs are in hand, and goes
through the pipeline (node.pipeline) as a whole.  The SC and SR are written durably, and the job is completed in
the same queue transaction that queues their deliveries.  When the broker goes away mid-batch, the batch is handed
back (Queue.hand_back) and claimed again, by this worker or another, once the broker answers.
"""

from __future__ import annotations

import io
import logging
import threading
import time
from pathlib import Path

from node.analysis.grading import Analyzer
from node.config import Config
from node.infra.audit import AuditLog
from node.infra.logs import log_event
from node.infra.metrics import Metrics
from node.pipeline import Failed, Reported, run_batch
from node.queue import ANALYZE, DeliverJob, Job, Message, Queue, QueueUnavailable
from node.report import Equipment
from node.report.outbox import Outbox

RETRY_DELAY_SECONDS = 30.0  # before a batch that failed as a whole (e.g. out of GPU memory) is tried again
QUEUE_RETRY_SECONDS = 1.0  # between claims while the broker is away: its return is noticed at once


class Worker:
    def __init__(self, config: Config, queue: Queue, analyzer: Analyzer, equipment: Equipment, metrics: Metrics,
                 audit: AuditLog) -> None:
        self.config, self.queue, self.analyzer, self.equipment = config, queue, analyzer, equipment
        self.metrics, self.audit = metrics, audit
        self.outbox = Outbox.of_node(config.data_dir, config.destinations)

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                jobs = self.next_batch(stop)
                if jobs:
                    self.process(jobs)
            except QueueUnavailable as error:  # broker gone: the batch is dropped and handed back once it returns
                log_event("queue_unavailable", logging.WARNING, reason=str(error))
                self.queue.hand_back(ANALYZE)
                stop.wait(QUEUE_RETRY_SECONDS)
            except Exception as error:  # the queue itself failing otherwise (disk full): wait, try again
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
        read, sources = [], []
        for job in jobs:
            try:
                sources.append(io.BytesIO(Path(job.message.path).read_bytes()))
                read.append(job)
            except OSError as error:  # shared storage (NFS, SMB) not answering, or not showing the file yet
                log_event("spool_unreadable", logging.WARNING, sop_instance_uid=job.key, reason=repr(error))
                self.fail(job, repr(error))
        try:
            outcomes = run_batch(sources, self.analyzer, self.equipment)
        except Exception as error:
            log_event("batch_failed", logging.ERROR, jobs=len(read), reason=repr(error), traceback=True)
            for job in read:
                self.fail(job, repr(error))
            return
        for job, outcome in zip(read, outcomes, strict=True):
            if isinstance(outcome, Reported):
                try:
                    self.publish(job, outcome)
                    continue
                except QueueUnavailable:  # not this job's fault: the whole batch goes back
                    raise
                except Exception as error:  # a full disk, say: costs this job, not the worker
                    outcome = Failed("report", repr(error))
            if outcome.stage == "decode":  # the same bytes will fail the same way: no retry
                self.queue.bury(job, outcome.reason)
                self.metrics.failed.labels("analyze").inc()
                log_event("analysis_failed", logging.WARNING, sop_instance_uid=job.key, reason=outcome.reason)
            else:
                log_event("report_failed", logging.ERROR, sop_instance_uid=job.key, reason=outcome.reason)
                self.fail(job, outcome.reason)

    def fail(self, job: Job, reason: str) -> None:
        self.metrics.failed.labels("analyze").inc()
        self.queue.retry(job, reason, RETRY_DELAY_SECONDS)

    def publish(self, job: Job, reported: Reported) -> None:
        destinations, analysis = self.config.destinations, reported.analysis
        deliveries: list[tuple[str, Message]] = []
        written: list[Path] = []
        for dataset in reported.outputs:  # queued, hence delivered, in this order: the report's kB first
            takers = [destinations[index] for index in self.outbox.takes(dataset)] if destinations else []
            paths = self.outbox.write(dataset)
            written += paths
            deliveries += [(f"{dataset.SOPInstanceUID}@{destination.name}",
                            DeliverJob(path=str(path), destination=destination.name,
                                       sop_instance_uid=dataset.SOPInstanceUID, source=job.key, result_at=time.time()))
                           for destination, path in zip(takers, paths[:len(takers)], strict=True)]
        self.queue.complete(job, then=deliveries)
        Path(job.message.path).unlink(missing_ok=True)
        self.metrics.processed.labels("ok" if analysis.knees else "skipped").inc()
        for knee in analysis.refused:
            self.metrics.refused.labels(knee.refusal.value).inc()
        self.metrics.receive_to_result.observe(time.time() - job.message.received_at)
        knees = analysis.summaries()
        log_event("processed", sop_instance_uid=job.key, patient=job.message.patient, knees=knees,
                  reason=analysis.reason, files=[str(path) for path in written])
        self.audit.record("result", sop_instance_uid=job.key, patient=job.message.patient,
                          model=f"{self.analyzer.spec.name} {self.analyzer.spec.version}", knees=knees,
                          reason=analysis.reason, outputs=[path.name for path in written])
