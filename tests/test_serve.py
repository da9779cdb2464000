"""`knee-node serve` against real peers on loopback: DCMTK and pynetdicom senders, a pynetdicom destination.

Receive -> queue -> worker -> dispatcher, through a kill -9, a destination outage, dead letters and requeue.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless, JPEGLSLossless, RLELossless
from pynetdicom import AE

from tests.helpers import NodeProcess, StoreScp, dciodvfy_errors, require_tool, wait_until
from tools import KNEE_KL
from tools.synthetic import minimal_header, write_composites

SC, SR, SEG = "1.2.840.10008.5.1.4.1.1.7", "1.2.840.10008.5.1.4.1.1.88.33", "1.2.840.10008.5.1.4.1.1.66.4"
CR, DX = "1.2.840.10008.5.1.4.1.1.1", "1.2.840.10008.5.1.4.1.1.1.1"
SYNTAXES = [ExplicitVRLittleEndian, JPEG2000Lossless, JPEGLSLossless, RLELossless]
RG1 = Path(get_testdata_file("RG1_UNCI.dcm", download=False))


@pytest.fixture(scope="module")
def knees(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Path]]:
    """20 knee radiographs (single and bilateral), five in each of four transfer syntaxes."""
    if not (KNEE_KL / "val").is_dir():
        pytest.skip(f"knee-kl crops not found at {KNEE_KL}")
    folder = tmp_path_factory.mktemp("knees")
    records = write_composites(KNEE_KL / "val", folder, 20, bilateral_fraction=0.3, syntaxes=SYNTAXES, seed=11,
                               spacing_mm=0.3)
    by_syntax: dict[str, list[Path]] = {}
    for record in records:
        by_syntax.setdefault(record["syntax"], []).append(folder / record["file"])
    return by_syntax


def pynetdicom_send(files: list[Path], port: int) -> list[int]:
    ae = AE("TEST_SCU")
    for sop_class in (CR, DX):
        for syntax in SYNTAXES:  # one context per syntax: each file goes as stored
            ae.add_requested_context(sop_class, syntax)
    association = ae.associate("127.0.0.1", port, ae_title="KNEE_NODE")
    assert association.is_established
    statuses = [int(association.send_c_store(path).Status) for path in files]
    association.release()
    return statuses


def storescu(port: int, files: list[Path], *options: str) -> None:
    subprocess.run([require_tool("storescu"), "-aet", "STORESCU", "-aec", "KNEE_NODE", *options, "127.0.0.1",
                    str(port), *map(str, files)], check=True, capture_output=True, timeout=120)


def test_twenty_radiographs_from_three_senders_give_twenty_sr_sc_and_seg(
        knees: dict[str, list[Path]], model_dir: Path, tmp_path: Path) -> None:
    destination = StoreScp(tmp_path / "pacs").start()
    node = NodeProcess(tmp_path, model_dir,
                       destinations=[{"ae_title": "DEST", "host": "127.0.0.1", "port": destination.port}]).start()
    try:
        subprocess.run([require_tool("echoscu"), "-aet", "ECHOSCU", "-aec", "KNEE_NODE", "127.0.0.1",
                        str(node.scp_port)], check=True, timeout=30)
        storescu(node.scp_port, knees[ExplicitVRLittleEndian])
        storescu(node.scp_port, knees[JPEG2000Lossless], "-xv")
        sent = subprocess.run([sys.executable, "-m", "node.cli", "send", *map(str, knees[JPEGLSLossless]), "--to",
                               f"KNEE_NODE@127.0.0.1:{node.scp_port}", "--calling-ae", "TEST_SCU"],
                              capture_output=True, text=True, timeout=120)
        assert sent.returncode == 0, sent.stderr
        assert pynetdicom_send(knees[RLELossless], node.scp_port) == [0] * 5
        assert destination.wait_for(60, timeout=240), f"got {len(destination.received)} of 60"
        assert node.metric("knee_node_received_total") == 20
        # The node counts a delivery once the destination's answer is in.
        wait_until(lambda: node.metric("knee_node_sent_total") >= 60, timeout=10)
        assert node.metric("knee_node_sent_total") == 60
    finally:
        assert node.stop() == 0
        destination.stop()
    classes = [sop_class for sop_class, _ in destination.received]
    assert classes.count(SC) == 20 and classes.count(SR) == 20 and classes.count(SEG) == 20
    assert len({uid for _, uid in destination.received}) == 60
    for path in sorted(destination.folder.glob("*.dcm")):
        assert dciodvfy_errors(path) == [], path.name
    sources = {pydicom.dcmread(p).SourceImageSequence[0].ReferencedSOPInstanceUID
               for p in destination.folder.glob("*.dcm") if pydicom.dcmread(p).SOPClassUID == SC}
    assert len(sources) == 20
    assert node.events("stopped")


def test_a_radiograph_with_only_type_1_attributes_reaches_the_destination_as_valid_results(
        knees: dict[str, list[Path]], model_dir: Path, tmp_path: Path) -> None:
    source = tmp_path / "minimal.dcm"
    minimal_header(pydicom.dcmread(knees[ExplicitVRLittleEndian][0])).save_as(source, enforce_file_format=True)
    destination = StoreScp(tmp_path / "pacs").start()
    node = NodeProcess(tmp_path, model_dir,
                       destinations=[{"ae_title": "DEST", "host": "127.0.0.1", "port": destination.port}]).start()
    try:
        storescu(node.scp_port, [source])
        assert destination.wait_for(3, timeout=120), f"got {len(destination.received)} of 3"
    finally:
        node.stop()
        destination.stop()
    assert sorted(sop_class for sop_class, _ in destination.received) == sorted([SC, SR, SEG])
    for path in destination.folder.glob("*.dcm"):
        assert dciodvfy_errors(path) == [], path.name
        assert pydicom.dcmread(path).PatientID == ""


def test_kill_9_after_ten_acknowledged_loses_nothing_and_duplicates_nothing(
        knees: dict[str, list[Path]], model_dir: Path, tmp_path: Path) -> None:
    files = [path for group in knees.values() for path in group]
    destination = StoreScp(tmp_path / "pacs").start()
    config = {"destinations": [{"ae_title": "DEST", "host": "127.0.0.1", "port": destination.port}]}
    node = NodeProcess(tmp_path, model_dir, **config).start()
    assert pynetdicom_send(files[:10], node.scp_port) == [0] * 10
    node.kill()  # acknowledged: spooled and queued, some still waiting for or inside the worker
    assert len(node.events("processed")) < 10
    node.start()
    try:
        assert pynetdicom_send(files[10:], node.scp_port) == [0] * 10
        assert destination.wait_for(60, timeout=240), f"got {len(destination.received)} of 60"
    finally:
        node.stop()
        destination.stop()
    uids = [uid for _, uid in destination.received]
    assert len(uids) == 60 and len(set(uids)) == 60


def test_results_wait_out_a_destination_outage_then_dead_letters_and_requeue(
        knees: dict[str, list[Path]], model_dir: Path, tmp_path: Path) -> None:
    files = knees[ExplicitVRLittleEndian][:2]
    destination = StoreScp(tmp_path / "pacs")  # not listening yet
    node = NodeProcess(tmp_path, model_dir,
                       destinations=[{"ae_title": "DEST", "host": "127.0.0.1", "port": destination.port}],
                       dispatch={"max_attempts": 3, "backoff_seconds": 0.5, "max_backoff_seconds": 1,
                                 "timeout_seconds": 5}).start()
    try:
        assert pynetdicom_send(files[:1], node.scp_port) == [0]
        while not node.events("send_failed"):  # the first delivery attempt has failed
            destination.wait_for(1, timeout=0.5)
        destination.start()
        assert destination.wait_for(3, timeout=60)  # SR, SC and SEG once the destination is up
        destination.stop()

        assert pynetdicom_send(files[1:], node.scp_port) == [0]
        for _ in range(240):
            status = json.loads(node.admin("status", "--json").stdout)
            if status["queues"]["deliver"]["dead"] == 3:
                break
            destination.wait_for(1, timeout=0.5)
        assert status["queues"]["deliver"]["dead"] == 3, status
        assert all("cannot associate" in letter["error"] for letter in status["dead_letters"])

        destination.start()
        requeued = node.admin("requeue")
        assert requeued.returncode == 0 and "requeued 3 dead letters" in requeued.stdout
        assert destination.wait_for(6, timeout=60)
    finally:
        node.stop()
        destination.stop()
    assert len({uid for _, uid in destination.received}) == 6


def test_unknown_caller_is_rejected_and_a_chest_is_acknowledged_but_not_graded(model_dir: Path,
                                                                              tmp_path: Path) -> None:
    node = NodeProcess(tmp_path, model_dir).start()
    try:
        rejected = subprocess.run([require_tool("echoscu"), "-aet", "INTRUDER", "-aec", "KNEE_NODE", "127.0.0.1",
                                   str(node.scp_port)], capture_output=True, text=True, timeout=30)
        assert rejected.returncode != 0 and "Calling AE Title Not Recognized" in rejected.stderr
        storescu(node.scp_port, [RG1])
        assert node.metric("knee_node_received_total") == 1
        assert node.metric("knee_node_selected_total") == 0
    finally:
        node.stop()
    (received,) = node.events("received")
    assert received["selected"] is False and received["reason"] == "not a knee examination (body part CHEST)"
    assert not list((tmp_path / "data" / "results").iterdir())
    assert node.events("association_rejected")[0]["calling_ae"] == "INTRUDER"
    logged = node.log.read_text()
    assert str(pydicom.dcmread(RG1).PatientID) not in logged and str(pydicom.dcmread(RG1).PatientName) not in logged
