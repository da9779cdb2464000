"""OHIF's built viewer (npm @ohif/app, installed by `make setup` into build/browser/ohif) on the origin of an
Orthanc's DICOMweb, for the demo and the browser test.

One small HTTP server: the viewer's files (any other path is the viewer's index.html, for its client-side routes),
its configuration (config/ohif/app-config.js, which docker-compose's ohif service serves too: an Orthanc DICOMweb
data source on the same origin, no investigational-use dialog, SRs loaded as tracked measurements without asking),
and /dicom-web/ passed through to Orthanc.
"""

from __future__ import annotations

import mimetypes
import threading
import urllib.error
import urllib.request
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from tools import REPO

BROWSER_DIR = REPO / "build" / "browser"  # `make setup`: OHIF's dist/ as ohif/, playwright-core in node_modules/
OHIF_DIST = BROWSER_DIR / "ohif"
PASSED_THROUGH = ("/dicom-web/",)
FORWARDED_HEADERS = ("Accept", "Content-Type")

APP_CONFIG = REPO / "config" / "ohif" / "app-config.js"  # the one configuration of every OHIF (compose too)
# The viewer's first-run tour, marked as shown before the viewer starts (OHIF keeps the list in localStorage).
SHOWN_TOURS = ["basicViewerTour"]


class OhifServer:
    """OHIF and Orthanc's DICOMweb on one loopback origin; `url` once started."""

    def __init__(self, orthanc_url: str, dist: Path = OHIF_DIST, port: int = 0) -> None:
        if not (dist / "index.html").is_file():
            raise FileNotFoundError(f"OHIF is not installed in {dist} (make setup installs it)")
        handler = type("Handler", (OhifHandler,), {"dist": dist.resolve(), "orthanc_url": orthanc_url.rstrip("/")})
        self.server = ThreadingHTTPServer(("127.0.0.1", port), handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def viewer(self, study_instance_uid: str) -> str:
        return f"{self.url}/viewer?StudyInstanceUIDs={study_instance_uid}"

    def start(self) -> OhifServer:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class OhifHandler(BaseHTTPRequestHandler):
    dist: Path
    orthanc_url: str
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        pass  # one line per request would drown the test's and the demo's output

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path.startswith(PASSED_THROUGH):
            self.pass_through()
        elif path == "/app-config.js":
            self.reply(HTTPStatus.OK, "application/javascript", APP_CONFIG.read_bytes())
        else:
            file = (self.dist / path.lstrip("/")).resolve()
            if not file.is_file() or not file.is_relative_to(self.dist):
                file = self.dist / "index.html"  # the viewer's own routes (/viewer, /segmentation, ...)
            content_type = mimetypes.guess_type(file.name)[0] or "application/octet-stream"
            self.reply(HTTPStatus.OK, content_type, file.read_bytes())

    def do_POST(self) -> None:
        if self.path.startswith(PASSED_THROUGH):
            self.pass_through()
        else:
            self.reply(HTTPStatus.NOT_FOUND, "text/plain", b"not found")

    def pass_through(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        headers = {name: value for name in FORWARDED_HEADERS if (value := self.headers.get(name))}
        request = urllib.request.Request(self.orthanc_url + self.path, data=body, headers=headers,
                                         method=self.command)
        try:
            with urllib.request.urlopen(request, timeout=120) as answer:
                self.reply(answer.status, answer.headers.get("Content-Type", ""), answer.read())
        except urllib.error.HTTPError as error:
            self.reply(error.code, error.headers.get("Content-Type", "text/plain"), error.read())

    def reply(self, status: int, content_type: str, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
