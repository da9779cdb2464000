"""The dispatcher's STOW-RS sender (DICOMweb, PS3.18 10.5): result files to a destination of kind dicomweb.

The request: `POST {url}/studies`, Content-Type `multipart/related; type="application/dicom"`, one part per
result file exactly as written (Part 10, nothing re-encoded), several files per request (up to MAX_REQUEST_BYTES
in all), Accept `application/dicom+json`.  Authorization: Basic with username and password, or Bearer with token,
or none; the credentials go into that header only, never into logs, dead-letter reasons or repr.  https (TLS 1.2
or later) checks the server's certificate and host name against the node's tls.ca_certificates (else the system's
CAs); every connect, send and read waits at most dispatch.timeout_seconds.  A new connection per request: a
request carries a whole batch, so a handshake per batch costs little.

Each file's outcome, from the response:
- delivered: HTTP 200 and the file's SOP Instance UID in the Referenced SOP Sequence (0008,1199), not in the
  Failed SOP Sequence (0008,1198);
- not delivered, retried like a C-STORE failure (backoff, then dead-letter when the attempts run out): no answer
  (connection refused or lost, timeout, TLS handshake or certificate refused), HTTP 5xx, 408 or 429, HTTP 202
  (not confirmed as stored), a Failed SOP Sequence item (reason: its Failure Reason), or a 200 that does not
  reference the instance;
- dead-lettered at once: any other status (400, 401, 403, 404, 409, 413, 415, a redirect, ...), since the same
  request would get the same answer; the reason is the status line, e.g. "HTTP 401 Unauthorized"; likewise a
  result file that is not readable DICOM.
Output UIDs are deterministic, so a file sent again is the same instance, never a second one.
"""

from __future__ import annotations

import base64
import http.client
import json
import ssl
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from node.config import Destination
from node.delivery import Outcome
from node.infra.logs import describe
from node.instances import DecodeError, read_header

MAX_REQUEST_BYTES = 64 * 1024 * 1024  # files per request up to this size in all (at least one file)
CHUNK = 1024 * 1024
TRANSIENT_STATUSES = frozenset({408, 429})  # and 5xx: the server may answer otherwise later
REFERENCED_SOP_SEQUENCE, FAILED_SOP_SEQUENCE = "00081199", "00081198"
REFERENCED_SOP_INSTANCE_UID, FAILURE_REASON = "00081155", "00081197"


class StowSender:
    def __init__(self, destination: Destination, timeout: float, tls: ssl.SSLContext | None) -> None:
        url = urlsplit(destination.url)
        self.destination, self.timeout, self.tls = destination, timeout, tls
        self.host, self.port, self.secure = url.hostname or "", url.port, url.scheme == "https"
        self.target = url.path.rstrip("/") + "/studies"
        self.authorization = (
            f"Bearer {destination.token}" if destination.token
            else "Basic " + base64.b64encode(f"{destination.username}:{destination.password}".encode()).decode()
            if destination.username else "")

    def send(self, paths: Sequence[Path]) -> Iterator[Outcome]:
        for request in requests(paths):
            yield from self.store(request)

    def close(self) -> None:
        """Nothing held between requests."""

    def store(self, paths: Sequence[Path]) -> list[Outcome]:
        """One POST of `paths`; an Outcome per path."""
        try:
            uids = [str(read_header(path).SOPInstanceUID) for path in paths]
        except (DecodeError, AttributeError) as error:  # not the node's own output: sending cannot help
            return [Outcome(False, describe(error), permanent=True)] * len(paths)
        try:
            status, reason, body = self.post(paths)
        except (OSError, http.client.HTTPException) as error:
            return [Outcome(False, f"no answer from {self.destination.url}: {describe(error)}")] * len(paths)
        line = f"HTTP {status} {reason}".strip()
        if status == 202:
            return [Outcome(False, f"{line}: not confirmed as stored")] * len(paths)
        if status != 200:
            return [Outcome(False, line, permanent=status < 500 and status not in TRANSIENT_STATUSES)] * len(paths)
        try:
            referenced, failed = answered(json.loads(body) if body.strip() else {})
        except (ValueError, TypeError, KeyError, IndexError):
            return [Outcome(False, f"{line} with a response that is not DICOM JSON")] * len(paths)
        return [Outcome(False, f"failed: Failure Reason 0x{failed[uid]:04X}") if uid in failed
                else Outcome(True, line) if uid in referenced
                else Outcome(False, f"{line} without the instance in its Referenced SOP Sequence")
                for uid in uids]

    def post(self, paths: Sequence[Path]) -> tuple[int, str, bytes]:
        boundary = uuid.uuid4().hex
        head = f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
        tail = f"--{boundary}--\r\n".encode()
        length = sum(len(head) + path.stat().st_size + 2 for path in paths) + len(tail)

        def body() -> Iterator[bytes]:
            for path in paths:
                yield head
                with path.open("rb") as file:
                    while chunk := file.read(CHUNK):
                        yield chunk
                yield b"\r\n"
            yield tail

        headers = {"Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
                   "Accept": "application/dicom+json", "Content-Length": str(length)}
        if self.authorization:
            headers["Authorization"] = self.authorization
        connection = (http.client.HTTPSConnection(self.host, self.port, timeout=self.timeout, context=self.tls)
                      if self.secure else http.client.HTTPConnection(self.host, self.port, timeout=self.timeout))
        try:
            connection.request("POST", self.target, body=body(), headers=headers)
            response = connection.getresponse()
            return response.status, response.reason, response.read()
        finally:
            connection.close()


def requests(paths: Sequence[Path]) -> Iterator[list[Path]]:
    """`paths` in order, cut into requests of at most MAX_REQUEST_BYTES (a larger file alone)."""
    request: list[Path] = []
    size = 0
    for path in paths:
        file_size = path.stat().st_size
        if request and size + file_size > MAX_REQUEST_BYTES:
            yield request
            request, size = [], 0
        request.append(path)
        size += file_size
    if request:
        yield request


def answered(response: dict[str, Any]) -> tuple[set[str], dict[str, int]]:
    """From a STOW-RS response in DICOM JSON: the referenced instances, and the failed ones with their reason."""
    def items(tag: str) -> list[dict[str, Any]]:
        return list(response.get(tag, {}).get("Value", []))

    referenced = {item[REFERENCED_SOP_INSTANCE_UID]["Value"][0] for item in items(REFERENCED_SOP_SEQUENCE)}
    failed = {item[REFERENCED_SOP_INSTANCE_UID]["Value"][0]: int(item.get(FAILURE_REASON, {}).get("Value", [0])[0])
              for item in items(FAILED_SOP_SEQUENCE)}
    return referenced, failed

