"""Patient data stays out of logs, metrics and the audit trail; the audit trail records each received instance,
each result and each delivery."""

from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file

from node.infra.logs import PSEUDONYM_KEY_FILE, pseudonym
from node.scu import send
from node.training.data import CropSet
from tests.helpers import NodeProcess, StoreScp, wait_until
from tools.synthetic import compose

NAME, PATIENT_ID, BIRTH_DATE = "Quistorpf^Xaveria^Ottilie", "PHI8675309", "19370415"
# What would betray the patient in any spelling: name parts, the ID, the birth date with or without separators.
SECRETS = ("Quistorpf", "Xaveria", "Ottilie", PATIENT_ID, BIRTH_DATE, "1937-04-15", "15.04.1937")


@pytest.fixture(scope="module")
def radiographs(val_crops: CropSet, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Two knee radiographs and a chest (not selected), all of one distinctively named patient."""
    folder = tmp_path_factory.mktemp("patient")
    rng = np.random.default_rng(3)
    datasets = [compose(val_crops, [index], rng, spacing_mm=0.6, bits=8).dataset for index in (0, 1)]
    datasets.append(dcmread(get_testdata_file("RG1_UNCI.dcm", download=False)))
    paths = []
    for number, dataset in enumerate(datasets):
        dataset.PatientName, dataset.PatientID, dataset.PatientBirthDate = NAME, PATIENT_ID, BIRTH_DATE
        paths.append(folder / f"{number}.dcm")
        dataset.save_as(paths[-1], enforce_file_format=True)
    return paths


def test_no_patient_data_in_logs_metrics_or_audit_and_the_audit_trail_is_complete(
        radiographs: list[Path], model_dir: Path, tmp_path: Path) -> None:
    destination = StoreScp(tmp_path / "pacs").start()
    node = NodeProcess(tmp_path / "node", model_dir, log_level="DEBUG",
                       destinations=[{"ae_title": "DEST", "host": "127.0.0.1", "port": destination.port}]).start()
    try:
        assert [result.status for result in send(radiographs, node.peer(), "TEST_SCU")] == [0x0000] * 3
        assert destination.wait_for(6, timeout=120)
        wait_until(lambda: node.metric("knee_node_sent_total") >= 6, timeout=30)
        with urllib.request.urlopen(f"http://127.0.0.1:{node.metrics_port}/metrics", timeout=5) as reply:
            metrics = reply.read().decode()
    finally:
        node.stop()
        destination.stop()
    audit_files = list((node.folder / "data" / "audit").glob("*.jsonl"))
    texts = {"node.log (DEBUG)": node.log.read_text(), "/metrics": metrics,
             "audit": "".join(path.read_text() for path in audit_files)}
    for where, text in texts.items():
        found = [secret for secret in SECRETS if secret.lower() in text.lower()]
        assert found == [], f"{where} carries {found}"

    key_file = node.folder / "data" / PSEUDONYM_KEY_FILE
    assert key_file.stat().st_mode & 0o777 == 0o600
    patient = pseudonym(PATIENT_ID, key_file.read_bytes())  # keyed: not found by hashing candidate IDs
    records = [json.loads(line) for line in texts["audit"].splitlines()]
    by_event: dict[str, list[dict]] = {}
    for record in records:
        time.strptime(record["time"], "%Y-%m-%dT%H:%M:%SZ")
        by_event.setdefault(record["event"], []).append(record)
    sources = [str(dcmread(path).SOPInstanceUID) for path in radiographs]
    received = {r["sop_instance_uid"]: r for r in by_event["received"]}
    assert set(received) == set(sources)
    for record in received.values():
        assert record["patient"] == patient and record["calling_ae"] == "TEST_SCU"
        assert record["address"] == "127.0.0.1"
    assert [received[uid]["selected"] for uid in sources] == [True, True, False]
    results = {r["sop_instance_uid"]: r for r in by_event["result"]}
    assert set(results) == set(sources[:2])  # the chest is not graded
    for record in results.values():
        assert record["model"] == "test-random 0.0.0-test" and record["patient"] == patient
        assert record["knees"] and all(knee["grade"] in range(5) for knee in record["knees"])
    delivered = by_event["delivered"]
    assert len(delivered) == 6 and {r["source"] for r in delivered} == set(sources[:2])
    assert {(r["destination"], r["status"]) for r in delivered} == {("DEST", "0x0000")}
    assert {r["sop_instance_uid"] for r in delivered} == {uid for _, uid in destination.received}
