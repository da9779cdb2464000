"""Who may talk to the node: DICOM TLS both ways (certificates made by the test with openssl), the calling-AE
allow-list by title and address, the limit on concurrent associations and the PDU size."""

from __future__ import annotations

import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydicom.data import get_testdata_file
from pynetdicom import AE, evt
from pynetdicom.association import Association
from pynetdicom.pdu import P_DATA_TF
from pynetdicom.sop_class import CTImageStorage, Verification  # type: ignore[attr-defined]

from node.receive import REQUEST_DEADLINE_SECONDS
from node.scu import echo, send
from node.training.data import CropSet
from tests.helpers import NodeProcess, StoreScp, require_tool, wait_until
from tools.synthetic import compose

CT = Path(get_testdata_file("CT_small.dcm", download=False))
MAX_PDU = 16384


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A test CA with certificates for the node, a client and the destination (127.0.0.1, localhost); and a
    stranger's client certificate from another CA.  EC P-256 keys, valid for two days."""
    folder = tmp_path_factory.mktemp("pki")
    openssl = require_tool("openssl")

    def run(*args: str) -> None:
        subprocess.run([openssl, *args], cwd=folder, check=True, capture_output=True)

    new_key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    for ca in ("ca", "other-ca"):
        run("req", "-x509", *new_key, "-keyout", f"{ca}.key", "-out", f"{ca}.crt", "-days", "2",
            "-subj", f"/CN=knee-node test {ca}")
    (folder / "san.ext").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    for name, ca in (("node", "ca"), ("client", "ca"), ("pacs", "ca"), ("stranger", "other-ca")):
        run("req", "-new", *new_key, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}")
        run("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.crt", "-CAkey", f"{ca}.key", "-CAcreateserial",
            "-out", f"{name}.crt", "-days", "2", "-extfile", "san.ext")
    return folder


@pytest.fixture(scope="module")
def radiograph(val_crops: CropSet, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One small knee radiograph (0.6 mm pixels)."""
    path = tmp_path_factory.mktemp("knee") / "knee.dcm"
    dataset = compose(val_crops, [0], np.random.default_rng(0), spacing_mm=0.6, bits=8).dataset
    dataset.save_as(path, enforce_file_format=True)
    return path


def client(pki: Path, name: str | None) -> ssl.SSLContext:
    """Trusts the test CA; presents `name`'s certificate (None: none)."""
    context = ssl.create_default_context(cafile=pki / "ca.crt")
    if name is not None:
        context.load_cert_chain(pki / f"{name}.crt", pki / f"{name}.key")
    return context


def test_tls_scp_lets_in_only_callers_with_a_trusted_certificate_and_results_go_out_over_tls(
        pki: Path, model_dir: Path, radiograph: Path, tmp_path: Path) -> None:
    pacs_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=pki / "ca.crt")
    pacs_context.load_cert_chain(pki / "pacs.crt", pki / "pacs.key")
    pacs_context.verify_mode = ssl.CERT_REQUIRED  # the node must show its own certificate
    destination = StoreScp(tmp_path / "pacs", tls=pacs_context).start()
    node = NodeProcess(tmp_path / "node", model_dir,
                       tls={"certificate": str(pki / "node.crt"), "private_key": str(pki / "node.key"),
                            "ca_certificates": str(pki / "ca.crt")},
                       destinations=[{"ae_title": "DEST", "host": "127.0.0.1", "port": destination.port,
                                      "tls": True}]).start()
    try:
        with idle_connections(node.scp_port, 3):  # never start the handshake: must not hold up anyone else
            started = time.monotonic()
            assert echo(node.peer(), "TEST_SCU", tls=client(pki, "client")) == 0x0000
            assert time.monotonic() - started < 3
        echoed = subprocess.run([sys.executable, "-m", "node.cli", "echo", f"KNEE_NODE@127.0.0.1:{node.scp_port}",
                                 "--calling-ae", "TEST_SCU", "--tls-ca", str(pki / "ca.crt"),
                                 "--tls-cert", str(pki / "client.crt"), "--tls-key", str(pki / "client.key")],
                                capture_output=True, text=True, timeout=60)
        assert echoed.returncode == 0, echoed.stderr
        assert echo(node.peer(), "TEST_SCU") is None  # plain DICOM
        assert echo(node.peer(), "TEST_SCU", tls=client(pki, None)) is None  # TLS without a client certificate
        assert echo(node.peer(), "TEST_SCU", tls=client(pki, "stranger")) is None  # from another CA
        (sent,) = send([radiograph], node.peer(), "TEST_SCU", tls=client(pki, "client"))
        assert sent.status == 0x0000
        assert destination.wait_for(3, timeout=120)  # SR, SC, SEG, over TLS with the node's certificate
        # The node counts a delivery once the destination's answer is in, a moment after the destination has it.
        wait_until(lambda: node.metric("knee_node_sent_total") >= 3, timeout=10)
        assert node.metric("knee_node_sent_total") == 3
    finally:
        node.stop()
        destination.stop()
    assert node.events("listening")[0]["tls"] is True


@pytest.fixture(scope="module")
def guarded(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    """A node that lets in TEST_SCU from anywhere and PINNED only from 127.0.0.2; two associations at a time,
    PDUs of at most 16 kB."""
    node = NodeProcess(tmp_path_factory.mktemp("guarded"), model_dir,
                       scp={"peers": [{"ae_title": "TEST_SCU"}, {"ae_title": "PINNED", "host": "127.0.0.2"}],
                            "max_associations": 2, "max_pdu": MAX_PDU}).start()
    yield node
    assert node.stop() == 0


def associate(node: NodeProcess, calling: str, source: str = "127.0.0.1",
              handlers: Sequence[tuple[evt.InterventionEvent | evt.NotificationEvent, Callable[..., Any]]] = (),
              ) -> Association:
    ae = AE(calling)
    ae.add_requested_context(Verification)
    ae.add_requested_context(CTImageStorage)
    return ae.associate("127.0.0.1", node.scp_port, ae_title="KNEE_NODE", bind_address=(source, 0),
                        evt_handlers=list(handlers))


@contextmanager
def idle_connections(port: int, count: int) -> Iterator[list[socket.socket]]:
    """`count` TCP connections to the node that send nothing, as a port scanner or a TCP health check leaves them."""
    sockets = [socket.create_connection(("127.0.0.1", port), timeout=30) for _ in range(count)]
    try:
        yield sockets
    finally:
        for held in sockets:
            held.close()


def test_idle_connections_use_no_association_place_and_are_closed_after_the_deadline(guarded: NodeProcess) -> None:
    with idle_connections(guarded.scp_port, 6) as idle:  # three times the node's limit of two
        started = time.monotonic()
        held = [associate(guarded, "TEST_SCU") for _ in range(2)]
        assert all(a.is_established for a in held) and time.monotonic() - started < 3
        for association in held:
            association.release()
        assert all(connection.recv(1) == b"" for connection in idle)  # closed by the node
        assert time.monotonic() - started < REQUEST_DEADLINE_SECONDS + 5


def test_a_sender_dribbling_its_request_does_not_hold_up_others(guarded: NodeProcess) -> None:
    slow = socket.create_connection(("127.0.0.1", guarded.scp_port), timeout=30)
    request = bytes([0x01, 0x00]) + (200).to_bytes(4, "big") + bytes(200)  # an A-ASSOCIATE-RQ's start

    def dribble() -> None:
        for byte in request[:8]:
            try:
                slow.send(bytes([byte]))
            except OSError:  # closed by the node: the point
                return
            time.sleep(1)

    sender = threading.Thread(target=dribble, daemon=True)
    sender.start()
    started = time.monotonic()
    association = associate(guarded, "TEST_SCU")
    assert association.is_established and time.monotonic() - started < 3
    assert association.send_c_echo().Status == 0x0000
    association.release()
    sender.join(30)
    slow.close()


def test_the_allow_list_checks_the_calling_ae_title_and_its_address(guarded: NodeProcess) -> None:
    outcomes = {}
    for calling, source in (("TEST_SCU", "127.0.0.1"), ("TEST_SCU", "127.0.0.3"), ("PINNED", "127.0.0.2"),
                            ("PINNED", "127.0.0.1"), ("INTRUDER", "127.0.0.1")):
        association = associate(guarded, calling, source)
        outcomes[calling, source] = association.is_established
        if association.is_established:
            association.release()
    assert outcomes == {("TEST_SCU", "127.0.0.1"): True, ("TEST_SCU", "127.0.0.3"): True,
                        ("PINNED", "127.0.0.2"): True, ("PINNED", "127.0.0.1"): False,
                        ("INTRUDER", "127.0.0.1"): False}
    rejected = [(e["calling_ae"], e["address"]) for e in guarded.events("association_rejected")]
    assert ("PINNED", "127.0.0.1") in rejected and ("INTRUDER", "127.0.0.1") in rejected


def test_a_third_association_is_refused_while_two_are_open(guarded: NodeProcess) -> None:
    held = [associate(guarded, "TEST_SCU") for _ in range(2)]
    assert all(a.is_established for a in held)
    third = associate(guarded, "TEST_SCU")
    rejection = third.acceptor.primitive
    # transient, by the service provider (presentation), local limit exceeded: the peer may try again later
    assert third.is_rejected and (rejection.result, rejection.result_source, rejection.diagnostic) == (2, 3, 2)
    held.pop().release()
    fourth = associate(guarded, "TEST_SCU")
    assert fourth.is_established
    for association in (*held, fourth):
        association.release()


def test_the_node_announces_its_pdu_limit_and_takes_an_instance_in_pieces_of_that_size(
        guarded: NodeProcess) -> None:
    sizes: list[int] = []
    def count(event: evt.Event) -> None:
        if isinstance(event.pdu, P_DATA_TF):
            sizes.append(len(event.pdu.encode()))

    association = associate(guarded, "TEST_SCU", handlers=[(evt.EVT_PDU_SENT, count)])
    assert association.acceptor.maximum_length == MAX_PDU
    status = association.send_c_store(CT)
    association.release()
    assert int(status.Status) == 0x0000  # acknowledged (a CT is not selected for grading)
    print(f"max_pdu {MAX_PDU}: {CT.stat().st_size} bytes sent in {len(sizes)} P-DATA PDUs, largest {max(sizes)}")
    assert len(sizes) >= CT.stat().st_size // MAX_PDU and max(sizes) <= MAX_PDU + 6  # + the PDU header
