"""The node as a DICOM client for people: C-ECHO and C-STORE to any peer (`knee-node echo`, `knee-node send`)."""

from __future__ import annotations

import re
import ssl
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from pydicom import Dataset
from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from node.config import Destination
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
    association = ae.associate(peer.host, peer.port, ae_title=peer.ae_title, tls_args=(tls, peer.host) if tls else None)
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
    association = ae.associate(peer.host, peer.port, ae_title=peer.ae_title, tls_args=(tls, peer.host) if tls else None)
    if not association.is_established:
        yield from (Sent(path, None, f"cannot associate with {peer}") for path in files)
        return
    try:
        for path in files:
            yield store(association, path)
    finally:
        if association.is_established:
            association.release()


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
        return Sent(path, None, " ".join(f"{type(error).__name__}: {error}".split()))
    status = int(response.Status) if response else None
    return Sent(path, status, "" if status is not None else "no response")
