"""The embedded queue: one SQLite file in WAL mode, fsync on every commit (an acknowledged job survives power loss)."""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

from node.queue import DeadJob, Job, Message, QueueFull, QueueUnavailable, State, dead_lettered
from node.queue.messages import decode, encode

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    topic TEXT NOT NULL,
    key TEXT NOT NULL,
    payload TEXT NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    available_at REAL NOT NULL,
    created_at REAL NOT NULL,
    error TEXT NOT NULL DEFAULT ''
);
CREATE UNIQUE INDEX IF NOT EXISTS unfinished_key ON jobs (topic, key) WHERE state IN ('queued', 'leased');
CREATE INDEX IF NOT EXISTS claimable ON jobs (topic, state, available_at);
"""
EXHAUSTED = "attempts exhausted (last lease expired)"


class SqliteQueue:
    """Thread-safe within a process (one connection, one lock); other processes wait on SQLite's busy timeout."""

    def __init__(self, path: Path, lease_seconds: float, max_attempts: Mapping[str, int]) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.lease_seconds, self.max_attempts = lease_seconds, dict(max_attempts)
        self._lock = threading.Lock()
        self._available = threading.Condition(self._lock)
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(SCHEMA)
        self._to_hand_back: set[str] = set()  # topics whose leases go back as soon as SQLite can write again

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """An immediate (write-locking) transaction; the caller holds the thread lock.  SQLite failing (disk full,
        I/O error, locked for too long): QueueUnavailable."""
        try:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
                self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:  # a COMMIT that failed for a full disk has rolled back already
                    self._db.execute("ROLLBACK")
                raise
        except sqlite3.OperationalError as error:
            raise QueueUnavailable(str(error)) from error

    def _insert(self, db: sqlite3.Connection, key: str, message: Message) -> bool:
        now = time.time()
        try:
            db.execute("INSERT INTO jobs (topic, key, payload, state, available_at, created_at) "
                       "VALUES (?, ?, ?, ?, ?, ?)", (message.topic, key, encode(message), State.QUEUED, now, now))
        except sqlite3.IntegrityError:
            return False
        return True

    def put(self, key: str, message: Message, max_depth: int | None = None) -> bool:
        with self._available:
            # BEGIN IMMEDIATE takes the write lock first: no other process puts between the count and the insert.
            with self._transaction() as db:
                if db.execute("SELECT 1 FROM jobs WHERE topic = ? AND key = ? AND state IN (?, ?)",
                              (message.topic, key, State.QUEUED, State.LEASED)).fetchone():
                    return False
                if max_depth is not None and self._depth(db, message.topic) >= max_depth:
                    raise QueueFull(f"{message.topic} queue holds {max_depth} jobs")
                added = self._insert(db, key, message)
            self._available.notify_all()
            return added

    def claim(self, topic: str, limit: int) -> list[Job]:
        with self._lock:
            self._give_back()  # first: the leases this process dropped are not the ones it claims now
        now = time.time()
        with self._lock, self._transaction() as db:
            # For a leased job, available_at is the end of its lease; past it, its consumer died.
            db.execute("UPDATE jobs SET state = ? WHERE topic = ? AND state = ? AND available_at <= ?",
                       (State.QUEUED, topic, State.LEASED, now))
            exhausted = db.execute("SELECT id, key, attempts FROM jobs WHERE topic = ? AND state = ? AND attempts >= ?",
                                   (topic, State.QUEUED, self.max_attempts[topic])).fetchall()
            db.executemany("UPDATE jobs SET state = ?, error = ? WHERE id = ?",
                           [(State.DEAD, EXHAUSTED, id_) for id_, _, _ in exhausted])
            rows = db.execute("SELECT id, key, payload, attempts, created_at FROM jobs WHERE topic = ? AND state = ? "
                              "AND available_at <= ? ORDER BY available_at, id LIMIT ?",
                              (topic, State.QUEUED, now, limit)).fetchall()
            db.executemany("UPDATE jobs SET state = ?, attempts = attempts + 1, available_at = ? WHERE id = ?",
                           [(State.LEASED, now + self.lease_seconds, row[0]) for row in rows])
        for _, key, attempts in exhausted:
            dead_lettered(topic, key, attempts, EXHAUSTED)
        return [Job(str(id_), topic, key, decode(topic, payload), attempts + 1, created)
                for id_, key, payload, attempts, created in rows]

    def complete(self, job: Job, then: Sequence[tuple[str, Message]] = ()) -> None:
        with self._available:
            with self._transaction() as db:
                db.execute("DELETE FROM jobs WHERE id = ?", (int(job.id),))
                for key, message in then:
                    self._insert(db, key, message)
            if then:
                self._available.notify_all()

    def retry(self, job: Job, error: str, delay: float) -> State:
        state = State.DEAD if job.attempts >= self.max_attempts[job.topic] else State.QUEUED
        with self._available:
            with self._transaction() as db:
                db.execute("UPDATE jobs SET state = ?, available_at = ?, error = ? WHERE id = ?",
                           (state, time.time() + delay, error, int(job.id)))
            self._available.notify_all()
        if state is State.DEAD:
            dead_lettered(job.topic, job.key, job.attempts, error)
        return state

    def bury(self, job: Job, error: str) -> None:
        with self._lock, self._transaction() as db:
            db.execute("UPDATE jobs SET state = ?, error = ? WHERE id = ?", (State.DEAD, error, int(job.id)))
        dead_lettered(job.topic, job.key, job.attempts, error)

    def release(self, jobs: list[Job]) -> None:
        with self._available:
            with self._transaction() as db:
                db.executemany("UPDATE jobs SET state = ?, attempts = attempts - 1, available_at = ? "
                               "WHERE id = ? AND state = ?",
                               [(State.QUEUED, time.time(), int(job.id), State.LEASED) for job in jobs])
            self._available.notify_all()

    def hand_back(self, topic: str) -> None:
        """At once, where SQLite can (every lease of `topic` is this process's); where it cannot (disk full), at
        this process's next claim from `topic` that SQLite can write."""
        with self._available:
            self._to_hand_back.add(topic)
            with contextlib.suppress(QueueUnavailable):
                self._give_back()
            self._available.notify_all()

    def _give_back(self) -> None:
        """What hand_back() was asked for and SQLite has not done yet; the caller holds the thread lock."""
        for topic in sorted(self._to_hand_back):
            with self._transaction() as db:
                db.execute("UPDATE jobs SET state = ?, attempts = attempts - 1, available_at = ? "
                           "WHERE topic = ? AND state = ?", (State.QUEUED, time.time(), topic, State.LEASED))
            self._to_hand_back.discard(topic)

    def depth(self, topic: str) -> int:
        with self._lock:
            return self._depth(self._db, topic)

    @staticmethod
    def _depth(db: sqlite3.Connection, topic: str) -> int:
        (count,) = db.execute("SELECT COUNT(*) FROM jobs WHERE topic = ? AND state IN (?, ?)",
                              (topic, State.QUEUED, State.LEASED)).fetchone()
        return int(count)

    def wait(self, timeout: float) -> None:
        with self._available:
            self._available.wait(timeout)

    def counts(self) -> dict[str, dict[str, int]]:
        with self._lock:
            rows = self._db.execute("SELECT topic, state, COUNT(*) FROM jobs GROUP BY topic, state").fetchall()
        counts: dict[str, dict[str, int]] = {}
        for topic, state, count in rows:
            counts.setdefault(topic, {})[state] = count
        return counts

    def oldest_age(self, topic: str) -> float | None:
        with self._lock:
            (oldest,) = self._db.execute("SELECT MIN(created_at) FROM jobs WHERE topic = ? AND state IN (?, ?)",
                                         (topic, State.QUEUED, State.LEASED)).fetchone()
        return None if oldest is None else time.time() - oldest

    def dead(self, topic: str | None = None) -> list[DeadJob]:
        with self._lock:
            rows = self._db.execute(
                "SELECT id, topic, key, payload, attempts, created_at, error FROM jobs WHERE state = ? "
                "AND (? IS NULL OR topic = ?) ORDER BY id", (State.DEAD, topic, topic)).fetchall()
        return [DeadJob(Job(str(id_), topic_, key, decode(topic_, payload), attempts, created), error)
                for id_, topic_, key, payload, attempts, created, error in rows]

    def requeue_dead(self, topic: str | None = None) -> int:
        with self._available:
            with self._transaction() as db:
                # A dead letter whose key was queued again meanwhile stays dead: the newer job supersedes it.
                cursor = db.execute("UPDATE OR IGNORE jobs SET state = ?, attempts = 0, available_at = ?, error = '' "
                                    "WHERE state = ? AND (? IS NULL OR topic = ?)",
                                    (State.QUEUED, time.time(), State.DEAD, topic, topic))
            self._available.notify_all()
            return cursor.rowcount

    def recover(self, topics: Sequence[str]) -> None:
        with self._available:
            with self._transaction() as db:
                db.executemany("UPDATE jobs SET state = ?, available_at = ? WHERE state = ? AND topic = ?",
                               [(State.QUEUED, time.time(), State.LEASED, topic) for topic in topics])
            self._available.notify_all()

    def close(self) -> None:
        with self._lock:
            self._db.close()
