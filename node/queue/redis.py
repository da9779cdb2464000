"""The broker queue for scale-out: Redis Streams, one consumer group per topic; every operation that changes
state is one Lua script, so a crash or a concurrent peer never sees half of it.

Data layout (all keys under `knee-node:`; T is a topic, N a job number):

    next-id     string  the last job number handed out
    job:N       hash    topic, key, payload (JSON), attempts, created_at, error; entry: its stream entry while
                        queued or leased, else empty; letter: its entry in T:dead once dead-lettered
    T:keys      hash    key -> N of the unfinished job with that key: one unfinished job per (topic, key)
    T:created   zset    N scored by created_at, every unfinished job: depth (and the bound put checks), oldest age
    T:stream    stream  one entry {job: N} per queued or leased job, consumer group `consumers`: an entry not yet
                        delivered is queued, a pending one (in the group's PEL) is leased by its consumer.
                        Giving a job back to the queue = XACK + XDEL its entry and XADD a fresh one.
    T:delayed   zset    N scored by when a retried job is due; the next claim moves due ones to the stream
    T:dead      stream  the dead letters, one entry {job: N}; the job hash keeps payload and last error
    consumers   zset    consumer name (host:pid:random) -> time of its last heartbeat

Leases: a pending entry idle for `lease_seconds` is taken over by the next claim (XAUTOCLAIM) as a new attempt, or
dead-lettered when the attempts are used up.  Dead consumers: every consuming process heartbeats every
HEARTBEAT_SECONDS; one silent for CONSUMER_TIMEOUT_SECONDS is presumed dead (kill -9, lost host), and the next claim
or recover() of a peer puts its leased jobs back in the queue, without waiting for the leases to run out (after a
broker restart, not before the broker has been up that long: every heartbeat is old then).  A live peer's leases are
never taken before they expire.  Broker outages: a live consumer that drops its jobs because the broker went away
hands them back (hand_back); what the broker could not take then, the heartbeat hands back as soon as it answers
again, so an outage delays those jobs by about its own length, not by a lease.  Times come from the Redis server's
clock, so the hosts' clocks need not agree.

Redis itself must keep what it acknowledged: `appendonly yes` with `appendfsync always` (the receiver answers
Success once put() returns), and `maxmemory-policy noeviction`.  One Redis instance, not Redis Cluster (the
scripts touch keys they compute); replicas copy asynchronously, so a failover may lose the last acknowledged jobs.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import socket
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from importlib import resources
from typing import Any

import redis

from node.queue import DeadJob, Job, Message, QueueFull, QueueUnavailable, State, dead_lettered
from node.queue.messages import decode, encode

PREFIX = "knee-node:"
GROUP = "consumers"
HEARTBEAT_SECONDS = 2.0
CONSUMER_TIMEOUT_SECONDS = 15.0
POLL_SECONDS = 0.1  # wait() polls: a blocking XREADGROUP would claim outside the claim script

SCRIPT = re.compile(r"^-- script: (\w+)$", re.MULTILINE)


def load_scripts() -> dict[str, str]:
    """redis.lua's scripts by name, each with the shared functions and constants in front."""
    text = resources.files("node.queue").joinpath("redis.lua").read_text()
    library, *named = SCRIPT.split(text)
    header = f"local P, GROUP = {PREFIX!r}, {GROUP!r}\n" + library
    return {name: header + body for name, body in zip(named[::2], named[1::2], strict=True)}


@contextmanager
def reachable() -> Iterator[None]:
    """Redis errors (unreachable, out of memory, read-only replica) as QueueUnavailable."""
    try:
        yield
    except redis.RedisError as error:
        raise QueueUnavailable(f"redis: {error}") from error


class RedisQueue:
    """Thread-safe (redis-py's connection pool); any number of processes on any number of hosts."""

    def __init__(self, url: str, lease_seconds: float, max_attempts: Mapping[str, int]) -> None:
        self.lease_seconds, self.max_attempts = lease_seconds, dict(max_attempts)
        self.consumer = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"
        self._redis = redis.Redis.from_url(url, decode_responses=True, socket_timeout=30,
                                           health_check_interval=30)
        self._scripts = {name: self._redis.register_script(body) for name, body in load_scripts().items()}
        self._closing = threading.Event()
        self._heartbeat: threading.Thread | None = None
        self._to_hand_back: set[str] = set()  # topics whose leases go back once the broker answers
        self._hand_back_lock = threading.Lock()
        with reachable():
            for topic in self.max_attempts:
                try:
                    self._redis.xgroup_create(f"{PREFIX}{topic}:stream", GROUP, id="0", mkstream=True)
                except redis.ResponseError as error:
                    if "BUSYGROUP" not in str(error):  # BUSYGROUP: a peer created it first
                        raise

    def _run(self, script: str, *args: Any) -> Any:
        with reachable():
            return self._scripts[script](args=args)

    def _beat(self) -> None:
        """Once this process consumes, it heartbeats until closed, a long batch included."""
        if self._heartbeat is None:
            self._heartbeat = threading.Thread(target=self._beating, name="queue-heartbeat", daemon=True)
            self._heartbeat.start()

    def _beating(self) -> None:
        while not self._closing.wait(HEARTBEAT_SECONDS):
            try:
                self._run("heartbeat", self.consumer)
                self._give_back()  # the broker is back: what the consumers dropped goes to whoever claims first
            except QueueUnavailable:  # the next claim reports it; peers may take this consumer's leases meanwhile
                continue

    def hand_back(self, topic: str) -> None:
        with self._hand_back_lock:
            self._to_hand_back.add(topic)
        with contextlib.suppress(QueueUnavailable):
            self._give_back()

    def _give_back(self) -> None:
        """What hand_back() was asked for and the broker has not done yet; QueueUnavailable while it is away."""
        with self._hand_back_lock:
            for topic in sorted(self._to_hand_back):
                self._run("hand_back", self.consumer, topic)
                self._to_hand_back.discard(topic)

    def put(self, key: str, message: Message, max_depth: int | None = None) -> bool:
        added = int(self._run("put", message.topic, key, encode(message), "" if max_depth is None else max_depth))
        if added < 0:
            raise QueueFull(f"{message.topic} queue holds {max_depth} jobs")
        return added == 1

    def claim(self, topic: str, limit: int) -> list[Job]:
        self._beat()
        self._give_back()  # first: the leases this consumer dropped are not the ones it claims now
        rows, buried = self._run("claim", topic, self.consumer, limit, int(self.lease_seconds * 1000),
                                 self.max_attempts[topic], CONSUMER_TIMEOUT_SECONDS)
        for key, attempts in buried:
            dead_lettered(topic, key, int(attempts), "attempts exhausted (last lease expired)")
        return [Job(id_, topic, key, decode(topic, payload), int(attempts), float(created))
                for id_, key, payload, attempts, created in rows]

    def complete(self, job: Job, then: Sequence[tuple[str, Message]] = ()) -> None:
        self._run("complete", job.id, *[value for key, message in then
                                        for value in (message.topic, key, encode(message))])

    def retry(self, job: Job, error: str, delay: float) -> State:
        state = State.DEAD if job.attempts >= self.max_attempts[job.topic] else State.QUEUED
        self._run("retry", job.id, error, delay, int(state is State.DEAD))
        if state is State.DEAD:
            dead_lettered(job.topic, job.key, job.attempts, error)
        return state

    def bury(self, job: Job, error: str) -> None:
        self._run("bury", job.id, error)
        dead_lettered(job.topic, job.key, job.attempts, error)

    def release(self, jobs: list[Job]) -> None:
        if jobs:
            self._run("release", *[job.id for job in jobs])

    def depth(self, topic: str) -> int:
        with reachable():
            return int(self._redis.zcard(f"{PREFIX}{topic}:created"))

    def wait(self, timeout: float) -> None:
        time.sleep(max(0.0, min(timeout, POLL_SECONDS)))

    def counts(self) -> dict[str, dict[str, int]]:
        counts: dict[str, dict[str, int]] = {}
        for topic in self.max_attempts:
            with reachable():
                pipe = self._redis.pipeline()  # MULTI/EXEC: one consistent view
                pipe.zcard(f"{PREFIX}{topic}:created")
                pipe.xpending(f"{PREFIX}{topic}:stream", GROUP)
                pipe.xlen(f"{PREFIX}{topic}:dead")
                unfinished, pending, dead = pipe.execute()
            states = {State.QUEUED: unfinished - pending["pending"], State.LEASED: pending["pending"],
                      State.DEAD: dead}
            if any(states.values()):
                counts[topic] = {str(state): count for state, count in states.items() if count}
        return counts

    def oldest_age(self, topic: str) -> float | None:
        age = self._run("oldest_age", topic)
        return None if age is None else float(age)

    def dead(self, topic: str | None = None) -> list[DeadJob]:
        letters = []
        with reachable():
            for name in [topic] if topic else self.max_attempts:
                for _, entry in self._redis.xrange(f"{PREFIX}{name}:dead"):
                    job = self._redis.hgetall(f"{PREFIX}job:{entry['job']}")
                    letters.append(DeadJob(Job(entry["job"], name, job["key"], decode(name, job["payload"]),
                                               int(job["attempts"]), float(job["created_at"])), job["error"]))
        return letters

    def requeue_dead(self, topic: str | None = None) -> int:
        return int(self._run("requeue_dead", *([topic] if topic else self.max_attempts)))

    def recover(self, topics: Sequence[str]) -> None:
        if not topics:  # a receiver consumes nothing: no heartbeat either
            return
        self._beat()
        self._run("recover", self.consumer, CONSUMER_TIMEOUT_SECONDS, *topics)

    def close(self) -> None:
        self._closing.set()
        if self._heartbeat is not None:
            self._heartbeat.join()
            # Gone for good: peers may put back at once whatever this consumer still holds.
            with reachable():
                self._redis.zrem(f"{PREFIX}consumers", self.consumer)
        self._redis.close()
