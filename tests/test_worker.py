"""The worker's handling of its inputs, on a real queue and model."""

from __future__ import annotations

from pathlib import Path

from node.analysis.grading import Analyzer
from node.analysis.model import Grader
from node.config import Config
from node.infra.audit import AuditLog
from node.infra.metrics import Metrics
from node.queue import ANALYZE, AnalyzeJob, open_queue
from node.report import Equipment
from node.worker import Worker


def test_an_unreadable_spool_file_is_retried_not_dead_lettered(model_dir: Path, tmp_path: Path) -> None:
    """On shared storage a file can be briefly out of reach (server hiccup, another client's stale cache)."""
    config = Config(data_dir=tmp_path)
    queue = open_queue(config)
    audit = AuditLog(tmp_path)
    worker = Worker(config, queue, Analyzer(Grader(model_dir, device="cpu", threads=1)), Equipment(), Metrics(), audit)
    queue.put("1.2.3", AnalyzeJob(path=str(config.spool / "1.2.3.dcm"), patient="p", received_at=0.0))
    worker.process(queue.claim(ANALYZE, 1))
    assert queue.counts() == {ANALYZE: {"queued": 1}} and queue.dead() == []
    queue.close()
    audit.close()
