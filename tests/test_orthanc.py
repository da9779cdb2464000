"""The reference deployment: Debian's Orthanc with config/orthanc, routing knees to `knee-node serve` and
storing the results back; checked through Orthanc's REST API and, for the SC, in a real browser."""

from __future__ import annotations

import json
import logging
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pydicom
import pytest

from node.cli import main
from tests.helpers import NodeProcess, require_tool, wait_until
from tools import KNEE_KL, REPO
from tools.orthanc import LocalOrthanc, free_port, sr_grades
from tools.synthetic import write_composites

ARTIFACTS = REPO / "test-artifacts"
LOG = logging.getLogger(__name__)


@pytest.fixture(scope="module")
def radiographs(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    require_tool("Orthanc")
    if not (KNEE_KL / "val").is_dir():
        pytest.skip(f"knee-kl crops not found at {KNEE_KL}")
    folder = tmp_path_factory.mktemp("radiographs")
    records = write_composites(KNEE_KL / "val", folder, 6, bilateral_fraction=0.5, seed=4, spacing_mm=0.25,
                               syntaxes=list(PROPOSE))
    return [folder / record["file"] for record in records]


def deployment(tmp_path: Path, model_dir: Path, **node_config: Any) -> tuple[LocalOrthanc, NodeProcess]:
    node_port = free_port()
    orthanc = LocalOrthanc(tmp_path / "orthanc", node_port)
    node = NodeProcess(tmp_path / "node", model_dir, scp={"port": node_port, "peers": [{"ae_title": "ORTHANC"}]},
                       destinations=[{"ae_title": "ORTHANC", "host": "127.0.0.1", "port": orthanc.dicom_port}],
                       **node_config)
    return orthanc, node


def wait_for_results(orthanc: LocalOrthanc, studies: list[str], timeout: float,
                     modalities: frozenset[str] = frozenset({"OT", "SR"})) -> dict[str, dict]:
    deadline, found = time.monotonic() + timeout, {}
    while time.monotonic() < deadline and len(found) < len(studies):
        for study in studies:
            results = orthanc.results(study)
            if study not in found and modalities <= results.keys():
                found[study] = results
        time.sleep(0.5)
    return found


def job_states(orthanc: LocalOrthanc) -> list[str]:
    return [orthanc.get(f"/jobs/{job}")["State"] for job in orthanc.get("/jobs")]


def upload(orthanc: LocalOrthanc, path: Path) -> str:
    return str(orthanc.post("/instances", path.read_bytes())["ParentStudy"])


def orthanc_study(orthanc: LocalOrthanc, path: Path) -> str:
    """Orthanc's id of the study a file belongs to."""
    uid = pydicom.dcmread(path, stop_before_pixels=True).StudyInstanceUID
    (match,) = orthanc.post("/tools/lookup", str(uid).encode())
    return str(match["ID"])


PROPOSE = {"1.2.840.10008.1.2.1": [], "1.2.840.10008.1.2.4.90": ["-xv"], "1.2.840.10008.1.2.5": ["-xr"]}


def storescu(orthanc: LocalOrthanc, path: Path) -> None:
    syntax = str(pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID)
    subprocess.run([require_tool("storescu"), "-aet", "STORESCU", "-aec", "ORTHANC", *PROPOSE[syntax], "127.0.0.1",
                    str(orthanc.dicom_port), str(path)], check=True, capture_output=True, timeout=60)


def colourful_share(png: bytes) -> float:
    image = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR).astype(np.int16)
    spread = image.max(2) - image.min(2)
    return float((spread > 40).mean())


def test_orthanc_routes_knees_to_the_node_and_keeps_the_results_in_their_studies(
        radiographs: list[Path], model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    orthanc, node = deployment(tmp_path, model_dir)
    orthanc.start()
    node.start()
    try:
        started = time.monotonic()
        for path in radiographs[:3]:
            upload(orthanc, path)
        for path in radiographs[3:]:
            storescu(orthanc, path)
        studies = {path: orthanc_study(orthanc, path) for path in radiographs}
        results = wait_for_results(orthanc, list(studies.values()), timeout=180)
        latency = time.monotonic() - started
        LOG.warning("upload to SR in Orthanc, 6 radiographs: %.1f s", latency)
        assert len(results) == 6, f"results for {len(results)} of 6 studies"

        # The node's JSON for the same files is what the SRs in Orthanc say.
        assert main(["analyze", *map(str, radiographs), "--out", str(tmp_path / "offline"), "--model",
                     str(model_dir), "--json"]) == 0
        for line in capsys.readouterr().out.splitlines():
            graded = json.loads(line)
            series = results[studies[Path(graded["file"])]]
            in_sr = sorted((k["laterality"], k["grade"]) for k in sr_grades(orthanc, series["SR"]["Instances"][0]))
            assert in_sr == sorted((k["laterality"], k["grade"]) for k in graded["knees"])

        # The SC renders in Orthanc, heatmap and labels in colour.
        for series in results.values():
            preview = orthanc.get_bytes(f"/instances/{series['OT']['Instances'][0]}/preview")
            assert colourful_share(preview) > 0.005

        # Only the 6 radiographs were routed: the node's 12 results stayed in Orthanc.
        jobs = [orthanc.get(f"/jobs/{job}") for job in orthanc.get("/jobs")]
        assert sum(job["Type"] == "DicomModalityStore" for job in jobs) == 6
        assert node.metric("knee_node_received_total") == 6

        # And in a real browser: Orthanc's Web Viewer on one SC.
        ARTIFACTS.mkdir(exist_ok=True)
        screenshot = ARTIFACTS / "orthanc-web-viewer-sc.png"
        series = next(iter(results.values()))["OT"]["ID"]
        subprocess.run([require_tool("chromium"), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                        "--no-first-run", "--disable-background-networking", "--disable-component-update",
                        "--disable-sync", f"--user-data-dir={tmp_path / 'chromium'}", "--window-size=1280,900",
                        "--virtual-time-budget=15000", f"--screenshot={screenshot}", orthanc.viewer(series)],
                       check=True, capture_output=True, timeout=120)
        assert colourful_share(screenshot.read_bytes()) > 0.005  # the SC is on screen, not a blank or error page
        (ARTIFACTS / "orthanc-latency.json").write_text(json.dumps({"radiographs": 6, "upload_to_sr_seconds":
                                                                    round(latency, 1)}) + "\n")
    finally:
        node.stop()
        orthanc.stop()


def test_results_arrive_although_orthanc_restarts_while_the_node_works(
        radiographs: list[Path], model_dir: Path, tmp_path: Path) -> None:
    # One batch of both radiographs: the node grades nothing before it has both.
    orthanc, node = deployment(tmp_path, model_dir, worker={"batch_size": 2, "max_wait_ms": 60000})
    orthanc.start()
    node.start()
    assert node.process is not None
    try:
        studies = [upload(orthanc, path) for path in radiographs[:2]]
        # Both routing jobs done, so no association to the node is open when it freezes: Orthanc's jobs engine would
        # wait one out (DicomScuTimeout, 30 s) before it stops.
        wait_until(lambda: job_states(orthanc) == ["Success"] * 2, timeout=60)
        node.process.send_signal(signal.SIGSTOP)  # held in its analysis while Orthanc goes down
        try:
            assert not node.events("sent")
            orthanc.stop()
        finally:
            node.process.send_signal(signal.SIGCONT)
        wait_until(lambda: node.events("send_failed"), timeout=120)  # the node tried to deliver to the stopped Orthanc
        orthanc.start()
        assert len(wait_for_results(orthanc, studies, timeout=180)) == 2
    finally:
        node.stop()
        orthanc.stop()


def test_a_failed_route_is_retried_once_the_node_is_back(radiographs: list[Path], model_dir: Path,
                                                         tmp_path: Path) -> None:
    orthanc, node = deployment(tmp_path, model_dir)
    orthanc.start()
    try:
        first = upload(orthanc, radiographs[0])  # the node is down: Orthanc's send fails
        wait_until(lambda: "Failure" in job_states(orthanc), timeout=30)
        node.start()
        time.sleep(6)  # past the first backoff (5 s)
        second = upload(orthanc, radiographs[1])  # any Orthanc event lets the routing script retry what is due
        assert len(wait_for_results(orthanc, [first, second], timeout=180)) == 2
    finally:
        node.stop()
        orthanc.stop()
