"""The dispatcher: result files from the durable outbox to each destination, by its kind's sender
(node.delivery): C-STORE (node.scu.CStoreSender) or STOW-RS (node.dicomweb.StowSender).

Delivery counts only when the sender says the destination keeps the file (C-STORE: a Success or Warning status).
Anything else is retried with exponential backoff and jitter until the attempts run out, or dead-lettered at once
where the sender says retrying cannot help; dead letters wait for `knee-node requeue`.  Output UIDs are
deterministic, so a repeated delivery overwrites rather than duplicates.  A destination's connection (a DICOM
association) stays open while results flow: released after IDLE_SECONDS without use, re-opened after a failure,
released when the dispatcher stops.
"""

from __future__ import annotations

import logging
import math
import random
import threading
import time
from itertools import groupby
from pathlib import Path

from node.config import Config, Destination, DispatchConfig
from node.delivery import Outcome, Sender
from node.dicomweb import StowSender
from node.infra.audit import AuditLog
from node.infra.logs import log_event
from node.infra.metrics import Metrics
from node.infra.tls import client_context
from node.queue import DELIVER, Job, Queue, QueueUnavailable, State
from node.scu import CStoreSender

BATCH = 32
# Within a burst the association is reused, no negotiation per batch; between bursts it is let go, as peers limit
# how many they keep open.  Below pynetdicom's network timeout (dispatch.timeout_seconds, by default 30 s), which
# aborts an association that long without a PDU from the peer.
IDLE_SECONDS = 15.0


def backoff(attempts: int, config: DispatchConfig) -> float:
    """Exponential in the attempts made, capped; random in its upper half so retries of many jobs spread out."""
    ceiling = min(config.max_backoff_seconds, config.backoff_seconds * 2 ** (attempts - 1))
    return ceiling / 2 + random.uniform(0, ceiling / 2)


def sender_for(destination: Destination, config: Config) -> Sender:
    """The sender for the destination's kind, with the node's TLS client context where it sends over TLS."""
    timeout = config.dispatch.timeout_seconds
    if destination.kind == "dicomweb":
        https = destination.url.startswith("https://")
        return StowSender(destination, timeout, client_context(config.tls) if https else None)
    return CStoreSender(destination, config.scp.ae_title, timeout,
                        client_context(config.tls) if destination.tls else None)


class Dispatcher:
    def __init__(self, config: Config, queue: Queue, metrics: Metrics, audit: AuditLog) -> None:
        self.config, self.queue, self.metrics, self.audit = config, queue, metrics, audit
        self.senders = {d.name: sender_for(d, config) for d in config.destinations}
        self.last_used: dict[str, float] = {}  # destinations whose sender may hold a connection
        self.deadline = math.inf  # set when stopping: the end of the outbox flush

    def run(self, stop: threading.Event, drain_seconds: float = 10.0) -> None:
        """Deliver until `stop` is set, then flush: go on with what is due for at most `drain_seconds`."""
        self.deadline = math.inf
        try:
            while not self.expired():
                if stop.is_set() and self.deadline == math.inf:
                    self.deadline = time.monotonic() + drain_seconds
                self.close_idle(IDLE_SECONDS)
                try:
                    jobs = self.queue.claim(DELIVER, BATCH)
                    if not jobs:
                        if stop.is_set():
                            return
                        self.queue.wait(1.0)
                        continue
                    jobs.sort(key=lambda job: job.message.destination)
                    for name, group in groupby(jobs, key=lambda job: job.message.destination):
                        self.deliver(name, list(group))
                except Exception as error:  # the queue itself failing (disk full, broker gone): wait, try again
                    log_event("dispatcher_error", logging.ERROR, reason=repr(error), traceback=True)
                    if isinstance(error, QueueUnavailable):  # the batch is dropped: back to the queue once it answers
                        self.queue.hand_back(DELIVER)
                    if stop.wait(5.0):
                        return
        finally:
            self.close()

    def expired(self) -> bool:
        return time.monotonic() >= self.deadline

    def close_idle(self, idle_seconds: float) -> None:
        """Release the connections of destinations unused for `idle_seconds`."""
        now = time.monotonic()
        for name, used in list(self.last_used.items()):
            if now - used >= idle_seconds:
                self.senders[name].close()
                del self.last_used[name]

    def close(self) -> None:
        """Release every destination's connection."""
        self.close_idle(0.0)

    def deliver(self, name: str, jobs: list[Job]) -> None:
        """Send `jobs` (all for destination `name`) in order, settling each with the queue as its outcome comes."""
        sender = self.senders.get(name)
        if sender is None:
            for job in jobs:
                self.queue.bury(job, f"destination {name} is no longer configured")
            return
        present = []
        for job in jobs:
            if Path(job.message.path).is_file():
                present.append(job)
            else:
                self.queue.bury(job, f"result file {job.message.path} is missing")
        outcomes = sender.send([Path(job.message.path) for job in present])
        try:
            for index, job in enumerate(present):
                if self.expired():
                    self.queue.release(present[index:])  # shutting down: these were not tried
                    return
                self.settle(job, next(outcomes))
        finally:
            self.last_used[name] = time.monotonic()

    def settle(self, job: Job, outcome: Outcome) -> None:
        if not outcome.delivered:
            self.fail(job, outcome.detail, outcome.permanent)
            return
        self.queue.complete(job)
        Path(job.message.path).unlink(missing_ok=True)
        self.metrics.sent.inc()
        self.metrics.result_to_delivered.observe(time.time() - job.message.result_at)
        fields = {"sop_instance_uid": job.message.sop_instance_uid, "source": job.message.source,
                  "destination": job.message.destination, "status": outcome.detail}
        log_event("sent", **fields)
        self.audit.record("delivered", **fields)

    def fail(self, job: Job, reason: str, permanent: bool) -> None:
        self.metrics.failed.labels("deliver").inc()
        if permanent:
            self.queue.bury(job, reason)
            state = State.DEAD
        else:
            state = self.queue.retry(job, reason, backoff(job.attempts, self.config.dispatch))
        log_event("send_failed", logging.WARNING, sop_instance_uid=job.message.sop_instance_uid,
                  destination=job.message.destination, attempt=job.attempts, reason=reason,
                  dead_letter=state is State.DEAD)
