"""40+ odd or broken inputs through `knee-node analyze` and over DICOM: a clear status for each, no traceback,
the node stays up, nothing written outside its folders."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from node.scu import echo, send
from node.training.data import CropSet
from tests.hardening.corpus import Case, build
from tests.helpers import NodeProcess

ACKNOWLEDGED_OR_REFUSED = {0x0000, 0xA700, 0xA900, 0xC000}


@pytest.fixture(scope="module")
def corpus(val_crops: CropSet, tmp_path_factory: pytest.TempPathFactory) -> list[Case]:
    cases = build(tmp_path_factory.mktemp("corpus"), val_crops)
    assert len(cases) >= 40
    return cases


def test_analyze_gives_every_input_a_status_and_errors_one_line_each(corpus: list[Case], model_dir: Path,
                                                                     tmp_path: Path) -> None:
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, "-m", "node.cli", "analyze", *(str(c.path) for c in corpus), "--out",
                           str(out), "--model", str(model_dir), "--json"], capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 1  # some inputs failed, and said so
    assert "Traceback" not in done.stderr
    results = {Path(r["file"]): r for r in map(json.loads, done.stdout.splitlines())}
    assert len(results) == len(corpus)
    print(f"analyze: {len(corpus)} inputs, {dict(Counter(r['status'] for r in results.values()))}")
    for case in corpus:
        result = results[case.path]
        assert result["status"] in case.analyze, (case.name, result)
        assert result["status"] == "ok" or result["reason"], case.name
    errors = [line for line in done.stderr.splitlines() if line]
    assert len(errors) == sum(r["status"] == "error" for r in results.values())
    assert all(": " in line and line.split(": ")[0] in map(str, results) for line in errors)
    assert {p.parent for p in out.rglob("*") if p.is_file()} <= {out}
    assert not Path("/tmp/owned").exists()


def test_the_node_answers_each_input_and_stays_up(corpus: list[Case], model_dir: Path, tmp_path: Path) -> None:
    node = NodeProcess(tmp_path / "node", model_dir, scp={"allow_any_peer": True}, queue={"max_attempts": 1}).start()
    peer = node.peer()
    statuses = {}
    try:
        for case in (c for c in corpus if c.sendable):
            (result,) = send([case.path], peer, "FUZZ")
            statuses[case.name] = result.status
            assert result.status is None or result.status in ACKNOWLEDGED_OR_REFUSED, (case.name, result)
            assert echo(peer, "ECHO") == 0, f"node not answering after {case.name}"
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            report = json.loads(node.admin("status", "--json").stdout)["queues"]["analyze"]
            if report["queued"] == report["leased"] == 0:
                break
            time.sleep(1)
        assert report["queued"] == report["leased"] == 0, report
    finally:
        assert node.stop() == 0
    print(f"over DICOM: {len(statuses)} inputs, "
          f"{dict(Counter('none' if s is None else f'0x{s:04X}' for s in statuses.values()))}, "
          f"not sent: {[name for name, status in statuses.items() if status is None]}, "
          f"0xC000: {[name for name, status in statuses.items() if status == 0xC000]}")
    assert statuses["control"] == 0x0000
    assert statuses["uid-path-characters"] == 0xC000
    for letter in json.loads(node.admin("status", "--json").stdout)["dead_letters"]:
        assert letter["error"], letter  # every dead letter says why
    data = node.folder / "data"
    written = {p for p in node.folder.rglob("*") if p.is_file()}
    assert all(data in p.parents or p.parent == node.folder for p in written)
    assert not Path("/tmp/owned").exists()
