"""The 2-minute soak (bench/soak.py): Orthanc, storescu and `knee-node send` feeding the node faster than it can
analyse, while kill -9, a destination outage, a full data_dir and an Orthanc restart come at random times; then
nothing acknowledged is lost, nothing kept is missing, redeliveries stay within the kills, memory and descriptors
stay flat, every store is answered (0xA700 on a full disk) and the queue bound holds.  Needs root (a tmpfs)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.soak import render, soak
from tests.helpers import require_tool
from tools import KNEE_KL


@pytest.mark.slow
def test_a_two_minute_soak_under_faults_loses_nothing(tmp_path: Path) -> None:
    for tool in ("Orthanc", "storescu"):
        require_tool(tool)
    if not (KNEE_KL / "val").is_dir():
        pytest.skip(f"knee-kl crops not found at {KNEE_KL}")
    try:
        report = soak(2, tmp_path, seed=1)
    except PermissionError as error:  # no root, or a container that may not mount
        pytest.skip(str(error))
    print(render(report))
    assert report["acknowledged"] > 0 and report["faults"], "nothing fed or no fault injected"
    assert report["answers"].get("0xA700", 0) > 0  # fed faster than it analyses: backpressure met
    assert report["checks"] == {name: True for name in report["checks"]}
