"""Destinations of kind dicomweb: checked when the config is read; results go to the Debian Orthanc's DICOMweb
plugin by STOW-RS (HTTP basic authentication), wait out an outage, and dead-letter at once on a 401; over https
the server is trusted only through the CA bundle; and each answer node/dicomweb.py lists (a failed or missing
instance, 202, 5xx, 429, 409, 403) is judged per instance against a scripted HTTP peer (bearer token)."""

from __future__ import annotations

import base64
import contextlib
import http
import http.server
import json
import logging
import select
import socket
import ssl
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest
from pydicom import Dataset
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from node.config import Config, ConfigError, load_config
from node.dispatch import Dispatcher
from node.infra.audit import AuditLog
from node.infra.metrics import Metrics
from node.infra.storage import write_durably
from node.queue import DELIVER, DeliverJob, Queue, open_queue
from node.report.outbox import encode
from tests.helpers import require_tool, wait_until
from tools.orthanc import LocalOrthanc, free_port

USER, PASSWORD = "knee-node", "correct-horse-battery"


def write(folder: Path, text: str) -> Path:
    path = folder / "node.yaml"
    path.write_text(text)
    return path


def test_a_dicomweb_destination_takes_its_password_from_the_environment(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, "destinations:\n  - {kind: dicomweb, name: ARCHIVE, url: "
                                         "'https://pacs/dicom-web', username: node, password: '${PACS_PASSWORD}'}\n"),
                         {"PACS_PASSWORD": "from-env"})
    (destination,) = config.destinations
    assert (destination.name, destination.password) == ("ARCHIVE", "from-env")
    assert "from-env" not in repr(destination) + str(destination)


@pytest.mark.parametrize(("entry", "message"), [
    ("{kind: dicomweb, name: A}", "config: destinations[0].url: required (kind dicomweb)"),
    ("{kind: dicomweb, url: 'http://pacs/dicom-web'}", "config: destinations[0].name: required (kind dicomweb)"),
    ("{kind: dicomweb, name: A, url: 'ftp://pacs/'}", "config: destinations[0].url: 'ftp://pacs/' is not an http"),
    ("{kind: dicomweb, name: A, url: 'http://u:p@pacs/'}", "config: destinations[0].url: credentials go in"),
    ("{kind: dicomweb, name: A, url: 'http://pacs/', host: pacs}", "config: destinations[0].host: not for kind"),
    ("{kind: dicomweb, name: A, url: 'http://pacs/', username: u}",
     "config: destinations[0].password: username and password go together"),
    ("{kind: dicomweb, name: A, url: 'http://pacs/', username: u, password: p, token: t}",
     "config: destinations[0].token: either a token or a username and password"),
    ("{kind: dicomweb, name: A, url: 'http://pacs/', token: '${NO_SUCH_VARIABLE}'}",
     "config: destinations[0].token: environment variable NO_SUCH_VARIABLE is not set"),
    ("{ae_title: PACS, host: pacs, port: 104, url: 'http://pacs/'}", "config: destinations[0].url: only for kind"),
    ("{kind: wado, name: A}", "config: destinations[0].kind: 'wado' is not one of dimse, dicomweb"),
])
def test_a_dicomweb_destination_is_checked_when_the_config_is_read(tmp_path: Path, entry: str, message: str) -> None:
    with pytest.raises(ConfigError) as raised:
        load_config(write(tmp_path, f"destinations:\n  - {entry}\n"), {})
    assert str(raised.value).startswith(message)


def test_two_destinations_need_two_names(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config: destinations: two are named 'PACS'"):
        load_config(write(tmp_path, "destinations:\n  - {ae_title: PACS, host: a, port: 104}\n"
                                    "  - {kind: dicomweb, name: PACS, url: 'http://b/dicom-web'}\n"), {})


class GuardedOrthanc(LocalOrthanc):
    """The reference Orthanc with HTTP basic authentication on (one user), its REST API used with that user."""

    def __init__(self, folder: Path) -> None:
        super().__init__(folder, node_port=free_port())
        settings = json.loads(self.config.read_text())
        settings.update({"AuthenticationEnabled": True, "RegisteredUsers": {USER: PASSWORD}, "LuaScripts": []})
        self.config.write_text(json.dumps(settings, indent=2))

    def get(self, path: str) -> Any:
        request = urllib.request.Request(self.url + path, headers={
            "Authorization": "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()})
        with urllib.request.urlopen(request, timeout=30) as reply:
            return json.loads(reply.read())

    def instances(self) -> set[str]:
        """The SOP Instance UIDs it holds."""
        return {self.get(f"/instances/{instance}")["MainDicomTags"]["SOPInstanceUID"]
                for instance in self.get("/instances")}


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GuardedOrthanc]:
    require_tool("Orthanc")
    server = GuardedOrthanc(tmp_path_factory.mktemp("orthanc")).start()
    yield server
    server.stop()


def radiograph_results(folder: Path) -> list[Path]:
    """Three result files of one radiograph (one study), as the outbox writes them."""
    study, paths = generate_uid(), []
    for kind in ("sr", "sc", "seg"):
        dataset = Dataset()
        dataset.SOPClassUID, dataset.SOPInstanceUID = "1.2.840.10008.5.1.4.1.1.7", generate_uid()
        dataset.PatientName, dataset.PatientID, dataset.Modality = "DOE^JANE", "P1", "OT"
        dataset.StudyInstanceUID, dataset.SeriesInstanceUID = study, generate_uid()
        dataset.file_meta = FileMetaDataset()
        dataset.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        paths.append(folder / f"{kind}-{dataset.SOPInstanceUID}.dcm")
        write_durably(paths[-1], encode(dataset))
    return paths


def queue_results(queue: Queue, paths: list[Path]) -> list[str]:
    """`paths` queued for destination ORTHANC; their SOP Instance UIDs."""
    uids = [path.stem.split("-", 1)[1] for path in paths]
    for path, uid in zip(paths, uids, strict=True):
        queue.put(f"{uid}@ORTHANC", DeliverJob(path=str(path), destination="ORTHANC", sop_instance_uid=uid,
                                               source="radiograph", result_at=time.time()))
    return uids


def dicomweb_config(folder: Path, orthanc: LocalOrthanc, password: str) -> Config:
    text = (f"destinations:\n  - {{kind: dicomweb, name: ORTHANC, url: '{orthanc.url}/dicom-web', "
            f"username: {USER}, password: '${{ORTHANC_PASSWORD}}'}}\n"
            "dispatch: {max_attempts: 30, backoff_seconds: 0.2, max_backoff_seconds: 1, timeout_seconds: 10}\n")
    return load_config(write(folder, text), {"ORTHANC_PASSWORD": password})


def logged(records: list[logging.LogRecord]) -> str:
    return "\n".join(f"{record.getMessage()} {json.dumps(getattr(record, 'fields', {}), default=str)}"
                     for record in records)


def audited(folder: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for path in (folder / "audit").glob("*.jsonl") for line in path.read_text().splitlines()]


def test_results_arrive_by_stow_rs_wait_out_an_outage_and_stay_one_instance_each(
        orthanc: GuardedOrthanc, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    config = dicomweb_config(tmp_path, orthanc, PASSWORD)
    queue, metrics = open_queue(config), Metrics()
    stop = threading.Event()
    dispatcher = threading.Thread(target=Dispatcher(config, queue, metrics, AuditLog(tmp_path)).run, args=(stop,))
    dispatcher.start()
    before = orthanc.instances()
    try:
        first = radiograph_results(tmp_path)
        kept = first[0].read_bytes()
        sent = queue_results(queue, first)
        wait_until(lambda: orthanc.instances() == before | set(sent), timeout=30)

        orthanc.stop()  # an outage: the next results wait in the queue, retried
        sent += queue_results(queue, radiograph_results(tmp_path))
        wait_until(lambda: (metrics.registry.get_sample_value("knee_node_failed_total", {"stage": "deliver"})
                            or 0) >= 6, timeout=30)  # each of the three tried twice
        orthanc.start()
        wait_until(lambda: queue.counts() == {}, timeout=60)
        assert orthanc.instances() == before | set(sent)  # all six arrived

        # A result sent again (as after a response lost on the way) is the same instance, not a second one.
        first[0].write_bytes(kept)
        resent = queue_results(queue, first[:1])
        wait_until(lambda: queue.counts() == {}, timeout=30)
        assert orthanc.instances() == before | set(sent)
    finally:
        stop.set()
        dispatcher.join(30)
        dead = queue.dead()
        queue.close()
    assert dead == []
    delivered = [record for record in audited(tmp_path) if record["event"] == "delivered"]
    assert sorted(record["sop_instance_uid"] for record in delivered) == sorted(sent + resent)
    assert {record["status"] for record in delivered} == {"HTTP 200 OK"}
    assert "no answer from" in logged(caplog.records)  # the outage, in the send_failed lines
    assert PASSWORD not in logged(caplog.records)


def test_wrong_credentials_dead_letter_at_once_with_the_reason(
        orthanc: GuardedOrthanc, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    wrong = "not-the-password"
    config = dicomweb_config(tmp_path, orthanc, wrong)
    queue = open_queue(config)
    before = orthanc.instances()
    try:
        uids = queue_results(queue, radiograph_results(tmp_path))
        Dispatcher(config, queue, Metrics(), AuditLog(tmp_path)).deliver("ORTHANC", queue.claim(DELIVER, 10))
        dead = queue.dead()
        assert queue.counts()[DELIVER] == {"dead": 3}
    finally:
        queue.close()
    assert sorted(letter.job.message.sop_instance_uid for letter in dead) == sorted(uids)
    assert {(letter.error, letter.job.attempts) for letter in dead} == {("HTTP 401 Unauthorized", 1)}  # not retried
    assert orthanc.instances() == before
    assert wrong not in logged(caplog.records) + json.dumps([letter.error for letter in dead])


class TlsTerminator:
    """https in front of a plain HTTP server, as a site puts a reverse proxy before Orthanc (whose Debian build
    crashes serving https itself): each connection's TLS ends here and its bytes go on to `target_port`."""

    def __init__(self, target_port: int, certificate: Path, key: Path) -> None:
        self.target_port = target_port
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(certificate, key)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self.accept, daemon=True).start()

    def accept(self) -> None:
        with contextlib.suppress(OSError):  # the listener closed
            while True:
                connection, _ = self.listener.accept()
                threading.Thread(target=self.relay, args=(connection,), daemon=True).start()

    def relay(self, connection: socket.socket) -> None:
        with (contextlib.suppress(OSError), connection,
              self.context.wrap_socket(connection, server_side=True) as tls,
              socket.create_connection(("127.0.0.1", self.target_port)) as upstream):
            while readable := select.select([tls, upstream], [], [], 30)[0]:
                for source in readable:
                    data = source.recv(65536)
                    while source is tls and tls.pending():  # decrypted bytes select cannot see
                        data += tls.recv(tls.pending())
                    if not data:
                        return
                    (upstream if source is tls else tls).sendall(data)

    def close(self) -> None:
        self.listener.close()


def test_https_trusts_the_server_only_through_the_ca_bundle(orthanc: GuardedOrthanc, tmp_path: Path) -> None:
    openssl, pki = require_tool("openssl"), tmp_path / "pki"
    pki.mkdir()
    (pki / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    new_key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    for command in (["req", "-x509", *new_key, "-keyout", "ca.key", "-out", "ca.crt", "-days", "2", "-subj", "/CN=ca"],
                    ["req", "-new", *new_key, "-keyout", "pacs.key", "-out", "pacs.csr", "-subj", "/CN=pacs"],
                    ["x509", "-req", "-in", "pacs.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
                     "-out", "pacs.crt", "-days", "2", "-extfile", "san.ext"]):
        subprocess.run([openssl, *command], cwd=pki, check=True, capture_output=True)
    https = TlsTerminator(orthanc.http_port, pki / "pacs.crt", pki / "pacs.key")
    outcomes = {}
    try:
        for trust in ("ca_certificates", "system"):
            folder = tmp_path / trust
            folder.mkdir()
            text = (f"destinations:\n  - {{kind: dicomweb, name: ORTHANC, url: 'https://127.0.0.1:{https.port}/"
                    f"dicom-web', username: {USER}, password: {PASSWORD}}}\ndispatch: {{max_attempts: 1}}\n")
            if trust == "ca_certificates":
                text += f"tls: {{ca_certificates: {pki / 'ca.crt'}}}\n"
            config = load_config(write(folder, text), {})
            queue = open_queue(config)
            try:
                uids = queue_results(queue, radiograph_results(folder))
                Dispatcher(config, queue, Metrics(), AuditLog(folder)).deliver("ORTHANC", queue.claim(DELIVER, 10))
                outcomes[trust] = (uids, [letter.error for letter in queue.dead()])
            finally:
                queue.close()
    finally:
        https.close()
    stored = orthanc.instances()
    uids, dead = outcomes["ca_certificates"]
    assert dead == [] and set(uids) <= stored
    uids, dead = outcomes["system"]  # the test CA is not among the system's
    assert not set(uids) & stored
    assert len(dead) == 3 and all("CERTIFICATE_VERIFY_FAILED" in error for error in dead)


class ScriptedStow(http.server.BaseHTTPRequestHandler):
    """A STOW-RS service that answers every POST with `status` and `body` (its class attributes), and notes the
    Authorization header and the instances it was sent."""

    status: ClassVar[int] = 200
    body: ClassVar[bytes] = b""
    seen: ClassVar[list[tuple[str, str, int]]] = []

    def do_POST(self) -> None:
        payload = self.rfile.read(int(self.headers["Content-Length"]))
        boundary = self.headers.get_param("boundary").encode()
        parts = [part for part in payload.split(b"--" + boundary) if part.strip(b"-\r\n")]
        self.seen.append((self.headers["Authorization"], self.headers.get_param("type"), len(parts)))
        self.send_response(self.status)
        self.send_header("Content-Type", "application/dicom+json")
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args: Any) -> None:
        """Quiet."""


def stow_response(referenced: list[str], failed: list[str]) -> bytes:
    def items(uids: list[str], **extra: Any) -> dict[str, Any]:
        return {"vr": "SQ", "Value": [{"00081155": {"vr": "UI", "Value": [uid]}, **extra} for uid in uids]}

    return json.dumps({"00081199": items(referenced),
                       "00081198": items(failed, **{"00081197": {"vr": "US", "Value": [0xA700]}})}).encode()


@pytest.mark.parametrize(("status", "answer", "expected"), [
    (200, "all", {"delivered": 3}),
    (200, "one failed", {"delivered": 2, "queued": 1}),  # Failure Reason 0xA700: retried
    (200, "one missing", {"delivered": 2, "queued": 1}),
    (202, "all", {"queued": 3}),  # accepted, not confirmed as stored
    (503, "", {"queued": 3}),
    (429, "", {"queued": 3}),
    (409, "", {"dead": 3}),
    (403, "", {"dead": 3}),
])
def test_each_answer_is_judged_per_instance(tmp_path: Path, status: int, answer: str,
                                            expected: dict[str, int]) -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), ScriptedStow)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    text = (f"destinations:\n  - {{kind: dicomweb, name: ORTHANC, url: 'http://127.0.0.1:{server.server_port}/wado',"
            " token: secret-token}\n")
    config = load_config(write(tmp_path, text), {})
    queue = open_queue(config)
    try:
        paths = radiograph_results(tmp_path)
        uids = queue_results(queue, paths)
        referenced = {"all": uids, "one failed": uids[1:], "one missing": uids[1:]}.get(answer, [])
        ScriptedStow.status, ScriptedStow.seen = status, []
        ScriptedStow.body = stow_response(referenced, uids[:1] if answer == "one failed" else []) if answer else b""
        Dispatcher(config, queue, Metrics(), AuditLog(tmp_path)).deliver("ORTHANC", queue.claim(DELIVER, 10))
        counts = {"delivered": sum(not path.exists() for path in paths), **queue.counts().get(DELIVER, {})}
        dead = queue.dead()
    finally:
        queue.close()
        server.shutdown()
    assert {state: count for state, count in counts.items() if count} == expected
    assert ScriptedStow.seen == [("Bearer secret-token", "application/dicom", 3)]  # one request, three parts
    assert {letter.error for letter in dead} <= {f"HTTP {status} {http.HTTPStatus(status).phrase}"}
