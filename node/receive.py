"""The Storage SCP: Verification and Storage; an instance is acknowledged only once it is durably kept.

No pixel decoding happens here.  pynetdicom writes each instance to a file in data_dir/incoming as it arrives; the
handler parses its header for the selection rules, moves it into the spool (fsync, rename, fsync of the folder),
queues a job, and only then answers Success.  Whatever it cannot keep gets a failure status, never a false Success.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import secrets
import shutil
import ssl
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from pynetdicom import AE, AllStoragePresentationContexts, _config, dimse_messages, evt
from pynetdicom.association import Association
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from pynetdicom.transport import ThreadedAssociationServer

from node.config import Config
from node.infra.audit import AuditLog
from node.infra.logs import instance_fields, log_event, pseudonym_key
from node.infra.metrics import Metrics
from node.infra.storage import is_valid_uid, move_durably
from node.infra.tls import server_context
from node.instances import SUPPORTED_TRANSFER_SYNTAXES, DecodeError, read_header
from node.queue import AnalyzeJob, Queue, QueueFull, QueueUnavailable

SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700
DATASET_DOES_NOT_MATCH = 0xA900
CANNOT_UNDERSTAND = 0xC000
STALE_SECONDS = 600  # an incoming file untouched this long belongs to a transfer that was cut off
# A connection that has not completed its TLS handshake, or sent its A-ASSOCIATE-RQ, this long after connecting
# is closed: port scanners, health checks and stalled peers must not hold a place.
REQUEST_DEADLINE_SECONDS = 5.0
UNLIMITED = 2**31 - 1  # pynetdicom's own limit counts idle connections too; the receiver counts associations


class IncomingFile:
    """The file pynetdicom writes an arriving instance into, made so that a failing write does not abort the
    association.

    pynetdicom aborts when writing to its file raises (data_dir full, quota, I/O error).  This file keeps the first
    error instead, drops the rest of the instance, and the handler answers 0xA700: the peer may resend later.
    Installed in place of pynetdicom's NamedTemporaryFile (it writes to `.file` and names the file by `.name`).
    """

    def __init__(self, **options: Any) -> None:
        self.error: OSError | None = None
        self.file = self  # pynetdicom flushes `file` after each fragment
        try:
            self._file: Any = tempfile.NamedTemporaryFile(**options)  # noqa: SIM115 (pynetdicom closes it)
            self.name = self._file.name
        except OSError as error:  # not even an empty file could be made: a name that cannot exist
            self._file, self.error = None, error
            self.name = str(Path(tempfile.gettempdir()) / f"unwritable-{secrets.token_hex(8)}.dcm")

    def write(self, data: bytes) -> int:
        if self.error is None:
            try:
                self._file.write(data)
            except OSError as error:
                self.error = error
        return len(data)

    def flush(self) -> None:
        if self.error is None:
            try:
                self._file.flush()
            except OSError as error:
                self.error = error

    def close(self) -> None:
        with contextlib.suppress(OSError):
            if self._file is not None:
                self._file.close()


class PerConnectionTlsServer(ThreadedAssociationServer):
    """pynetdicom's threaded server, with the TLS handshake in each connection's own thread and bounded in time.

    pynetdicom shakes hands in the accept loop, so one connection that never starts the handshake stalled every
    other peer until it went away.
    """

    tls: ssl.SSLContext | None = None

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        if self.tls is not None:
            timeout = request.gettimeout()
            try:
                request.settimeout(REQUEST_DEADLINE_SECONDS)
                request = self.tls.wrap_socket(request, server_side=True)
                request.settimeout(timeout)
            except OSError as error:  # ssl.SSLError and the deadline included
                log_event("tls_handshake_failed", logging.WARNING, address=str(client_address[0]),
                          reason=" ".join(str(error).split()) or type(error).__name__)
                self.shutdown_request(request)
                return
        super().process_request_thread(request, client_address)


class Receiver:
    def __init__(self, config: Config, queue: Queue, metrics: Metrics, audit: AuditLog) -> None:
        self.config, self.queue, self.metrics, self.audit = config, queue, metrics, audit
        self.spool = config.spool
        self.unselected = config.data_dir / "unselected"
        # Where pynetdicom writes arriving instances (file names unique, so receivers may share it).  On the
        # spool's file system keeping one is a rename, elsewhere a copy.
        self.incoming = config.data_dir / "incoming"
        self.spool.mkdir(parents=True, exist_ok=True)
        self.unselected.mkdir(parents=True, exist_ok=True)
        self.incoming.mkdir(parents=True, exist_ok=True)
        self.pseudonym_key = pseudonym_key(config.data_dir)
        scp = config.scp
        self.ae = AE(scp.ae_title)
        self.ae.maximum_pdu_size = scp.max_pdu
        self.ae.maximum_associations = UNLIMITED
        self.ae.acse_timeout = REQUEST_DEADLINE_SECONDS  # also pynetdicom's ARTIM: the wait for A-ASSOCIATE-RQ
        self.admission = threading.Lock()
        self.admitted: list[Association] = []  # associations let in; the limit is on these
        self.ae.add_supported_context(Verification)
        for context in AllStoragePresentationContexts:
            self.ae.add_supported_context(context.abstract_syntax, list(SUPPORTED_TRANSFER_SYNTAXES))
        self.server: Any = None

    def start(self) -> int:
        """Listen; returns the bound port (useful when the config asks for port 0)."""
        scp = self.config.scp
        # Keeping an instance written while it arrived is an fsync and a rename, not a copy of megabytes held in
        # memory: about a third less CPU per instance (BENCHMARKS.md).  Both settings are process-wide; pynetdicom
        # removes the file after the handler unless the handler moved it, but not that of a transfer cut off.
        _config.STORE_RECV_CHUNKED_DATASET = True
        tempfile.tempdir = str(self.incoming)  # pynetdicom's files go where tempfile puts them
        dimse_messages.NamedTemporaryFile = IncomingFile  # type: ignore[attr-defined,assignment]
        self.sweep()
        context = server_context(self.config.tls)
        server = self.ae.make_server((scp.bind_address, scp.port), server_class=PerConnectionTlsServer,
                                     evt_handlers=[(evt.EVT_REQUESTED, self.on_requested),
                                                   (evt.EVT_C_ECHO, self.on_echo),
                                                   (evt.EVT_C_STORE, self.on_store),
                                                   (evt.EVT_CONN_CLOSE, self.on_closed)])
        server.tls = context
        threading.Thread(target=server.serve_forever, name="dicom-acceptor", daemon=True).start()
        self.ae._servers.append(server)  # as AE.start_server does: server.shutdown() takes it out again
        self.server = server
        port = int(self.server.server_address[1])
        log_event("listening", ae_title=scp.ae_title, address=scp.bind_address, port=port, tls=context is not None)
        return port

    def stop(self, grace_seconds: float = 10.0) -> None:
        """Refuse new associations, let running ones finish for a while, then abort them (unacknowledged
        instances are the peer's to resend)."""
        if self.server is None:
            return
        self.server.shutdown()
        deadline = time.monotonic() + grace_seconds
        while self.ae.active_associations and time.monotonic() < deadline:
            time.sleep(0.05)
        for association in self.ae.active_associations:
            association.abort()
        self.server = None

    def allowed(self, ae_title: str, address: str) -> bool:
        scp = self.config.scp
        return scp.allow_any_peer or any(
            peer.ae_title == ae_title and peer.host in ("", address) for peer in scp.peers)

    def on_requested(self, event: evt.Event) -> None:
        calling = event.assoc.requestor.primitive.calling_ae_title.strip()
        address = event.assoc.requestor.address
        if not self.allowed(calling, address):
            # Permanent, by the service user, calling AE title not recognised.
            self.reject(event.assoc, (0x01, 0x01, 0x03), calling, address,
                        "calling AE title not allowed from this address")
            return
        with self.admission:
            self.admitted = [association for association in self.admitted if association.is_alive()]
            full = len(self.admitted) >= self.config.scp.max_associations
            if not full:
                self.admitted.append(event.assoc)
        if full:  # transient, by the service provider, local limit exceeded: the peer may try again later
            self.reject(event.assoc, (0x02, 0x03, 0x02), calling, address, "association limit reached")

    def reject(self, association: Association, reason: tuple[int, int, int], calling: str, address: str,
               why: str) -> None:
        log_event("association_rejected", logging.WARNING, calling_ae=calling, address=address, reason=why)
        association.acse.send_reject(*reason)
        association.kill()  # waits until the rejection is sent

    def on_echo(self, event: evt.Event) -> int:
        return SUCCESS

    def on_closed(self, event: evt.Event) -> None:
        self.sweep()

    def sweep(self) -> None:
        """Remove what transfers that were cut off (aborted, or the receiver died) left in the incoming folder;
        none of it was acknowledged."""
        stale = time.time() - STALE_SECONDS
        for path in self.incoming.iterdir():
            with contextlib.suppress(OSError):  # another receiver's sweep was quicker
                if path.stat().st_mtime < stale:
                    path.unlink()

    def on_store(self, event: evt.Event) -> int:
        calling = event.assoc.requestor.ae_title.strip()
        uid = str(event.request.AffectedSOPInstanceUID or "")
        if not is_valid_uid(uid):
            return self.refuse(CANNOT_UNDERSTAND, calling, uid, "invalid SOP Instance UID")
        incoming = event.request._dataset_file
        if isinstance(incoming, IncomingFile) and incoming.error is not None:
            return self.refuse(OUT_OF_RESOURCES, calling, uid, f"cannot write instance: {incoming.error}")
        received = Path(event.dataset_path)  # the instance in DICOM file format, as it came
        size = received.stat().st_size
        try:
            header = read_header(received)
        except DecodeError as error:
            return self.refuse(CANNOT_UNDERSTAND, calling, uid, str(error))
        if str(header.get("SOPInstanceUID", "")) != uid:
            return self.refuse(DATASET_DOES_NOT_MATCH, calling, uid, "dataset SOP Instance UID differs from request")
        fields = {"calling_ae": calling, **instance_fields(header, self.pseudonym_key)}
        reason = self.config.selection.reason_to_skip(header)
        try:
            if reason:
                if self.config.scp.keep_unselected:
                    self.keep(received, self.unselected / f"{uid}.dcm")
            else:
                self.spool_and_queue(received, uid, fields["patient"])
        except QueueFull:
            return self.refuse(OUT_OF_RESOURCES, calling, uid, "queue full")
        except (OSError, QueueUnavailable) as error:  # disk full, quota, permissions: promise nothing
            return self.refuse(OUT_OF_RESOURCES, calling, uid, f"cannot keep instance: {error}")
        self.metrics.received.inc()
        log_event("received", selected=reason is None, reason=reason or "", bytes=size, **fields)
        self.audit.record("received", address=event.assoc.requestor.address, selected=reason is None,
                          reason=reason or "", **fields)
        return SUCCESS

    def spool_and_queue(self, received: Path, uid: str, patient: str) -> None:
        """Into the spool, then queued within the queue's bound (QueueFull: nothing kept).  The spool file has a
        name of its own, so that a concurrent copy of the same instance (another association or receiver) that
        meets the bound or finds the job queued never removes the file of the job that was queued."""
        path = self.spool / f"{uid}.{secrets.token_hex(4)}.dcm"
        self.keep(received, path)
        try:
            queued = self.queue.put(uid, AnalyzeJob(path=str(path), patient=patient, received_at=time.time()),
                                    max_depth=self.config.queue.max_depth)
        except QueueFull:  # nothing queued (unlike an unavailable queue, which may have taken the job)
            path.unlink()
            raise
        if queued:
            self.metrics.selected.inc()
        else:  # waiting for analysis already, from an earlier copy with its own file
            path.unlink()

    def keep(self, received: Path, path: Path) -> None:
        """Move durably, unless that would eat into the disk reserve (OSError, as a full disk would)."""
        reserve = self.config.scp.min_free_disk_mb * 2**20
        if shutil.disk_usage(path.parent).free - received.stat().st_size < reserve:
            raise OSError(errno.ENOSPC, f"less than {self.config.scp.min_free_disk_mb} MB would be left free")
        move_durably(received, path)

    def refuse(self, status: int, calling: str, uid: str, reason: str) -> int:
        self.metrics.failed.labels("receive").inc()
        fields = {"calling_ae": calling, "sop_instance_uid": uid[:64], "status": f"0x{status:04X}", "reason": reason}
        log_event("receive_failed", logging.WARNING, **fields)
        try:
            self.audit.record("refused", **fields)
        except OSError as error:  # the disk that made the refusal necessary, say: the answer still goes out
            log_event("audit_failed", logging.ERROR, audit_error=str(error), **fields)
        return status
