"""The dispatcher: C-STORE of result files from the durable outbox to each destination.

Delivery counts only on a Success or Warning status.  Anything else is retried with exponential backoff and
jitter until the attempts run out; then the job waits in dead-letter for `knee-node requeue`.  Output UIDs are
deterministic, so a repeated delivery overwrites rather than duplicates.
"""

from __future__ import annotations

import logging
import math
import random
import threading
import time
from itertools import groupby
from pathlib import Path

from pydicom import dcmread
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import _config
from pynetdicom.association import Association
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    ComprehensiveSRStorage,
    SecondaryCaptureImageStorage,
    SegmentationStorage,
)

from node.config import Config, DispatchConfig
from node.infra.audit import AuditLog
from node.infra.logs import log_event
from node.infra.metrics import Metrics
from node.infra.tls import client_context
from node.queue import DELIVER, Job, Queue, QueueUnavailable, State
from node.scu import client_ae, delivered, send_c_store

BATCH = 32


def backoff(attempts: int, config: DispatchConfig) -> float:
    """Exponential in the attempts made, capped; random in its upper half so retries of many jobs spread out."""
    ceiling = min(config.max_backoff_seconds, config.backoff_seconds * 2 ** (attempts - 1))
    return ceiling / 2 + random.uniform(0, ceiling / 2)


class Dispatcher:
    def __init__(self, config: Config, queue: Queue, metrics: Metrics, audit: AuditLog) -> None:
        self.config, self.queue, self.metrics, self.audit = config, queue, metrics, audit
        self.destinations = {d.ae_title: d for d in config.destinations}
        self.deadline = math.inf  # set when stopping: the end of the outbox flush
        self.tls = client_context(config.tls) if any(d.tls for d in config.destinations) else None
        self.ae = client_ae(config.scp.ae_title, config.dispatch.timeout_seconds)
        for sop_class in (SecondaryCaptureImageStorage, ComprehensiveSRStorage, SegmentationStorage):
            for syntax in (ExplicitVRLittleEndian, ImplicitVRLittleEndian):  # one each: a file streams only as is
                self.ae.add_requested_context(sop_class, syntax)
        # Result files go out as written: pynetdicom streams the dataset from the file rather than decoding and
        # re-encoding it, which cost more than the rest of a delivery (BENCHMARKS.md).  A process-wide setting.
        _config.STORE_SEND_CHUNKED_DATASET = True

    def run(self, stop: threading.Event, drain_seconds: float = 10.0) -> None:
        """Deliver until `stop` is set, then flush: go on with what is due for at most `drain_seconds`."""
        self.deadline = math.inf
        while not self.expired():
            if stop.is_set() and self.deadline == math.inf:
                self.deadline = time.monotonic() + drain_seconds
            try:
                jobs = self.queue.claim(DELIVER, BATCH)
                if not jobs:
                    if stop.is_set():
                        return
                    self.queue.wait(1.0)
                    continue
                jobs.sort(key=lambda job: job.message.destination)
                for ae_title, group in groupby(jobs, key=lambda job: job.message.destination):
                    self.deliver(ae_title, list(group))
            except Exception as error:  # the queue itself failing (disk full, broker gone): wait, try again
                log_event("dispatcher_error", logging.ERROR, reason=repr(error), traceback=True)
                if isinstance(error, QueueUnavailable):  # the batch is dropped: back to the queue once it answers
                    self.queue.hand_back(DELIVER)
                if stop.wait(5.0):
                    return

    def expired(self) -> bool:
        return time.monotonic() >= self.deadline

    def deliver(self, ae_title: str, jobs: list[Job]) -> None:
        destination = self.destinations.get(ae_title)
        if destination is None:
            for job in jobs:
                self.queue.bury(job, f"destination {ae_title} is no longer configured")
            return
        tls = (self.tls, destination.host) if destination.tls and self.tls else None
        association = self.ae.associate(destination.host, destination.port, ae_title=destination.ae_title,
                                        tls_args=tls)
        if not association.is_established:
            for job in jobs:
                self.fail(job, f"cannot associate with {destination}")
            return
        try:
            for index, job in enumerate(jobs):
                if self.expired():
                    self.queue.release(jobs[index:])  # shutting down: these were not tried
                    return
                if association.is_established:
                    self.send(association, job)
                else:
                    self.fail(job, f"association with {destination} lost")
        finally:
            if association.is_established:
                association.release()

    def send(self, association: Association, job: Job) -> None:
        path = Path(job.message.path)
        if not path.is_file():
            self.queue.bury(job, f"result file {path} is missing")
            return
        try:
            response = send_c_store(association, path)  # streamed from the file as written
        except ValueError:  # the destination accepted only implicit VR: decoded and re-encoded on the way
            response = send_c_store(association, dcmread(path))
        status = int(response.Status) if response else None
        if not delivered(status):
            self.fail(job, f"status 0x{status:04X}" if status is not None else "no response")
            return
        self.queue.complete(job)
        path.unlink(missing_ok=True)
        self.metrics.sent.inc()
        self.metrics.result_to_delivered.observe(time.time() - job.message.result_at)
        fields = {"sop_instance_uid": job.message.sop_instance_uid, "source": job.message.source,
                  "destination": job.message.destination, "status": f"0x{status:04X}"}
        log_event("sent", **fields)
        self.audit.record("delivered", **fields)

    def fail(self, job: Job, reason: str) -> None:
        self.metrics.failed.labels("deliver").inc()
        state = self.queue.retry(job, reason, backoff(job.attempts, self.config.dispatch))
        log_event("send_failed", logging.WARNING, sop_instance_uid=job.message.sop_instance_uid,
                  destination=job.message.destination, attempt=job.attempts, reason=reason,
                  dead_letter=state is State.DEAD)
