"""A local Orthanc (the Debian package) with the reference configuration, for the demo, tests and benchmarks."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

import highdicom as hd
import pydicom

from tools import REPO

ORTHANC_CONFIG = REPO / "config" / "orthanc" / "orthanc.json"
ROUTING_SCRIPT = REPO / "config" / "orthanc" / "route-to-knee-node.lua"
PLUGINS = Path("/usr/share/orthanc/plugins")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class LocalOrthanc:
    """Orthanc on free loopback ports with the reference configuration; storage kept across restarts."""

    def __init__(self, folder: Path, node_port: int) -> None:
        binary = shutil.which("Orthanc")
        if binary is None:
            raise FileNotFoundError("Orthanc is not installed (Debian package orthanc)")
        self.binary, self.folder = binary, folder
        self.http_port, self.dicom_port = free_port(), free_port()
        settings = json.loads(ORTHANC_CONFIG.read_text())
        settings.update({
            "StorageDirectory": str(folder / "db"), "IndexDirectory": str(folder / "db"),
            "HttpPort": self.http_port, "DicomPort": self.dicom_port,
            # Loopback only, so no login: the reference config's credentials are for a real deployment.
            "RemoteAccessAllowed": False, "AuthenticationEnabled": False,
            "Plugins": [str(PLUGINS)], "LuaScripts": [str(ROUTING_SCRIPT)],
        })
        settings["DicomModalities"]["knee-node"].update({"Host": "127.0.0.1", "Port": node_port})
        folder.mkdir(parents=True, exist_ok=True)
        self.config = folder / "orthanc.json"
        self.config.write_text(json.dumps(settings, indent=2))
        self.log = folder / "orthanc.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def start(self, timeout: float = 60) -> LocalOrthanc:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen([self.binary, str(self.config)], stdout=log, stderr=log)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"Orthanc exited with {self.process.returncode}; see {self.log}")
            try:
                self.get("/system")
                return self
            except OSError:
                time.sleep(0.2)
        raise TimeoutError(f"Orthanc did not answer within {timeout} s; see {self.log}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(30)
        self.process = None

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(self.url + path, timeout=30) as reply:
            return json.loads(reply.read())

    def get_bytes(self, path: str) -> bytes:
        with urllib.request.urlopen(self.url + path, timeout=30) as reply:
            return bytes(reply.read())

    def post(self, path: str, body: bytes) -> Any:
        request = urllib.request.Request(self.url + path, data=body, method="POST")
        with urllib.request.urlopen(request, timeout=60) as reply:
            return json.loads(reply.read())

    def results(self, study: str) -> dict[str, dict[str, Any]]:
        """The study's knee-node result series (Orthanc's series objects) by modality: OT (the SC), SR and SEG."""
        found = {}
        for series in self.get(f"/studies/{study}/series"):
            if series["MainDicomTags"].get("Modality") in ("OT", "SR", "SEG"):
                tags = self.get(f"/instances/{series['Instances'][0]}/simplified-tags")
                if tags.get("Manufacturer") == "knee-node":
                    found[series["MainDicomTags"]["Modality"]] = series
        return found

    def viewer(self, series: str) -> str:
        return f"{self.url}/web-viewer/app/viewer.html?series={series}"


def sr_grades(orthanc: LocalOrthanc, instance: str) -> list[dict[str, Any]]:
    """Laterality (R/L), grade and confidence (%) per knee, read back from the SR stored in Orthanc."""
    sr = hd.sr.srread(pydicom.filebase.DicomBytesIO(orthanc.get_bytes(f"/instances/{instance}/file")))
    knees = []
    for group in sr.content.get_image_measurement_groups():
        (grade,) = group.get_qualitative_evaluations(name=hd.sr.CodedConcept("KLG", "99KNEEKL", "grade"))
        (confidence,) = group.get_measurements(name=hd.sr.CodedConcept("KLC", "99KNEEKL", "confidence"))
        knees.append({"laterality": group.finding_sites[0].laterality.meaning[0],
                      "grade": int(grade.value.value.removeprefix("KL")), "confidence": float(confidence.value)})
    return knees
