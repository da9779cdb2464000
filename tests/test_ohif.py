"""The results in OHIF, the web viewer sites put in front of Orthanc: a radiograph routed through Debian's Orthanc
to the node, then OHIF's built viewer (npm @ohif/app, on Orthanc's DICOMweb origin) in Debian's Chromium, driven by
playwright-core (tests/browser/ohif.cjs).  Screenshots in test-artifacts/ohif/."""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import cv2
import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.sr.codedict import codes

from node.report.seg import BANDS, band_label
from tests.helpers import require_tool
from tests.test_orthanc import colourful_share, deployment, upload, wait_for_results
from tools import KNEE_KL, REPO
from tools.ohif import BROWSER_DIR, OHIF_DIST, SHOWN_TOURS, OhifServer
from tools.synthetic import write_composites

ARTIFACTS = REPO / "test-artifacts" / "ohif"
BROWSER_SCRIPT = Path(__file__).parent / "browser" / "ohif.cjs"


@pytest.fixture(scope="module")
def viewed(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """What OHIF showed of one bilateral radiograph's results, and what the SR says."""
    require_tool("Orthanc")
    node, chromium = require_tool("node"), require_tool("chromium")
    if not (OHIF_DIST / "index.html").is_file() or not (BROWSER_DIR / "node_modules" / "playwright-core").is_dir():
        pytest.skip(f"OHIF or playwright-core not installed in {BROWSER_DIR} (make setup installs them)")
    if not (KNEE_KL / "val").is_dir():
        pytest.skip(f"knee-kl crops not found at {KNEE_KL}")
    folder = tmp_path_factory.mktemp("ohif")
    (record,) = write_composites(KNEE_KL / "val", folder / "radiographs", 1, bilateral_fraction=1.0, seed=4,
                                 spacing_mm=0.25)
    radiograph = folder / "radiographs" / record["file"]
    orthanc, knee_node = deployment(folder, model_dir)
    orthanc.start()
    knee_node.start()
    try:
        study = upload(orthanc, radiograph)
        results = wait_for_results(orthanc, [study], timeout=120, modalities=frozenset({"OT", "SR", "SEG"}))[study]
        sr = hd.sr.srread(pydicom.filebase.DicomBytesIO(
            orthanc.get_bytes(f"/instances/{results['SR']['Instances'][0]}/file")))
        labels = [item.value for group in sr.content.get_image_measurement_groups()
                  for item in group[0].ContentSequence if item.name == codes.DCM.Comment]
        shutil.rmtree(ARTIFACTS, ignore_errors=True)
        ARTIFACTS.mkdir(parents=True)
        ohif = OhifServer(orthanc.url).start()
        try:
            uid = str(pydicom.dcmread(radiograph, stop_before_pixels=True).StudyInstanceUID)
            spec = {"viewer": ohif.viewer(uid), "knees": len(labels), "out": str(ARTIFACTS), "chromium": chromium,
                    "shownTours": SHOWN_TOURS, "series": {name: results[modality]["MainDicomTags"]["SeriesInstanceUID"]
                                                          for name, modality in (("SC", "OT"), ("SR", "SR"),
                                                                                 ("SEG", "SEG"))}}
            (folder / "spec.json").write_text(json.dumps(spec))
            browsed = subprocess.run([node, str(BROWSER_SCRIPT), str(folder / "spec.json")], capture_output=True,
                                     text=True, timeout=240, env={**os.environ, "BROWSER_DIR": str(BROWSER_DIR)})
        finally:
            ohif.stop()
    finally:
        knee_node.stop()
        orthanc.stop()
    assert browsed.returncode == 0, browsed.stderr[-2000:]
    shown = json.loads((ARTIFACTS / "result.json").read_text())
    return {"shown": shown, "labels": labels, "source": str(pydicom.dcmread(radiograph).SOPInstanceUID)}


def screenshot(name: str) -> bytes:
    return (ARTIFACTS / name).read_bytes()


def canvas(data_url: str) -> np.ndarray:
    png = base64.b64decode(data_url.split(",", 1)[1])
    return cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)


def test_the_sc_shows_with_its_heatmap(viewed: dict[str, Any]) -> None:
    assert colourful_share(screenshot("1-sc.png")) > 0.01


def test_the_sr_becomes_one_tracked_measurement_per_knee_with_its_label(viewed: dict[str, Any]) -> None:
    measurements = viewed["shown"]["measurements"]
    assert sorted(m["label"] for m in measurements) == sorted(viewed["labels"])
    assert sorted(label.split(":")[0] for label in viewed["labels"]) == ["Left knee", "Right knee"]
    for measurement in measurements:
        assert measurement["toolName"] == "RectangleROI"
        assert f"/instances/{viewed['source']}/" in measurement["referencedImageId"]  # boxes on the radiograph


def test_the_seg_overlay_lists_its_bands_and_switches_on_and_off(viewed: dict[str, Any]) -> None:
    assert viewed["shown"]["segments"] == [band_label(*band) for band in BANDS]
    seg = viewed["shown"]["seg"]
    on, off = canvas(seg["on"]["canvas"]), canvas(seg["off"]["canvas"])
    assert seg["on"]["imageId"] == seg["off"]["imageId"]
    changed = np.abs(on.astype(int) - off.astype(int)).max(axis=2) > 40
    assert changed.mean() > 0.005
    # On the knees: inside their boxes (the SR's measurements, on the same canvas; give or take the segments'
    # outline, 3 px wide) and nowhere else.
    on_knees = np.zeros(changed.shape, bool)
    for box in seg["boxes"]:
        (left, top), (right, bottom) = np.min(box, axis=0).astype(int), np.ceil(np.max(box, axis=0)).astype(int)
        assert changed[top:bottom + 1, left:right + 1].mean() > 0.3
        on_knees[max(top - 3, 0):bottom + 4, max(left - 3, 0):right + 4] = True
    assert not changed[~on_knees].any()
