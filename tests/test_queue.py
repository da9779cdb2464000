"""The queue's guarantees, the same tests on both backends: SQLite (a file) and Redis Streams (a real redis-server
on loopback).  Consumers in other processes are real processes, killed with SIGKILL where a test needs a death."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import node.queue.redis
from node.config import Config, ConfigError, DispatchConfig, QueueConfig, load_config
from node.queue import (
    ANALYZE,
    DELIVER,
    AnalyzeJob,
    DeliverJob,
    Job,
    Queue,
    QueueFull,
    QueueUnavailable,
    State,
    messages,
    open_queue,
)
from tests.helpers import RedisServer, wait_until

OpenQueue = Callable[..., Queue]

CONSUMER = """
import json, sys, time
from pathlib import Path
from node.config import Config, QueueConfig
from node.queue import open_queue
config, data_dir, topic, limit = json.loads(sys.argv[1])
queue = open_queue(Config(data_dir=Path(data_dir), queue=QueueConfig(**config)))
print(json.dumps([job.key for job in queue.claim(topic, limit)]), flush=True)
time.sleep(600)
"""


def analyze_job(path: str = "a") -> AnalyzeJob:
    return AnalyzeJob(path=path, patient="p", received_at=1.0)


def deliver_job(uid: str = "9.1") -> DeliverJob:
    return DeliverJob(path=f"{uid}.dcm", destination="PACS", sop_instance_uid=uid, source="1.2.3", result_at=1.0)


@pytest.fixture(params=["sqlite", "redis"])
def backend(request: pytest.FixtureRequest) -> dict[str, str]:
    if request.param == "redis":
        return {"backend": "redis", "redis_url": request.getfixturevalue("redis_url")}
    return {"backend": "sqlite"}


@pytest.fixture
def open_(backend: dict[str, str], tmp_path: Path) -> Iterator[OpenQueue]:
    """Opens a queue of the backend under test; each one stands for a process of the node."""
    opened: list[Queue] = []

    def open_queue_(lease_seconds: float = 60, max_attempts: int = 3) -> Queue:
        config = Config(data_dir=tmp_path, queue=QueueConfig(**backend, lease_seconds=lease_seconds,  # type: ignore[arg-type]
                                                             max_attempts=max_attempts),
                        dispatch=DispatchConfig(max_attempts=max_attempts))
        opened.append(open_queue(config))
        return opened[-1]

    yield open_queue_
    for queue in opened:
        queue.close()


def consumer_process(backend: dict[str, str], data_dir: Path, topic: str, limit: int) -> tuple[subprocess.Popen[str],
                                                                                                  list[str]]:
    """Another process that claims `limit` jobs and holds them; returns it and the keys it holds."""
    process = subprocess.Popen([sys.executable, "-c", CONSUMER, json.dumps([backend, str(data_dir), topic, limit])],
                               stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    return process, json.loads(process.stdout.readline())


def test_one_unfinished_job_per_key_and_complete_queues_the_follow_ups(open_: OpenQueue) -> None:
    queue = open_()
    assert queue.put("1.2.3", analyze_job("a"))
    assert not queue.put("1.2.3", analyze_job("b"))  # a resent instance does not double the work
    assert queue.put("1.2.4", analyze_job("c"))
    assert queue.depth(ANALYZE) == 2
    jobs = queue.claim(ANALYZE, 10)
    assert [(job.key, job.message, job.attempts) for job in jobs] == [("1.2.3", analyze_job("a"), 1),
                                                                     ("1.2.4", analyze_job("c"), 1)]
    assert not queue.put("1.2.3", analyze_job("d"))  # leased is unfinished too
    assert queue.counts() == {ANALYZE: {"leased": 2}}
    queue.complete(jobs[0], then=[("9.1@PACS", deliver_job("9.1")), ("9.2@PACS", deliver_job("9.2"))])
    assert queue.counts() == {ANALYZE: {"leased": 1}, DELIVER: {"queued": 2}}
    assert queue.put("1.2.3", analyze_job("e"))  # finished: the key is free again
    assert sorted(job.key for job in queue.claim(DELIVER, 10)) == ["9.1@PACS", "9.2@PACS"]
    assert queue.claim(DELIVER, 10) == []
    assert queue.depth(ANALYZE) == 2 and queue.depth(DELIVER) == 2


def test_the_bound_holds_against_concurrent_putters(open_: OpenQueue) -> None:
    """8 putters, each with its own connection as receivers in separate processes have, race for 16 places."""
    putters, bound = [open_() for _ in range(8)], 16
    start = threading.Barrier(len(putters))
    outcomes: list[str] = []

    def put_ten(number: int, queue: Queue) -> None:
        start.wait()
        for job in range(10):
            try:
                queued = queue.put(f"{number}.{job}", analyze_job(), max_depth=bound)
                outcomes.append("queued" if queued else "same key")
            except QueueFull:
                outcomes.append("full")

    threads = [threading.Thread(target=put_ten, args=pair) for pair in enumerate(putters)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    queue = putters[0]
    assert (outcomes.count("queued"), outcomes.count("full")) == (bound, 80 - bound)
    assert queue.depth(ANALYZE) == bound
    (job,) = queue.claim(ANALYZE, 1)
    assert not queue.put(job.key, analyze_job(), max_depth=bound)  # at the bound, a resent instance is no new job
    with pytest.raises(QueueFull):
        queue.put("9.9", analyze_job(), max_depth=bound)  # leased jobs count
    queue.complete(job)
    assert queue.put("9.9", analyze_job(), max_depth=bound)


def test_retry_waits_its_delay_then_dead_letters_when_attempts_run_out(open_: OpenQueue) -> None:
    queue = open_(max_attempts=2)
    queue.put("1.2.3", analyze_job())
    (job,) = queue.claim(ANALYZE, 1)
    assert queue.retry(job, "out of memory", delay=0.6) is State.QUEUED
    assert queue.claim(ANALYZE, 1) == []  # not before its delay
    assert queue.depth(ANALYZE) == 1 and (queue.oldest_age(ANALYZE) or 0) > 0
    time.sleep(0.7)
    (job,) = queue.claim(ANALYZE, 1)
    assert job.attempts == 2
    assert queue.retry(job, "out of memory again", delay=0) is State.DEAD
    assert queue.claim(ANALYZE, 1) == [] and queue.depth(ANALYZE) == 0 and queue.oldest_age(ANALYZE) is None
    (letter,) = queue.dead()
    assert (letter.job.key, letter.job.attempts, letter.error) == ("1.2.3", 2, "out of memory again")
    assert queue.counts() == {ANALYZE: {"dead": 1}}


def test_requeue_gives_fresh_attempts_unless_a_newer_job_has_the_key(open_: OpenQueue) -> None:
    queue = open_()
    for key in ("1.1", "1.2"):
        queue.put(key, analyze_job(key))
    for job in queue.claim(ANALYZE, 2):
        queue.bury(job, "cannot decode")
    queue.put("9.1@PACS", deliver_job())
    queue.bury(queue.claim(DELIVER, 1)[0], "no such destination")
    assert sorted((d.job.topic, d.job.key, d.error) for d in queue.dead()) == [
        (ANALYZE, "1.1", "cannot decode"), (ANALYZE, "1.2", "cannot decode"), (DELIVER, "9.1@PACS",
                                                                                "no such destination")]
    assert [d.job.key for d in queue.dead(DELIVER)] == ["9.1@PACS"]
    assert queue.put("1.2", analyze_job("1.2 newer"))  # a dead job is not unfinished
    assert queue.requeue_dead(ANALYZE) == 1
    assert [(d.job.topic, d.job.key) for d in queue.dead()] == [(ANALYZE, "1.2"), (DELIVER, "9.1@PACS")]
    jobs = sorted(queue.claim(ANALYZE, 10), key=lambda job: job.key)
    assert [(job.key, job.message, job.attempts) for job in jobs] == [
        ("1.1", analyze_job("1.1"), 1), ("1.2", analyze_job("1.2 newer"), 1)]
    assert queue.requeue_dead() == 1  # 1.2's dead letter stays: its key is still unfinished
    assert queue.counts() == {ANALYZE: {"leased": 2, "dead": 1}, DELIVER: {"queued": 1}}


def test_release_gives_jobs_back_without_counting_the_attempt(open_: OpenQueue) -> None:
    queue = open_()
    queue.put("9.1@PACS", deliver_job())
    (job,) = queue.claim(DELIVER, 1)
    queue.release([job])
    (again,) = queue.claim(DELIVER, 1)
    assert (again.key, again.attempts) == ("9.1@PACS", 1)


def test_an_expired_lease_goes_to_the_next_consumer_then_to_dead_letter(open_: OpenQueue) -> None:
    # Leases long enough that a loaded machine's pause between two claims does not outlast one.
    first, second = open_(lease_seconds=1.5, max_attempts=2), open_(lease_seconds=1.5, max_attempts=2)
    first.put("1.2.3", analyze_job())
    assert [job.attempts for job in first.claim(ANALYZE, 1)] == [1]
    assert second.claim(ANALYZE, 1) == []  # leased, and the lease runs
    time.sleep(1.6)
    (job,) = second.claim(ANALYZE, 1)
    assert (job.key, job.attempts) == ("1.2.3", 2)
    time.sleep(1.6)
    assert first.claim(ANALYZE, 1) == []  # attempts used up: dead, not leased a third time
    (letter,) = first.dead()
    assert letter.job.key == "1.2.3" and "attempts exhausted" in letter.error
    second.complete(job)  # a late completion of the lost lease: the work is done, the dead letter goes
    assert first.counts() == {} and first.dead() == []


def test_recover_puts_back_what_a_killed_consumer_held(open_: OpenQueue, backend: dict[str, str],
                                                       tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(node.queue.redis, "CONSUMER_TIMEOUT_SECONDS", 3.0)
    queue = open_()
    for key in ("1.1", "1.2"):
        queue.put(key, analyze_job())
    queue.put("9.1@PACS", deliver_job())
    assert len(queue.claim(DELIVER, 1)) == 1  # a lease of another topic, held by a live process
    process, held = consumer_process(backend, tmp_path, ANALYZE, 2)
    process.kill()
    process.wait()
    assert held == ["1.1", "1.2"]
    assert queue.claim(ANALYZE, 10) == []  # leased, and the leases run
    if backend["backend"] == "redis":
        time.sleep(3.5)  # the killed consumer's heartbeat stops counting: it is presumed dead
    queue.recover([ANALYZE])
    jobs = queue.claim(ANALYZE, 10)
    assert sorted((job.key, job.attempts) for job in jobs) == [("1.1", 2), ("1.2", 2)]
    assert queue.counts() == {ANALYZE: {"leased": 2}, DELIVER: {"leased": 1}}


def test_redis_recover_leaves_a_live_peers_leases_and_takes_them_once_it_closes(redis_url: str,
                                                                               tmp_path: Path) -> None:
    config = Config(data_dir=tmp_path, queue=QueueConfig(backend="redis", redis_url=redis_url))
    live, restarted = (open_queue(config) for _ in range(2))
    live.put("1.1", analyze_job())
    assert len(live.claim(ANALYZE, 1)) == 1
    restarted.recover([ANALYZE, DELIVER])
    assert restarted.claim(ANALYZE, 1) == []
    live.close()  # gone for good: what it still held is the others' at once
    (job,) = restarted.claim(ANALYZE, 1)
    assert (job.key, job.attempts) == ("1.1", 2)
    restarted.close()


def test_hand_back_returns_a_consumers_jobs_without_counting_the_attempt(open_: OpenQueue) -> None:
    holder, peer = open_(), open_()
    for key in ("1.1", "1.2"):
        holder.put(key, analyze_job())
    holder.put("9.1@PACS", deliver_job())
    assert len(holder.claim(ANALYZE, 2)) == 2 and len(holder.claim(DELIVER, 1)) == 1
    holder.hand_back(ANALYZE)
    assert sorted((job.key, job.attempts) for job in peer.claim(ANALYZE, 10)) == [("1.1", 1), ("1.2", 1)]
    assert peer.claim(DELIVER, 1) == []  # another topic's consumer still holds its job


def claim_when_up(queue: Queue, topic: str) -> list[Job]:
    try:
        return queue.claim(topic, 10)
    except QueueUnavailable:
        return []


def test_a_broker_outage_delays_what_a_live_consumer_held_by_about_its_length(tmp_path: Path) -> None:
    """kill -9 of a durable redis-server while a live consumer holds a job with a 300 s lease: handed back once the
    broker is restarted, not when the lease runs out."""
    server = RedisServer(tmp_path / "redis", durable=True)
    config = Config(data_dir=tmp_path, queue=QueueConfig(backend="redis", redis_url=server.url, lease_seconds=300))
    holder, peer = open_queue(config), open_queue(config)
    try:
        holder.put("1.1", analyze_job())
        (job,) = holder.claim(ANALYZE, 1)
        server.kill()
        with pytest.raises(QueueUnavailable):
            holder.complete(job)  # the worker's batch fails here and is dropped
        holder.hand_back(ANALYZE)  # the broker is away: this cannot be done now
        server.start()
        returned = time.monotonic()
        claimed: list[Job] = []
        wait_until(lambda: claimed.extend(claim_when_up(peer, ANALYZE)) or claimed, timeout=10)
        print(f"claimed by a peer {time.monotonic() - returned:.1f} s after the broker returned")
        assert [(job.key, job.attempts) for job in claimed] == [("1.1", 1)]
        peer.complete(claimed[0])
        assert peer.counts() == {}
    finally:
        holder.close()
        peer.close()
        server.stop()


def test_backend_redis_needs_a_url_and_only_it_takes_one() -> None:
    with pytest.raises(ConfigError, match=r"^config: queue.redis_url: '' is not a redis://"):
        load_config(None, {"KNEE_NODE_QUEUE_BACKEND": "redis"})
    with pytest.raises(ConfigError, match=r"^config: queue.redis_url: only used by backend redis"):
        load_config(None, {"KNEE_NODE_QUEUE_REDIS_URL": "redis://localhost"})


def test_status_and_requeue_say_in_one_line_that_the_broker_is_unreachable(tmp_path: Path) -> None:
    config = tmp_path / "node.yaml"
    config.write_text("queue:\n  backend: redis\n  redis_url: redis://127.0.0.1:1/0\n")  # nothing listens on port 1
    for command in ("status", "requeue"):
        done = subprocess.run([sys.executable, "-m", "node.cli", command, "--config", str(config)],
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 1
        assert done.stderr.startswith(f"knee-node {command}: queue unavailable: redis: ")
        assert len(done.stderr.strip().splitlines()) == 1


def test_messages_round_trip_and_fields_of_another_release_are_ignored() -> None:
    job = analyze_job("spool/1.2.3.dcm")
    assert messages.decode(ANALYZE, messages.encode(job)) == job
    older = '{"path": "spool/1.2.3.dcm", "patient": "p", "received_at": 1.0, "sop_instance_uid": "1.2.3"}'
    assert messages.decode(ANALYZE, older) == job  # queued before an upgrade: still processed
    assert messages.decode(DELIVER, messages.encode(deliver_job())) == deliver_job()
