"""The dispatcher sends a result file as written, and converts it for a destination that takes only implicit VR."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from pydicom import Dataset, dcmread
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid
from pynetdicom import AE, _config, evt
from pynetdicom.sop_class import SecondaryCaptureImageStorage  # type: ignore[attr-defined]

from node.config import Config, Destination
from node.dispatch import Dispatcher
from node.infra.audit import AuditLog
from node.infra.metrics import Metrics
from node.infra.storage import write_durably
from node.queue import DELIVER, DeliverJob, open_queue
from node.report.outbox import encode
from tools.orthanc import free_port


def result_file(folder: Path) -> Path:
    dataset = Dataset()
    dataset.SOPClassUID, dataset.SOPInstanceUID = SecondaryCaptureImageStorage, generate_uid()
    dataset.PatientName, dataset.Modality, dataset.ImageComments = "DOE^JANE", "OT", "written explicit"
    dataset.file_meta = FileMetaDataset()
    dataset.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    path = folder / "sc.dcm"
    write_durably(path, encode(dataset))
    return path


@pytest.mark.parametrize("accepted", [[ExplicitVRLittleEndian, ImplicitVRLittleEndian], [ImplicitVRLittleEndian]])
def test_a_result_reaches_the_destination_in_a_syntax_it_accepts(tmp_path: Path, accepted: list[str],
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", False)  # restored afterwards; the dispatcher sets it
    received: list[tuple[str, Dataset]] = []

    def on_store(event: evt.Event) -> int:
        received.append((event.context.transfer_syntax, event.dataset))
        return 0x0000

    ae = AE("DEST")
    ae.add_supported_context(SecondaryCaptureImageStorage, accepted)
    port = free_port()
    server = ae.start_server(("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)])
    config = Config(data_dir=tmp_path, destinations=(Destination("DEST", "127.0.0.1", port),))
    queue = open_queue(config)
    try:
        path = result_file(tmp_path)
        written: Any = dcmread(path)
        queue.put("sc@DEST", DeliverJob(path=str(path), destination="DEST", sop_instance_uid=written.SOPInstanceUID,
                                        source="x", result_at=time.time()))
        Dispatcher(config, queue, Metrics(), AuditLog(tmp_path)).deliver("DEST", queue.claim(DELIVER, 1))
        assert queue.counts() == {}  # delivered, not retried
    finally:
        queue.close()
        server.shutdown()
    ((syntax, got),) = received
    assert syntax == accepted[0]  # explicit (the file's own: streamed) where accepted, else converted to implicit
    assert got.ImageComments == "written explicit" and got.SOPInstanceUID == written.SOPInstanceUID
