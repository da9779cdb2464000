"""The node as a DICOM client: C-ECHO and C-STORE to any peer for people (`knee-node echo`, `knee-node send`), and
the dispatcher's C-STORE sender, which keeps one association per destination open while results flow."""

from __future__ import annotations

import contextlib
import re
import socket
import ssl
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from pydicom import Dataset, dcmread
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, _config
from pynetdicom.association import Association
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    ComprehensiveSRStorage,
    SecondaryCaptureImageStorage,
    SegmentationStorage,
    Verification,
)

from node.config import Destination
from node.delivery import Outcome
from node.infra.logs import describe
from node.instances import DecodeError, read_header

SUCCESS = 0x0000
WARNING_STATUSES = frozenset({0x0001, 0xB000, 0xB006, 0xB007})  # stored, with a warning: delivered
PEER = re.compile(r"^(?P<ae>[^@]{1,16})@(?P<host>[^:]+):(?P<port>\d{1,5})$")
MAX_CONTEXTS = 128  # presentation contexts one association may propose


def parse_peer(text: str) -> Destination:
    """`AET@HOST:PORT` -> Destination; ValueError with the expected form otherwise."""
    match = PEER.match(text)
    if match is None:
        raise ValueError(f"{text!r} is not AET@HOST:PORT")
    return Destination(match["ae"], match["host"], int(match["port"]))


def delivered(status: int | None) -> bool:
    """A C-STORE status that means the peer keeps the instance."""
    return status == SUCCESS or status in WARNING_STATUSES


def client_ae(calling_ae: str, timeout: float) -> AE:
    """An AE for outgoing associations, every wait (connect, ACSE, DIMSE, network) bounded by `timeout`."""
    ae = AE(calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = ae.connection_timeout = timeout
    return ae


def echo(peer: Destination, calling_ae: str, timeout: float = 10, tls: ssl.SSLContext | None = None) -> int | None:
    """The C-ECHO status, or None when no association could be made; `tls`: DICOM TLS with this context."""
    ae = client_ae(calling_ae, timeout)
    ae.add_requested_context(Verification)
    association = associate(ae, peer, tls)
    if not association.is_established:
        return None
    try:
        response = association.send_c_echo()
        return int(response.Status) if response else None
    finally:
        association.release()


@dataclass(frozen=True)
class Sent:
    path: Path
    status: int | None  # None: not sent (unreadable, no context, association lost)
    reason: str = ""


def send(paths: Iterable[Path], peer: Destination, calling_ae: str, timeout: float = 30,
         tls: ssl.SSLContext | None = None) -> Iterator[Sent]:
    """C-STORE each file as stored on disk (no decoding), one association, one result per file."""
    files, contexts = [], set()
    for path in paths:
        try:
            header = read_header(path)
            contexts.add((str(header.SOPClassUID), str(header.file_meta.TransferSyntaxUID)))
            files.append(path)
        except (DecodeError, AttributeError) as error:
            yield Sent(path, None, f"not a DICOM file with a SOP class and transfer syntax ({error})")
    ae = client_ae(calling_ae, timeout)
    # One context per class and syntax: offered several syntaxes in one context, an acceptor picks its favourite,
    # and a file is sent only in the syntax it is stored in.
    for sop_class, syntax in sorted(contexts)[:MAX_CONTEXTS]:
        ae.add_requested_context(sop_class, syntax)
    if not files:
        return
    association = associate(ae, peer, tls)
    if not association.is_established:
        yield from (Sent(path, None, f"cannot associate with {peer}") for path in files)
        return
    try:
        for path in files:
            yield store(association, path)
    finally:
        if association.is_established:
            association.release()


def associate(ae: AE, peer: Destination, tls: ssl.SSLContext | None) -> Association:
    """An association with `peer` (established or not), its socket sending at once.

    pynetdicom writes a C-STORE as several small PDUs: with Nagle's algorithm each one after the first waited for
    the peer's delayed ACK (40 ms on Linux), most of a small instance's send time.
    """
    association = ae.associate(peer.host, peer.port, ae_title=peer.ae_title, tls_args=(tls, peer.host) if tls else None)
    if association.is_established:
        with contextlib.suppress(OSError, AttributeError):  # a socket gone already fails the send that follows
            association.dul.socket.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return association


def send_c_store(association: Association, instance: Path | Dataset) -> Dataset:
    """`association.send_c_store`, returning only once pynetdicom's reactor thread runs again.

    Each send_* pauses that thread and waits until it says it is paused; just after a response, it still says so
    until it gets the CPU back.  A next request sent in that window goes out with the thread running: it can take
    the response off the queue and drop it ("Received unexpected C-STORE service message"), and the request then
    fails after the DIMSE timeout (pynetdicom issue 875).  Under load (fast 0xA700 answers, a busy CPU) this
    happened every few hundred stores.
    """
    response = association.send_c_store(instance)
    while association._is_paused and association.is_alive():
        time.sleep(0.0001)
    return response


def store(association: Association, path: Path) -> Sent:
    if not association.is_established:
        return Sent(path, None, "association lost")
    try:
        response = send_c_store(association, path)
    except Exception as error:  # a file pynetdicom cannot read or send costs that file, not the others
        return Sent(path, None, describe(error))
    status = int(response.Status) if response else None
    return Sent(path, status, "" if status is not None else "no response")


class CStoreSender:
    """Result files to a C-STORE SCP on one association kept open across batches: opened by the first send,
    re-opened by the next send once the peer or the network dropped it (the file in flight then counts as not
    delivered), released by close().  Consecutive files (all objects of a radiograph) go on the same association
    unless it fails between them.  Delivered: a Success or Warning status."""

    def __init__(self, destination: Destination, calling_ae: str, timeout: float,
                 tls: ssl.SSLContext | None) -> None:
        self.destination, self.tls = destination, tls
        self.ae = client_ae(calling_ae, timeout)
        for sop_class in (SecondaryCaptureImageStorage, ComprehensiveSRStorage, SegmentationStorage):
            for syntax in (ExplicitVRLittleEndian, ImplicitVRLittleEndian):  # one each: a file streams only as is
                self.ae.add_requested_context(sop_class, syntax)
        # Result files go out as written: pynetdicom streams the dataset from the file rather than decoding and
        # re-encoding it, which cost more than the rest of a delivery (BENCHMARKS.md).  A process-wide setting.
        _config.STORE_SEND_CHUNKED_DATASET = True
        self.association: Association | None = None

    def send(self, paths: Sequence[Path]) -> Iterator[Outcome]:
        for index, path in enumerate(paths):
            association = self.open()
            if association is None:  # the rest would only wait for the same refusal
                yield from (Outcome(False, f"cannot associate with {self.destination}") for _ in paths[index:])
                return
            yield self.store(association, path)

    def open(self) -> Association | None:
        """The association held, or a new one when there is none or it is no longer established."""
        if self.association is None or not self.association.is_established:
            self.close()
            association = associate(self.ae, self.destination, self.tls)
            self.association = association if association.is_established else None
        return self.association

    def store(self, association: Association, path: Path) -> Outcome:
        try:
            try:
                response = send_c_store(association, path)  # streamed from the file as written
            except ValueError:  # the destination accepted only implicit VR: decoded and re-encoded on the way
                response = send_c_store(association, dcmread(path))
        except Exception as error:  # the association went (or the file is unreadable): this file, not the others
            if not association.is_established:
                return Outcome(False, f"association with {self.destination} lost")
            return Outcome(False, describe(error))
        status = int(response.Status) if response else None
        if status is None:
            return Outcome(False, "no response")
        return Outcome(delivered(status), f"0x{status:04X}" if delivered(status) else f"status 0x{status:04X}")

    def close(self) -> None:
        if self.association is not None and self.association.is_established:
            self.association.release()
        self.association = None
