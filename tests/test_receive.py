"""The receiver's incoming folder: instances are written there as they arrive and moved into the spool; what a
transfer cut off midway leaves there is swept once stale."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

from node.scu import echo, send
from node.training.data import CropSet
from tests.helpers import NodeProcess, wait_until
from tools.synthetic import compose


def age(path: Path) -> None:
    then = time.time() - 86400  # a day: far beyond node.receive.STALE_SECONDS
    os.utime(path, (then, then))


def test_a_received_instance_moves_to_the_spool_and_stale_leftovers_are_swept(
        val_crops: CropSet, model_dir: Path, tmp_path: Path) -> None:
    incoming, spool = tmp_path / "node" / "data" / "incoming", tmp_path / "node" / "data" / "spool"
    incoming.mkdir(parents=True)
    stale, recent = incoming / "tmp-stale.dcm", incoming / "tmp-recent.dcm"
    for path in (stale, recent):
        path.write_bytes(b"the first bytes of a transfer that was cut off")
    age(stale)
    dataset = compose(val_crops, [0], np.random.default_rng(0), spacing_mm=0.6, bits=8).dataset
    dataset.save_as(tmp_path / "knee.dcm", enforce_file_format=True)
    node = NodeProcess(tmp_path / "node", model_dir, role="receiver").start()
    try:
        assert not stale.exists() and recent.exists()  # swept at start, a live transfer's file stays
        for _ in range(2):  # the second copy finds the job queued: acknowledged, and not kept twice
            (sent,) = list(send([tmp_path / "knee.dcm"], node.peer(), "TEST_SCU"))
            assert sent.status == 0x0000
            (spooled,) = spool.iterdir()
            assert spooled.name.startswith(f"{dataset.SOPInstanceUID}.") and spooled.suffix == ".dcm"
            assert spooled.read_bytes().endswith(dataset.PixelData)
        age(recent)
        assert echo(node.peer(), "ECHOSCU") == 0x0000  # any association that closes sweeps
        wait_until(lambda: not recent.exists(), timeout=10)
        assert list(incoming.iterdir()) == []
    finally:
        node.stop()
