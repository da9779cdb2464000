"""docs/conformance.md against the code: what the Storage SCP accepts (its AE), what the dispatcher proposes (read off
a real association), the SOP classes graded, the settings and their defaults, fixed limits, TLS, statuses and the
destination kinds.  Anything added to the code and not to the statement fails here."""

from __future__ import annotations

import re
import ssl
import subprocess
import threading
import time
import typing
from dataclasses import MISSING, Field, fields, replace
from pathlib import Path
from typing import Any

import pydicom
import pynetdicom
import pytest
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from node import __version__, dispatch, receive, scu
from node.config import Config, Destination, DispatchConfig, ScpConfig, TlsConfig, load_config
from node.dispatch import Dispatcher
from node.infra.audit import AuditLog
from node.infra.metrics import Metrics
from node.infra.tls import client_context, server_context
from node.queue import ANALYZE, DELIVER, DeliverJob
from node.queue.sqlite import SqliteQueue
from node.receive import Receiver
from node.selection import RADIOGRAPH_CLASSES
from tests.helpers import require_tool, wait_until
from tools import REPO

STATEMENT = REPO / "docs" / "conformance.md"


def cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip().strip("|").split("|")] if line.startswith("|") else []


def table(first_header: str) -> list[list[str]]:
    """The body rows of the statement's table whose header row starts with `first_header`."""
    lines = STATEMENT.read_text().splitlines()
    start = next((i for i, line in enumerate(lines[:-1])
                  if cells(line)[:1] == [first_header] and lines[i + 1].startswith("| ---")), None)
    assert start is not None, f"docs/conformance.md has no table headed {first_header!r}"
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append(cells(line))
    return rows


def uids(text: str) -> set[str]:
    return set(re.findall(r"`(\d+(?:\.\d+)+)`", text))


def column(rows: list[list[str]], index: int) -> set[str]:
    return set().union(*(uids(row[index]) for row in rows))


def values(first_header: str) -> dict[str, str]:
    """A table's first two columns as {first cell: second cell}, backticks removed."""
    return {row[0].replace("`", ""): row[1].replace("`", "") for row in table(first_header)}


@pytest.fixture
def config(tmp_path: Path) -> Config:
    config = load_config(None, {})
    return replace(config, data_dir=tmp_path, scp=replace(config.scp, port=0), metrics=replace(config.metrics, port=0))


@pytest.fixture
def queue(tmp_path: Path) -> typing.Iterator[SqliteQueue]:
    queue = SqliteQueue(tmp_path / "queue.sqlite", 300.0, {ANALYZE: 3, DELIVER: 10})
    yield queue
    queue.close()


def test_the_storage_scp_accepts_exactly_the_stated_contexts(config: Config, queue: SqliteQueue) -> None:
    receiver = Receiver(config, queue, Metrics(), AuditLog(config.data_dir))
    contexts = {str(c.abstract_syntax): {str(s) for s in c.transfer_syntax} for c in receiver.ae.supported_contexts}
    assert uids(" ".join(map(str, table("Transfer syntax accepted for verification")))) == contexts.pop(Verification)
    assert column(table("Storage SOP class accepted"), 1) == set(contexts)
    (storage_syntaxes,) = {frozenset(syntaxes) for syntaxes in contexts.values()}  # the same for every class
    assert column(table("Transfer syntax accepted for storage"), 1) == storage_syntaxes
    assert column(table("SOP class graded"), 1) == set(RADIOGRAPH_CLASSES)
    text = STATEMENT.read_text()
    assert f"{len(contexts)} classes" in text  # the overview's count
    assert f"package version {__version__}, pynetdicom {pynetdicom.__version__}" in text
    identity = values("Implementation identifying information")
    assert identity["Implementation Class UID"] == receiver.ae.implementation_class_uid
    assert identity["Implementation Version Name"] == receiver.ae.implementation_version_name
    limits = values("Limit")
    assert float(limits["ARTIM: wait for the TLS handshake and A-ASSOCIATE-RQ after connecting, SCP (s)"]) == (
        receiver.ae.acse_timeout)
    assert float(limits["DIMSE timeout, SCP (s)"]) == receiver.ae.dimse_timeout
    assert float(limits["Network timeout, SCP (s)"]) == receiver.ae.network_timeout
    assert limits["Called AE title checked, SCP"] == ("yes" if receiver.ae.require_called_aet else "no")


class ProbeScp:
    """A real Storage SCP that accepts every storage context and keeps the contexts each association proposed."""

    def __init__(self) -> None:
        self.proposed: list[tuple[str, tuple[str, ...]]] = []
        self.ae = AE("PROBE")
        self.ae.supported_contexts = AllStoragePresentationContexts
        self.server = self.ae.start_server(("127.0.0.1", 0), block=False, evt_handlers=[
            (evt.EVT_REQUESTED, self.on_requested), (evt.EVT_C_STORE, lambda event: 0x0000)])
        self.port = int(self.server.server_address[1])

    def on_requested(self, event: evt.Event) -> None:
        self.proposed += [(str(c.abstract_syntax), tuple(map(str, c.transfer_syntax)))
                          for c in event.assoc.requestor.requested_contexts]


def secondary_capture(path: Path) -> Path:
    dataset = pydicom.Dataset()
    dataset.SOPClassUID, dataset.SOPInstanceUID = "1.2.840.10008.5.1.4.1.1.7", generate_uid()
    dataset.file_meta = FileMetaDataset()
    dataset.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dataset.save_as(path, enforce_file_format=True)
    return path


def test_the_dispatcher_proposes_exactly_the_stated_contexts(config: Config, queue: SqliteQueue,
                                                            tmp_path: Path) -> None:
    probe = ProbeScp()
    destinations = load_config(None, {"KNEE_NODE_DESTINATIONS": f"[{{ae_title: PROBE, host: 127.0.0.1, "
                                                               f"port: {probe.port}}}]"}).destinations
    queue.put("sc", DeliverJob(path=str(secondary_capture(tmp_path / "sc.dcm")), destination="PROBE",
                               sop_instance_uid=generate_uid(), source=generate_uid(), result_at=time.time()))
    stop = threading.Event()
    dispatcher = threading.Thread(target=Dispatcher(replace(config, destinations=destinations), queue, Metrics(),
                                                    AuditLog(tmp_path)).run, args=(stop,))
    dispatcher.start()
    try:
        wait_until(lambda: probe.proposed, timeout=30)
    finally:
        stop.set()
        dispatcher.join(30)
        probe.ae.shutdown()
    assert all(len(syntaxes) == 1 for _, syntaxes in probe.proposed)  # each syntax in its own context
    stated = {(sop_class, syntax) for row in table("SOP class sent") for sop_class in uids(row[1])
              for syntax in uids(row[2])}
    assert {(sop_class, syntaxes[0]) for sop_class, syntaxes in probe.proposed} == stated
    limits = values("Limit")
    assert int(limits["Maximum PDU length received, SCU (bytes)"]) == scu.client_ae("X", 1.0).maximum_pdu_size
    assert float(limits["Association kept open without results, SCU (s)"]) == dispatch.IDLE_SECONDS
    assert int(limits["Presentation contexts proposed per association, knee-node send"]) == scu.MAX_CONTEXTS


def shown(value: Any) -> str:
    """A default as the statement writes it."""
    if value is None or value == "":
        return "unset"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple):
        return ", ".join(map(str, value)) or "none"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def default(field: Field[Any]) -> str:
    if field.default is not MISSING:
        return shown(field.default)
    if field.default_factory is not MISSING:
        return shown(field.default_factory())
    return "required"


def setting_field(path: str) -> Field[Any]:
    """The dataclass field a setting path such as `scp.max_pdu` or `destinations[].url` names."""
    section, name = path.rsplit(".", 1)
    owner = Destination if section == "destinations[]" else typing.get_type_hints(Config)[section]
    found = {field.name: field for field in fields(owner)}
    assert name in found, f"docs/conformance.md states a setting {path} the code does not have"
    return found[name]


def test_every_setting_of_the_dicom_sections_is_stated_with_its_default() -> None:
    stated = values("Setting")
    sections = {"scp": ScpConfig, "tls": TlsConfig, "dispatch": DispatchConfig, "destinations[]": Destination}
    expected = {f"{prefix}.{field.name}" for prefix, owner in sections.items() for field in fields(owner)}
    assert expected <= set(stated), sorted(expected - set(stated))
    for path, value in stated.items():
        assert value == default(setting_field(path)), path


def tls_version(version: ssl.TLSVersion) -> str:
    return version.name.replace("TLSv", "TLS ").replace("_", ".")


def test_tls_is_as_stated(tmp_path: Path) -> None:
    subprocess.run([require_tool("openssl"), "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "key.pem",
                    "-out", "cert.pem", "-subj", "/CN=knee-node", "-days", "1"], cwd=tmp_path, check=True,
                   capture_output=True)
    certificate = tmp_path / "cert.pem"
    tls = TlsConfig(certificate=certificate, private_key=tmp_path / "key.pem", ca_certificates=certificate)
    server, client = server_context(tls), client_context(tls)
    assert server is not None
    stated = values("TLS")
    assert stated["Minimum protocol version, SCP"] == tls_version(server.minimum_version)
    assert stated["Minimum protocol version, SCU and STOW-RS"] == tls_version(client.minimum_version)
    assert stated["Peer certificate required, SCP"] == ("yes" if server.verify_mode == ssl.CERT_REQUIRED else "no")
    assert stated["Server certificate and host name checked, SCU and STOW-RS"] == (
        "yes" if client.verify_mode == ssl.CERT_REQUIRED and client.check_hostname else "no")


def test_the_statuses_are_as_stated() -> None:
    answers = {row[0].strip("`"): row[2] for row in table("C-STORE response status (SCU)") if row[0].startswith("`")}
    delivered = {code for code, behaviour in answers.items() if behaviour.startswith("Delivered")}
    assert delivered == {f"0x{status:04X}" for status in (scu.SUCCESS, *scu.WARNING_STATUSES)}
    assert all(scu.delivered(int(code, 16)) for code in delivered)
    returned = {row[0].strip("`") for row in table("C-STORE status returned (SCP)")}
    assert returned == {f"0x{status:04X}" for status in (receive.SUCCESS, receive.OUT_OF_RESOURCES,
                                                           receive.DATASET_DOES_NOT_MATCH, receive.CANNOT_UNDERSTAND)}


def test_every_destination_kind_is_stated_and_the_stow_request_is_the_code_s() -> None:
    kinds = typing.get_args(typing.get_type_hints(Destination)["kind"])
    kind_row = next(row for row in table("Setting") if row[0] == "`destinations[].kind`")
    assert all(kind in kind_row[2] for kind in kinds), kind_row
    from node import dicomweb

    source = Path(dicomweb.__file__).read_text()
    request = {row[0]: row[1] for row in table("STOW-RS request")}
    for header in ("Content-Type", "Accept"):
        media_type = re.match(r"`([^`]+)`", request[header])
        assert media_type is not None and media_type[1] in source, header
    assert "/studies" in request["Method and target"] and '"/studies"' in source
    assert f"{dicomweb.MAX_REQUEST_BYTES // 2**20} MiB" in request["Content-Type"]
