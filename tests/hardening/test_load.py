"""Load: 8 concurrent associations x 50 radiographs into a queue bounded at 16 jobs.

The SCP answers 0xA700 while the queue is full (backpressure instead of memory growth); the senders retry as a
PACS would; every accepted radiograph is processed; the node's memory stays bounded.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest

from node.scu import send
from node.synthetic import compose
from node.training.data import CropSet
from tests.helpers import NodeProcess

SENDERS, PER_SENDER, QUEUE_BOUND = 8, 50, 16


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


@pytest.fixture(scope="module")
def batches(val_crops: CropSet, tmp_path_factory: pytest.TempPathFactory) -> list[list[Path]]:
    """50 small radiographs, re-identified for each sender: 400 distinct instances."""
    folder = tmp_path_factory.mktemp("load")
    rng = np.random.default_rng(9)
    bases = [compose(val_crops, [int(rng.integers(len(val_crops.files)))], rng, spacing_mm=0.6, bits=8).dataset
             for _ in range(PER_SENDER)]
    batches = []
    for sender in range(SENDERS):
        files = []
        for number, base in enumerate(bases):
            base.SOPInstanceUID = base.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid(
                entropy_srcs=[str(sender), str(number)])
            path = folder / f"{sender}-{number}.dcm"
            base.save_as(path, enforce_file_format=True)
            files.append(path)
        batches.append(files)
    return batches


def test_concurrent_senders_meet_backpressure_and_everything_accepted_is_processed(
        batches: list[list[Path]], model_dir: Path, tmp_path: Path) -> None:
    node = NodeProcess(tmp_path, model_dir, scp={"allow_any_peer": True}, queue={"max_depth": QUEUE_BOUND},
                       worker={"batch_size": 8, "max_wait_ms": 50}).start()
    assert node.process is not None
    refused, failures, memory = [0] * SENDERS, [], []

    def sender(index: int) -> None:
        pending = list(batches[index])
        while pending:
            results = list(send(pending, node.peer(), f"LOAD{index}"))
            pending = [r.path for r in results if r.status != 0x0000]
            refused[index] += sum(r.status == 0xA700 for r in results)
            failures.extend(r for r in results if r.status not in (0x0000, 0xA700))
            if pending:
                time.sleep(0.5)  # as a PACS would, before trying again

    threads = [threading.Thread(target=sender, args=(i,)) for i in range(SENDERS)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    try:
        while any(t.is_alive() for t in threads) or node.metric("knee_node_processed_total") < SENDERS * PER_SENDER:
            memory.append(rss_mb(node.process.pid))
            assert time.monotonic() - started < 900, "load did not drain"
            time.sleep(0.5)
    finally:
        for thread in threads:
            thread.join(60)
        elapsed = time.monotonic() - started
        node.stop()
    assert failures == []
    assert sum(refused) > 0  # the bound was reached and answered with 0xA700
    assert len(list((node.folder / "data" / "results").glob("*.dcm"))) == 2 * SENDERS * PER_SENDER
    early, late = np.median(memory[: len(memory) // 4]), np.median(memory[-len(memory) // 4:])
    print(f"load: {SENDERS * PER_SENDER} radiographs in {elapsed:.0f} s, {sum(refused)} answers 0xA700, "
          f"RSS median {early:.0f} MB early, {late:.0f} MB late, max {max(memory):.0f} MB")
    assert max(memory) < 2500 and late < early + 300  # bounded, not growing with the work done
