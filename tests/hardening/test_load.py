"""Load: 8 concurrent associations x 50 radiographs into a queue bounded at 16 jobs.

The SCP answers 0xA700 while the queue is full (backpressure instead of memory growth).  Each sender does what a
PACS does with 0xA700: it ends the association and sends what is left a moment later.  Every accepted radiograph is
processed, none twice, the queue never exceeds its bound and the node's memory stays flat.

The radiographs are small lateral views: the worker writes an SC and an SR for each ("lateral view, no grade")
without running the model, so the test loads the receive, queue, report and write path of the node rather than
the CPU with convolutions (tests/test_serve.py grades knees over the network; bench/ measures the model).
"""

from __future__ import annotations

import contextlib
import threading
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest

from node.scu import send
from node.training.data import CropSet
from tests.helpers import NodeProcess, memory_mb
from tools.synthetic import compose

SENDERS, PER_SENDER, QUEUE_BOUND = 8, 50, 16
SUCCESS, OUT_OF_RESOURCES = 0x0000, 0xA700


@pytest.fixture(scope="module")
def batches(val_crops: CropSet, tmp_path_factory: pytest.TempPathFactory) -> list[list[Path]]:
    """50 radiographs of 300 x 240 pixels (1 mm), re-identified for each sender: 400 distinct instances."""
    folder = tmp_path_factory.mktemp("load")
    rng = np.random.default_rng(9)
    bases = [compose(val_crops, [int(rng.integers(len(val_crops.files)))], rng, spacing_mm=1.0, bits=8,
                     view="LATERAL").dataset for _ in range(PER_SENDER)]
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
                       worker={"batch_size": 8, "max_wait_ms": 0}).start()
    assert node.process is not None
    refused, failures, associations = [0] * SENDERS, [], [0] * SENDERS
    memory, depths = [], []

    def sender(index: int) -> None:
        pending = list(batches[index])
        while pending:
            associations[index] += 1
            with contextlib.closing(send(pending, node.peer(), f"LOAD{index}")) as results:
                for result in results:
                    if result.status == SUCCESS:
                        pending.remove(result.path)
                        continue
                    if result.status == OUT_OF_RESOURCES:
                        refused[index] += 1
                    else:
                        failures.append(result)
                    break  # the association ends; the rest follows after a pause
            if pending:
                time.sleep(1.0)

    threads = [threading.Thread(target=sender, args=(i,)) for i in range(SENDERS)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    try:
        while any(t.is_alive() for t in threads) or node.metric("knee_node_processed_total") < SENDERS * PER_SENDER:
            memory.append(memory_mb(node.process.pid, "VmRSS"))
            depths.append(node.metric('knee_node_queue_depth{queue="analyze"}'))
            assert time.monotonic() - started < 600, "load did not drain"
            time.sleep(0.5)
        elapsed = time.monotonic() - started
    finally:
        for thread in threads:
            thread.join(60)
        node.stop()
    processed = [event["sop_instance_uid"] for event in node.events("processed")]
    early, late = np.median(memory[: len(memory) // 4]), np.median(memory[-len(memory) // 4:])
    print(f"load: {SENDERS} x {PER_SENDER} radiographs in {elapsed:.0f} s over {sum(associations)} associations, "
          f"{sum(refused)} answers 0xA700, queue depth max {max(depths):.0f}, RSS median {early:.0f} MB early, "
          f"{late:.0f} MB late, max {max(memory):.0f} MB")
    assert failures == []
    assert sum(refused) > 0  # the bound was reached and answered with 0xA700
    assert max(depths) <= QUEUE_BOUND  # the bound is checked in the step that queues (tests/test_queue.py)
    assert len(processed) == len(set(processed)) == SENDERS * PER_SENDER  # each accepted instance once
    assert len(list((node.folder / "data" / "results").glob("*.dcm"))) == 2 * SENDERS * PER_SENDER
    assert max(memory) < 2500 and late < early + 200  # bounded, not growing with the work done
