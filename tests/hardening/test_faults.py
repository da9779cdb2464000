"""Faults against a real `knee-node serve`: kill -9 during receive, analysis and dispatch; a full spool disk; a full
data_dir; destinations that answer failure statuses.

Invariants everywhere: nothing acknowledged is lost (each acknowledged radiograph's SC and SR reach the
destination), nothing is delivered twice (output UIDs are deterministic: counted as distinct SOP Instance UIDs
at the destination).  tests/test_serve.py adds kill -9 after 10 of 20 acknowledged and a destination outage.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pynetdicom import evt

from node.scu import Sent, echo, send
from node.training.data import CropSet
from tests.helpers import NodeProcess, StoreScp, fill, wait_until
from tools.synthetic import compose

SC = "1.2.840.10008.5.1.4.1.1.7"
COUNT = 6


@pytest.fixture(scope="module")
def radiographs(val_crops: CropSet, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Six small knee radiographs (0.6 mm pixels, 500 x 400)."""
    folder = tmp_path_factory.mktemp("faults")
    rng = np.random.default_rng(5)
    paths = []
    for number in range(COUNT):
        dataset = compose(val_crops, [int(rng.integers(len(val_crops.files)))], rng, spacing_mm=0.6, bits=8).dataset
        paths.append(folder / f"{number}.dcm")
        dataset.save_as(paths[-1], enforce_file_format=True)
    return paths


class SlowScp(StoreScp):
    """A destination that takes its time over each instance, so that a kill finds deliveries in flight."""

    def on_store(self, event: evt.Event) -> int:
        time.sleep(0.3)
        return super().on_store(event)


class CountingScp(StoreScp):
    """A destination that counts every C-STORE it answers, whatever its status."""

    attempts = 0

    def on_store(self, event: evt.Event) -> int:
        self.attempts += 1
        return super().on_store(event)


def send_all(paths: list[Path], node: NodeProcess, pause: float = 0.5, timeout: float = 120) -> list[Sent]:
    """Send until every file is acknowledged, as a PACS retries what was refused; returns every answer."""
    answers: list[Sent] = []
    pending = list(paths)
    deadline = time.monotonic() + timeout
    while pending:
        answers += send(pending, node.peer(), "TEST_SCU")
        pending = [a.path for a in answers[-len(pending):] if a.status != 0x0000]
        assert time.monotonic() < deadline, f"{len(pending)} never acknowledged"
        if pending:
            time.sleep(pause)
    return answers


def queue_counts(node: NodeProcess) -> dict[str, dict[str, int]]:
    return json.loads(node.admin("status", "--json").stdout)["queues"]


def check_delivered(destination: StoreScp, sources: list[Path], duplicates_allowed: int = 0) -> None:
    """One SR, SC and SEG per source at the destination; arrivals beyond the distinct UIDs are redeliveries."""
    wait_until(lambda: len({uid for _, uid in destination.received}) >= 3 * len(sources), timeout=120)
    uids = [uid for _, uid in destination.received]
    assert len(set(uids)) == 3 * len(sources)
    print(f"delivered {len(set(uids))} distinct results in {len(uids)} arrivals")
    assert len(uids) - len(set(uids)) <= duplicates_allowed, f"{len(uids) - len(set(uids))} delivered twice"
    referenced = {pydicom.dcmread(path).SourceImageSequence[0].ReferencedSOPInstanceUID
                  for path in destination.folder.glob("*.dcm") if pydicom.dcmread(path).SOPClassUID == SC}
    assert referenced == {str(pydicom.dcmread(path).SOPInstanceUID) for path in sources}


@pytest.mark.parametrize("phase", ["receive", "analysis", "dispatch"])
def test_kill_9_loses_nothing_acknowledged_and_delivers_nothing_twice(phase: str, radiographs: list[Path],
                                                                      model_dir: Path, tmp_path: Path) -> None:
    destination = (SlowScp if phase == "dispatch" else StoreScp)(tmp_path / "pacs").start()
    # analysis: one batch of all six, so that the kill at the first result finds the others inside the worker
    node = NodeProcess(tmp_path / "node", model_dir, worker={"batch_size": COUNT, "max_wait_ms": 3000},
                       destinations=[{"ae_title": "DEST", "host": "127.0.0.1", "port": destination.port}],
                       dispatch={"backoff_seconds": 0.5, "max_backoff_seconds": 1}).start()
    unacknowledged = []
    try:
        if phase == "receive":  # kill -9 with the association open, after three acknowledged
            with contextlib.closing(send(radiographs, node.peer(), "TEST_SCU")) as results:
                for number, result in enumerate(results):
                    assert result.status == 0x0000
                    if number == 2:
                        node.kill()
                        break
            unacknowledged = radiographs[3:]
            left = queue_counts(node)["analyze"]
            assert left["queued"] + left["leased"] == 3, left  # acknowledged, not yet analysed
        else:
            assert all(a.status == 0x0000 for a in send_all(radiographs, node))
            wait_until(lambda: node.events("processed" if phase == "analysis" else "sent"), timeout=120)
            node.kill()
            left = queue_counts(node)["analyze" if phase == "analysis" else "deliver"]
            assert left["leased"] > 0, left  # the kill found jobs in the worker's or the dispatcher's hands
        print(f"kill -9 during {phase}: left {left}")
        node.start()
        send_all(unacknowledged, node)  # the PACS sends again what was not acknowledged
        # After analysis started, the dispatcher may be sending a result when the kill comes; it is sent again after
        # the restart, with the same UID (the destination keeps one): at most that one arrives twice.
        check_delivered(destination, radiographs, duplicates_allowed=0 if phase == "receive" else 1)
    finally:
        node.stop()
        destination.stop()


@pytest.fixture
def small_spool(tmp_path: Path) -> Iterator[Path]:
    """The node's spool on a 3 MB tmpfs (room for about three radiographs); skipped where mount is not allowed."""
    spool = tmp_path / "node" / "data" / "spool"
    spool.mkdir(parents=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(spool)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {mounted.stderr.decode().strip()}")
    yield spool
    subprocess.run(["umount", "-l", str(spool)], check=True)


def test_a_full_spool_disk_answers_out_of_resources_and_loses_nothing_acknowledged(
        small_spool: Path, val_crops: CropSet, model_dir: Path, tmp_path: Path) -> None:
    rng = np.random.default_rng(6)
    sources = []
    for number in range(6):  # 1 MB each (0.3 mm pixels, 8 bits)
        dataset = compose(val_crops, [number], rng, spacing_mm=0.3, bits=8).dataset
        sources.append(tmp_path / f"{number}.dcm")
        dataset.save_as(sources[-1], enforce_file_format=True)
    destination = StoreScp(tmp_path / "pacs").start()
    node = NodeProcess(tmp_path / "node", model_dir, scp={"min_free_disk_mb": 0},
                       destinations=[{"ae_title": "DEST", "host": "127.0.0.1", "port": destination.port}]).start()
    try:
        answers = send_all(sources, node)
        check_delivered(destination, sources)
    finally:
        node.stop()
        destination.stop()
    refusals = [a for a in answers if a.status == 0xA700]
    print(f"full spool: {len(answers)} C-STOREs for {len(sources)} radiographs, {len(refusals)} answered 0xA700")
    assert refusals and {a.status for a in answers} == {0x0000, 0xA700}
    assert all("[Errno 28]" in event["reason"] for event in node.events("receive_failed"))  # ENOSPC
    assert not list(small_spool.iterdir())  # every spooled radiograph analysed and removed


@pytest.fixture
def small_data_dir(tmp_path: Path) -> Iterator[Path]:
    """The node's data_dir on a 4 MB tmpfs; skipped where mount is not allowed."""
    data_dir = tmp_path / "node" / "data"
    data_dir.mkdir(parents=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(data_dir)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {mounted.stderr.decode().strip()}")
    yield data_dir
    subprocess.run(["umount", "-l", str(data_dir)], check=True)


def test_a_full_data_dir_answers_out_of_resources_without_aborting_and_loses_nothing_acknowledged(
        small_data_dir: Path, radiographs: list[Path], model_dir: Path, tmp_path: Path) -> None:
    destination = StoreScp(tmp_path / "pacs").start()
    # The spool on another disk: what fills up is data_dir, where pynetdicom writes arriving instances.
    node = NodeProcess(tmp_path / "node", model_dir, spool_dir=str(tmp_path / "spool"), scp={"min_free_disk_mb": 0},
                       destinations=[{"ae_title": "DEST", "host": "127.0.0.1", "port": destination.port}]).start()
    try:
        filler = fill(small_data_dir)
        refused = list(send(radiographs[:3], node.peer(), "TEST_SCU"))  # one association
        assert echo(node.peer(), "ECHOSCU") == 0x0000
        filler.unlink()
        answers = send_all(radiographs, node)
        check_delivered(destination, radiographs)
    finally:
        node.stop()
        destination.stop()
    print(f"full data_dir: {[f'0x{a.status:04X}' if a.status is not None else a.reason for a in refused]} on one "
          f"association; after freeing it {len(answers)} C-STOREs for {len(radiographs)} radiographs")
    assert [a.status for a in refused] == [0xA700] * 3  # each answered on the association it came by
    failed = node.events("receive_failed")
    assert len(failed) == 3 and all("cannot write instance: [Errno 28]" in event["reason"] for event in failed)
    assert "aborting association" not in node.log.read_text()  # pynetdicom's line when a handler's write fails
    assert {a.status for a in answers} == {0x0000}


def test_destinations_answering_failure_are_retried_then_dead_lettered_never_counted_delivered(
        radiographs: list[Path], model_dir: Path, tmp_path: Path) -> None:
    full = CountingScp(tmp_path / "full", "FULL", status=0xA700).start()
    refusing = CountingScp(tmp_path / "refusing", "REFUSING", status=0xC000).start()
    healthy = StoreScp(tmp_path / "healthy", "HEALTHY").start()
    destinations = [{"ae_title": scp.ae_title, "host": "127.0.0.1", "port": scp.port}
                    for scp in (full, refusing, healthy)]
    node = NodeProcess(tmp_path / "node", model_dir, destinations=destinations,
                       dispatch={"max_attempts": 3, "backoff_seconds": 0.2, "max_backoff_seconds": 0.5}).start()
    try:
        send_all(radiographs[:2], node)
        check_delivered(healthy, radiographs[:2])  # one failing destination does not hold up another
        wait_until(lambda: queue_counts(node)["deliver"].get("dead", 0) == 12, timeout=120)
        assert node.metric("knee_node_sent_total") == 6
        assert node.metric('knee_node_dead_letters{queue="deliver"}') == 12
        assert node.metric('knee_node_queue_oldest_seconds{queue="deliver"}') == 0  # nothing unfinished
    finally:
        node.stop()
        for scp in (full, refusing, healthy):
            scp.stop()
    assert full.attempts == refusing.attempts == 6 * 3  # six results, three attempts each
    assert full.received == refusing.received == []
    status = json.loads(node.admin("status", "--json").stdout)
    assert sorted(letter["error"] for letter in status["dead_letters"]) == ["status 0xA700"] * 6 + ["status 0xC000"] * 6
    assert sorted((e["reason"], e["count"]) for e in status["dead_by_reason"]["deliver"]) == [
        ("status 0xA700", 6), ("status 0xC000", 6)]
    assert all(e["oldest_seconds"] > 0 for e in status["dead_by_reason"]["deliver"])
    warnings = node.events("dead_letter")  # one WARNING line per dead letter, with its reason
    assert sorted(w["reason"] for w in warnings) == ["status 0xA700"] * 6 + ["status 0xC000"] * 6
    assert {(w["level"], w["queue"], w["attempts"]) for w in warnings} == {("WARNING", "deliver", 3)}
    assert "dead    6 queued" in node.admin("status").stdout
    audit = [json.loads(line) for path in (node.folder / "data" / "audit").glob("*.jsonl")
             for line in path.read_text().splitlines()]
    assert {record["destination"] for record in audit if record["event"] == "delivered"} == {"HEALTHY"}
