"""The dispatcher sends a result file as written, and converts it for a destination that takes only implicit VR;
it keeps one association per destination across batches, re-opens it when the peer drops it, lets it go when idle
or stopping; nothing is lost or delivered twice on the way."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest
from pydicom import Dataset, dcmread
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid
from pynetdicom import AE, _config, evt
from pynetdicom.sop_class import SecondaryCaptureImageStorage  # type: ignore[attr-defined]

from node import dispatch
from node.config import Config, Destination, DispatchConfig
from node.dispatch import Dispatcher
from node.infra.audit import AuditLog
from node.infra.metrics import Metrics
from node.infra.storage import write_durably
from node.queue import DELIVER, DeliverJob, Queue, open_queue
from node.report.outbox import encode
from tests.helpers import StoreScp, wait_until
from tools.orthanc import free_port


def result_file(folder: Path, name: str = "sc.dcm") -> Path:
    dataset = Dataset()
    dataset.SOPClassUID, dataset.SOPInstanceUID = SecondaryCaptureImageStorage, generate_uid()
    dataset.PatientName, dataset.Modality, dataset.ImageComments = "DOE^JANE", "OT", "written explicit"
    dataset.file_meta = FileMetaDataset()
    dataset.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    path = folder / name
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
        dispatcher = Dispatcher(config, queue, Metrics(), AuditLog(tmp_path))
        dispatcher.deliver("DEST", queue.claim(DELIVER, 1))
        dispatcher.close()
        assert queue.counts() == {}  # delivered, not retried
    finally:
        queue.close()
        server.shutdown()
    ((syntax, got),) = received
    assert syntax == accepted[0]  # explicit (the file's own: streamed) where accepted, else converted to implicit
    assert got.ImageComments == "written explicit" and got.SOPInstanceUID == written.SOPInstanceUID


class RecordingScp(StoreScp):
    """A destination that notes the association each instance came on, and can go down and come back."""

    def __init__(self, folder: Path) -> None:
        super().__init__(folder)
        self.associations: list[object] = []  # kept alive, so that their ids stay distinct

    def on_store(self, event: evt.Event) -> int:
        self.associations.append(event.assoc)
        return super().on_store(event)

    def distinct_associations(self) -> int:
        return len({id(association) for association in self.associations})

    def open_associations(self) -> int:
        return len(self.server.active_associations)

    def restart(self) -> None:
        """Down (the associations it held end) and up again on the same port."""
        self.stop()
        self.start()


def queue_radiograph(queue: Queue, folder: Path, number: int) -> list[str]:
    """Three result files of one radiograph queued for DEST; their SOP Instance UIDs."""
    uids = []
    for kind in ("sr", "sc", "seg"):
        path = result_file(folder, f"{kind}-{number}.dcm")
        uids.append(str(dcmread(path).SOPInstanceUID))
        queue.put(f"{uids[-1]}@DEST", DeliverJob(path=str(path), destination="DEST", sop_instance_uid=uids[-1],
                                                 source=str(number), result_at=time.time()))
    return uids


def test_batches_share_one_association_reopened_after_a_peer_restart_released_when_idle(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dispatch, "IDLE_SECONDS", 1.0)
    peer = RecordingScp(tmp_path / "pacs").start()
    config = Config(data_dir=tmp_path, destinations=(Destination("DEST", "127.0.0.1", peer.port),),
                    dispatch=DispatchConfig(backoff_seconds=0.2, max_backoff_seconds=0.5))
    queue = open_queue(config)
    stop = threading.Event()
    dispatcher = threading.Thread(target=Dispatcher(config, queue, Metrics(), AuditLog(tmp_path)).run, args=(stop,))
    dispatcher.start()
    sent: list[str] = []

    def deliver(radiographs: range) -> None:
        for number in radiographs:  # one batch each: the next is queued once the last has arrived
            sent.extend(queue_radiograph(queue, tmp_path, number))
            wait_until(lambda: len(peer.received) >= len(sent), timeout=30)

    try:
        deliver(range(3))
        assert peer.distinct_associations() == 1  # three batches, one association
        peer.restart()
        deliver(range(3, 5))
        assert peer.distinct_associations() == 2  # re-opened once after the restart
        wait_until(lambda: peer.open_associations() == 0, timeout=10)  # idle: released
        deliver(range(5, 6))
        assert peer.distinct_associations() == 3 and peer.open_associations() == 1
        stop.set()
        dispatcher.join(30)
        wait_until(lambda: peer.open_associations() == 0, timeout=5)  # released when the dispatcher stopped
        assert sorted(uid for _, uid in peer.received) == sorted(sent)  # each result once, none lost
        assert queue.counts() == {}  # nothing left to retry, nothing dead
    finally:
        stop.set()
        dispatcher.join(30)
        queue.close()
        peer.stop()
