"""Durable job queues: one small interface; SQLite (WAL) embedded, Redis Streams for scale-out.

Two topics flow through it: ANALYZE (a spooled radiograph waiting for the worker) and DELIVER (one result file for
one destination).  A job is queued, then leased by one consumer, then done, or retried, or dead-lettered when its
attempts run out.  A lease that expires (its consumer died) makes the job claimable again.  Every job that goes to
dead-letter is logged once, at WARNING, with its reason (event `dead_letter`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Protocol

from node.infra.logs import log_event
from node.queue.messages import ANALYZE, DELIVER, AnalyzeJob, DeliverJob, Message

if TYPE_CHECKING:
    from node.config import Config

__all__ = ["ANALYZE", "DELIVER", "AnalyzeJob", "DeadJob", "DeliverJob", "Job", "Message", "Queue", "QueueFull",
           "QueueUnavailable", "State", "open_queue"]


class QueueUnavailable(Exception):
    """The queue cannot take or give jobs right now (disk full, broker down); callers answer accordingly."""


class QueueFull(Exception):
    """The topic already holds its bound of unfinished jobs: put() changed nothing."""


class State(StrEnum):
    QUEUED = "queued"
    LEASED = "leased"
    DEAD = "dead"


@dataclass(frozen=True)
class Job:
    id: str
    topic: str
    key: str  # at most one unfinished job per (topic, key): a resent instance does not double the work
    message: Message
    attempts: int  # claims so far, this one included
    created_at: float  # epoch seconds


@dataclass(frozen=True)
class DeadJob:
    job: Job
    error: str


class Queue(Protocol):
    """`max_attempts` per topic is given to the backend's constructor."""

    def put(self, key: str, message: Message, max_depth: int | None = None) -> bool:
        """Durably enqueue on the message's topic; False when an unfinished job with the same key exists (then
        nothing changes).  With `max_depth`, raises QueueFull where the topic already holds that many unfinished
        jobs; the check and the put are one atomic step, so concurrent putters (any process, any host) never
        take the topic past its bound."""

    def claim(self, topic: str, limit: int) -> list[Job]:
        """Lease up to `limit` available jobs, oldest first; jobs whose attempts ran out go to dead-letter."""

    def complete(self, job: Job, then: Sequence[tuple[str, Message]] = ()) -> None:
        """Finish `job` and, in the same atomic step, put the follow-up jobs (key, message) `then`:
        a crash leaves either the job unfinished or its follow-ups queued, never both."""

    def retry(self, job: Job, error: str, delay: float) -> State:
        """Back to the queue after `delay` seconds, or dead-letter when its attempts are used up."""

    def bury(self, job: Job, error: str) -> None:
        """Straight to dead-letter: retrying cannot help (e.g. undecodable input)."""

    def release(self, jobs: list[Job]) -> None:
        """Give leased jobs back unfinished (shutdown); the attempt does not count."""

    def hand_back(self, topic: str) -> None:
        """This process's one consumer of `topic` dropped the jobs it held because the queue failed (broker gone):
        they go back to the queue, the attempt not counted, now or, where the queue does not answer now, as soon as
        it does again and before this process claims from `topic` again (Redis: the heartbeat retries).  Never
        raises."""

    def depth(self, topic: str) -> int:
        """Queued plus leased jobs."""

    def wait(self, timeout: float) -> None:
        """Sleep until a job may have become available, at most `timeout` seconds."""

    def counts(self) -> dict[str, dict[str, int]]:
        """{topic: {state: count}} for unfinished and dead jobs."""

    def oldest_age(self, topic: str) -> float | None:
        """Seconds since the oldest unfinished job of `topic` was queued."""

    def dead(self, topic: str | None = None) -> list[DeadJob]: ...

    def requeue_dead(self, topic: str | None = None) -> int:
        """Dead letters back to the queue with fresh attempts; returns how many."""

    def recover(self, topics: Sequence[str]) -> None:
        """At start-up of a process that consumes `topics`: what its previous run had leased (it died holding
        them) is claimable again now rather than when the leases run out; leases of live peers stay theirs.
        SQLite (one host, one consuming process per topic): every lease of `topics` was the previous run's.
        Redis (many consumers): the leases of consumers whose heartbeat stopped, whoever they were."""

    def close(self) -> None: ...


def dead_lettered(topic: str, key: str, attempts: int, reason: str) -> None:
    """The one WARNING line per job that goes to dead-letter, with why (both backends call it)."""
    log_event("dead_letter", logging.WARNING, queue=topic, key=key, attempts=attempts, reason=reason)


def open_queue(config: Config) -> Queue:
    """The configured backend; nothing else in the node knows which one runs."""
    max_attempts = {ANALYZE: config.queue.max_attempts, DELIVER: config.dispatch.max_attempts}
    if config.queue.backend == "redis":
        from node.queue.redis import RedisQueue

        return RedisQueue(config.queue.redis_url, config.queue.lease_seconds, max_attempts)
    from node.queue.sqlite import SqliteQueue

    return SqliteQueue(config.data_dir / "queue.sqlite", config.queue.lease_seconds, max_attempts)
