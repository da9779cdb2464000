"""The worker's handling of its inputs, on a real queue and model."""

from __future__ import annotations

from pathlib import Path

from node.analyze import Analyzer
from node.audit import AuditLog
from node.config import Config
from node.metrics import Metrics
from node.model import Grader
from node.queue import ANALYZE, open_queue
from node.report import Device
from node.worker import Worker


def test_an_unreadable_spool_file_is_retried_not_dead_lettered(model_dir: Path, tmp_path: Path) -> None:
    """On shared storage a file can be briefly out of reach (server hiccup, another client's stale cache)."""
    config = Config(data_dir=tmp_path)
    queue = open_queue(config.queue, tmp_path, {ANALYZE: 3})
    audit = AuditLog(tmp_path)
    worker = Worker(config, queue, Analyzer(Grader(model_dir, device="cpu", threads=1)), Device(), Metrics(), audit)
    queue.put(ANALYZE, "1.2.3", {"path": str(config.spool / "1.2.3.dcm"), "received_at": 0.0})
    worker.process(queue.claim(ANALYZE, 1))
    assert queue.counts() == {ANALYZE: {"queued": 1}} and queue.dead() == []
    queue.close()
    audit.close()
