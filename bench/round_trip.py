"""The Orthanc round trip as a PACS user sees it: from the upload to Orthanc until the SR is stored back there.

Orthanc (tools.orthanc: the reference configuration and Lua routing of config/orthanc) and `knee-node serve` (the
default worker settings) on loopback, each result sent back to Orthanc.  Radiographs are uploaded over Orthanc's
REST API (POST /instances, as its web interface does); the SR's UID is derived from the radiograph's, so the bench
polls Orthanc (REST lookups, 10 ms apart) for it.  One at a time (the first warms up and is not counted), then a
burst: all uploaded back to back, each timed from its own upload.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from bench.inputs import fresh_copies
from bench.measure import percentile
from bench.pipeline import RESULT_TIMEOUT
from node.config import WorkerConfig
from node.report.uids import derived_uid
from tests.helpers import NodeProcess
from tools.orthanc import LocalOrthanc, free_port

POLL_SECONDS = 0.01


def stored_at(orthanc: LocalOrthanc, uids: list[str]) -> dict[str, float]:
    """When Orthanc first answered that it holds each instance of `uids` (monotonic clock); waits for all."""
    pending, found, deadline = list(uids), {}, time.monotonic() + RESULT_TIMEOUT
    while pending and time.monotonic() < deadline:
        for uid in list(pending):
            if orthanc.post("/tools/lookup", uid.encode()):
                found[uid] = time.monotonic()
                pending.remove(uid)
        time.sleep(POLL_SECONDS)
    if pending:
        raise TimeoutError(f"{len(pending)} results not in Orthanc within {RESULT_TIMEOUT} s")
    return found


def round_trip(model_dir: Path, device: str, sources: dict[str, list[Path]], count: int, version: str,
               work: Path) -> dict[str, Any]:
    defaults = WorkerConfig()
    node_port = free_port()
    orthanc = LocalOrthanc(work / "orthanc", node_port).start()
    node = NodeProcess(work / "node", model_dir, log_level="INFO",
                       worker={"device": device, "threads": defaults.threads, "batch_size": defaults.batch_size,
                               "max_wait_ms": defaults.max_wait_ms},
                       scp={"port": node_port, "peers": [{"ae_title": "ORTHANC"}]},
                       destinations=[{"ae_title": "ORTHANC", "host": "127.0.0.1", "port": orthanc.dicom_port}])
    outcome: dict[str, Any] = {}
    try:
        node.start()
        for name, paths in sources.items():
            lone = []
            for index, (path, uid) in enumerate(fresh_copies(paths, work / f"{name}-lone", count + 1)):
                started = time.monotonic()
                orthanc.post("/instances", path.read_bytes())
                sr = derived_uid(uid, version, "sr")
                if index:  # the first warms Orthanc and the node up
                    lone.append(stored_at(orthanc, [sr])[sr] - started)
                else:
                    stored_at(orthanc, [sr])
            uploaded = {}
            for path, uid in fresh_copies(paths, work / f"{name}-burst", count):
                uploaded[derived_uid(uid, version, "sr")] = time.monotonic()
                orthanc.post("/instances", path.read_bytes())
            arrived = stored_at(orthanc, list(uploaded))
            burst = [arrived[sr] - started for sr, started in uploaded.items()]
            outcome[name] = {"lone_p50_s": percentile(lone, 50), "lone_p95_s": percentile(lone, 95),
                             "burst_p50_s": percentile(burst, 50), "burst_p95_s": percentile(burst, 95),
                             "radiographs": len(lone), "burst": count, "lone_s": lone, "burst_s": burst}
    finally:
        node.stop()
        orthanc.stop()
    return outcome
