"""The broker queue for scale-out: Redis Streams, one consumer group per topic; every operation that changes
state is one Lua script, so a crash or a concurrent peer never sees half of it.

Data layout (all keys under `knee-node:`; T is a topic, N a job number):

    next-id     string  the last job number handed out
    job:N       hash    topic, key, payload (JSON), attempts, created_at, error; entry: its stream entry while
                        queued or leased, else empty; letter: its entry in T:dead once dead-lettered
    T:keys      hash    key -> N of the unfinished job with that key: one unfinished job per (topic, key)
    T:created   zset    N scored by created_at, every unfinished job: depth, oldest age
    T:stream    stream  one entry {job: N} per queued or leased job, consumer group `consumers`: an entry not yet
                        delivered is queued, a pending one (in the group's PEL) is leased by its consumer.
                        Giving a job back to the queue = XACK + XDEL its entry and XADD a fresh one.
    T:delayed   zset    N scored by when a retried job is due; the next claim moves due ones to the stream
    T:dead      stream  the dead letters, one entry {job: N}; the job hash keeps payload and last error
    consumers   zset    consumer name (host:pid:random) -> time of its last heartbeat

Leases: a pending entry idle for `lease_seconds` is taken over by the next claim (XAUTOCLAIM) as a new attempt,
or dead-lettered when the attempts are used up.  Dead consumers: every consuming process heartbeats every
HEARTBEAT_SECONDS; one silent for CONSUMER_TIMEOUT_SECONDS is presumed dead (kill -9, lost host), and the next
claim or recover() of a peer puts its leased jobs back in the queue, without waiting for the leases to run out.
A live peer's leases are never taken before they expire.  Times come from the Redis server's clock, so the
hosts' clocks need not agree.

Redis itself must keep what it acknowledged: `appendonly yes` with `appendfsync always` (the receiver answers
Success once put() returns), and `maxmemory-policy noeviction`.  One Redis instance, not Redis Cluster (the
scripts touch keys they compute); replicas copy asynchronously, so a failover may lose the last acknowledged jobs.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import redis

from node.queue import DeadJob, Job, QueueUnavailable, State

PREFIX = "knee-node:"
GROUP = "consumers"
HEARTBEAT_SECONDS = 2.0
CONSUMER_TIMEOUT_SECONDS = 15.0
POLL_SECONDS = 0.1  # wait() polls: a blocking XREADGROUP would claim outside the claim script

LIBRARY = f"local P, GROUP = {PREFIX!r}, {GROUP!r}\n" + """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1e6
local function key(...) return P .. table.concat({...}, ':') end
local function topic_of(id) return redis.call('HGET', key('job', id), 'topic') end  -- false: no such job

local function enqueue(topic, id)  -- claimable now, as a fresh stream entry
  redis.call('HSET', key('job', id), 'entry', redis.call('XADD', key(topic, 'stream'), '*', 'job', id))
end

local function drop_entry(topic, id)  -- off the stream, and no longer leased
  local entry = redis.call('HGET', key('job', id), 'entry')
  if entry and entry ~= '' then
    redis.call('XACK', key(topic, 'stream'), GROUP, entry)
    redis.call('XDEL', key(topic, 'stream'), entry)
    redis.call('HSET', key('job', id), 'entry', '')
  end
end

local function finish(topic, id)  -- no longer unfinished: its key is free again
  local job_key = redis.call('HGET', key('job', id), 'key')
  if redis.call('HGET', key(topic, 'keys'), job_key) == id then redis.call('HDEL', key(topic, 'keys'), job_key) end
  redis.call('ZREM', key(topic, 'created'), id)
  redis.call('ZREM', key(topic, 'delayed'), id)
  drop_entry(topic, id)
end

local function put(topic, job_key, payload)
  if redis.call('HEXISTS', key(topic, 'keys'), job_key) == 1 then return 0 end
  local id = tostring(redis.call('INCR', key('next-id')))
  redis.call('HSET', key('job', id), 'topic', topic, 'key', job_key, 'payload', payload, 'attempts', 0,
             'created_at', now, 'error', '')
  redis.call('HSET', key(topic, 'keys'), job_key, id)
  redis.call('ZADD', key(topic, 'created'), now, id)
  enqueue(topic, id)
  return 1
end

local function bury(topic, id, reason)
  finish(topic, id)
  redis.call('HSET', key('job', id), 'error', reason, 'letter', redis.call('XADD', key(topic, 'dead'), '*', 'job', id))
end

local function unfinished(id)  -- the job's topic while it is queued, delayed or leased, else false
  local topic = topic_of(id)
  return topic and redis.call('ZSCORE', key(topic, 'created'), id) and topic
end

local function return_orphans(topic, me, timeout)  -- leases of consumers whose heartbeat stopped, back to the queue
  local stream = key(topic, 'stream')
  for _, consumer in ipairs(redis.call('XINFO', 'CONSUMERS', stream, GROUP)) do
    local name, pending = consumer[2], consumer[4]
    local seen = redis.call('ZSCORE', key('consumers'), name)
    if name ~= me and (not seen or tonumber(seen) < now - timeout) then
      if pending > 0 then
        for _, lease in ipairs(redis.call('XPENDING', stream, GROUP, '-', '+', pending, name)) do
          local id = redis.call('XRANGE', stream, lease[1], lease[1])[1][2][2]
          drop_entry(topic, id)
          enqueue(topic, id)
        end
      end
      redis.call('XGROUP', 'DELCONSUMER', stream, GROUP, name)
      redis.call('ZREM', key('consumers'), name)
    end
  end
end
"""

SCRIPTS = {
    "put": "return put(ARGV[1], ARGV[2], ARGV[3])",
    "heartbeat": "redis.call('ZADD', key('consumers'), now, ARGV[1])",
    # ARGV: topic, consumer, limit, lease in ms, max attempts, consumer timeout in s
    "claim": """
local topic, me, limit = ARGV[1], ARGV[2], tonumber(ARGV[3])
local stream = key(topic, 'stream')
redis.call('ZADD', key('consumers'), now, me)
for _, id in ipairs(redis.call('ZRANGEBYSCORE', key(topic, 'delayed'), '-inf', now)) do
  redis.call('ZREM', key(topic, 'delayed'), id)
  enqueue(topic, id)
end
return_orphans(topic, me, tonumber(ARGV[6]))
local jobs = {}
local function lease(id)
  local attempts = redis.call('HINCRBY', key('job', id), 'attempts', 1)
  local job = redis.call('HMGET', key('job', id), 'key', 'payload', 'created_at')
  table.insert(jobs, {id, job[1], job[2], attempts, job[3]})
end
for _, entry in ipairs(redis.call('XAUTOCLAIM', stream, GROUP, me, ARGV[4], '0-0', 'COUNT', limit)[2]) do
  local id = entry[2][2]  -- its lease expired: its consumer is stuck, or died and has not been noticed yet
  if tonumber(redis.call('HGET', key('job', id), 'attempts')) >= tonumber(ARGV[5]) then
    bury(topic, id, 'attempts exhausted (last lease expired)')
  else
    lease(id)
  end
end
if #jobs < limit then
  local new = redis.call('XREADGROUP', 'GROUP', GROUP, me, 'COUNT', limit - #jobs, 'STREAMS', stream, '>')
  if new then for _, entry in ipairs(new[1][2]) do lease(entry[2][2]) end end
end
return jobs
""",
    # ARGV: job, then topic, key, payload of each follow-up
    "complete": """
local topic = topic_of(ARGV[1])
if topic then  -- a late completion of a job dead-lettered meanwhile: the work is done, the letter goes
  finish(topic, ARGV[1])
  redis.call('XDEL', key(topic, 'dead'), redis.call('HGET', key('job', ARGV[1]), 'letter') or '0-0')
  redis.call('DEL', key('job', ARGV[1]))
end
for i = 2, #ARGV, 3 do put(ARGV[i], ARGV[i + 1], ARGV[i + 2]) end
""",
    # ARGV: job, error, delay in s, '1' when its attempts are used up
    "retry": """
local topic = unfinished(ARGV[1])
if not topic then return end
if ARGV[4] == '1' then return bury(topic, ARGV[1], ARGV[2]) end
drop_entry(topic, ARGV[1])
redis.call('HSET', key('job', ARGV[1]), 'error', ARGV[2])
redis.call('ZADD', key(topic, 'delayed'), now + tonumber(ARGV[3]), ARGV[1])
""",
    "bury": "local topic = unfinished(ARGV[1]); if topic then bury(topic, ARGV[1], ARGV[2]) end",
    # ARGV: jobs; only those still leased go back, and the attempt does not count
    "release": """
for _, id in ipairs(ARGV) do
  local topic = unfinished(id)
  local entry = topic and redis.call('HGET', key('job', id), 'entry')
  if entry and entry ~= '' and redis.call('XACK', key(topic, 'stream'), GROUP, entry) == 1 then
    redis.call('XDEL', key(topic, 'stream'), entry)
    redis.call('HINCRBY', key('job', id), 'attempts', -1)
    enqueue(topic, id)
  end
end
""",
    # ARGV: topics
    "requeue_dead": """
local count = 0
for _, topic in ipairs(ARGV) do
  for _, letter in ipairs(redis.call('XRANGE', key(topic, 'dead'), '-', '+')) do
    local id = letter[2][2]
    local job = key('job', id)
    -- a dead letter whose key was queued again meanwhile stays dead: the newer job supersedes it
    if redis.call('HSETNX', key(topic, 'keys'), redis.call('HGET', job, 'key'), id) == 1 then
      redis.call('XDEL', key(topic, 'dead'), letter[1])
      redis.call('HSET', job, 'attempts', 0, 'error', '')
      redis.call('ZADD', key(topic, 'created'), redis.call('HGET', job, 'created_at'), id)
      enqueue(topic, id)
      count = count + 1
    end
  end
end
return count
""",
    # ARGV: consumer, consumer timeout in s, topics
    "recover": """
redis.call('ZADD', key('consumers'), now, ARGV[1])
for i = 3, #ARGV do return_orphans(ARGV[i], ARGV[1], tonumber(ARGV[2])) end
""",
    "oldest_age": """
local oldest = redis.call('ZRANGE', key(ARGV[1], 'created'), 0, 0, 'WITHSCORES')
if #oldest == 0 then return false end
return tostring(now - tonumber(oldest[2]))
""",
}


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
        self._scripts = {name: self._redis.register_script(LIBRARY + body) for name, body in SCRIPTS.items()}
        self._closing = threading.Event()
        self._heartbeat: threading.Thread | None = None
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
            except QueueUnavailable:  # the next claim reports it; peers may take this consumer's leases meanwhile
                continue

    def put(self, topic: str, key: str, payload: dict[str, Any]) -> bool:
        return bool(self._run("put", topic, key, json.dumps(payload)))

    def claim(self, topic: str, limit: int) -> list[Job]:
        self._beat()
        rows = self._run("claim", topic, self.consumer, limit, int(self.lease_seconds * 1000),
                         self.max_attempts[topic], CONSUMER_TIMEOUT_SECONDS)
        return [Job(id_, topic, key, json.loads(payload), int(attempts), float(created))
                for id_, key, payload, attempts, created in rows]

    def complete(self, job: Job, then: Sequence[tuple[str, str, dict[str, Any]]] = ()) -> None:
        self._run("complete", job.id, *[value for topic, key, payload in then
                                        for value in (topic, key, json.dumps(payload))])

    def retry(self, job: Job, error: str, delay: float) -> State:
        state = State.DEAD if job.attempts >= self.max_attempts[job.topic] else State.QUEUED
        self._run("retry", job.id, error, delay, int(state is State.DEAD))
        return state

    def bury(self, job: Job, error: str) -> None:
        self._run("bury", job.id, error)

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
                    letters.append(DeadJob(Job(entry["job"], name, job["key"], json.loads(job["payload"]),
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
