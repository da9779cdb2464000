"""(a) Ingest: DCMTK's storescu sends the same large DX to DCMTK's storescp and to the node's Storage SCP.

storescp writes each instance to a file (no fsync), once with its defaults and once tuned as the node is: data
written as received (+B) and the largest PDU storescu sends (128 kB; the node accepts any size).  The node runs as
`knee-node serve --role receiver`, the real Receiver: header check, selection, durable spool (fsync of file and
folder), SQLite job (fsync), then Success.  All get the same fresh copies in each round, one after the other, so
that a change in machine load hits each.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

from bench.inputs import fresh_copies
from bench.measure import cpu_seconds, percentile
from tests.helpers import NodeProcess, memory_mb
from tools.orthanc import free_port

ROUNDS = 3


STORESCP = {"storescp": [], "storescp_tuned": ["--bit-preserving", "--max-pdu", "131072"]}
LABELS = {"storescp": "DCMTK storescp, defaults (files, no fsync)",
          "storescp_tuned": "DCMTK storescp +B, 128 kB PDU (files, no fsync)",
          "node": "knee-node SCP (durable spool + queue)"}


class Storescp:
    """DCMTK's storescp writing what it receives to `folder`."""

    def __init__(self, folder: Path, options: list[str]) -> None:
        self.folder, self.port = folder, free_port()
        folder.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(["storescp", *options, "--output-directory", str(folder), str(self.port)],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    raise RuntimeError("storescp did not start") from None
                time.sleep(0.05)

    def received(self) -> int:
        return sum(1 for path in self.folder.iterdir() if path.is_file())

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(30)


def storescu(files: list[Path], called_ae: str, port: int) -> float:
    """Send `files` on one association; returns the wall time."""
    started = time.perf_counter()
    done = subprocess.run(["storescu", "-aet", "STORESCU", "-aec", called_ae, "127.0.0.1", str(port),
                           *map(str, files)], capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"storescu failed ({done.returncode}): {done.stderr.strip()[-500:]}")
    return elapsed


def measure_ingest(source: Path, count: int, model_dir: Path, work: Path) -> dict[str, Any]:
    storescps = {name: Storescp(work / name, options) for name, options in STORESCP.items()}
    node = NodeProcess(work / "receiver", model_dir, role="receiver", log_level="INFO").start()
    assert node.process is not None
    pids = {name: server.process.pid for name, server in storescps.items()} | {"node": node.process.pid}

    def received(name: str) -> float:
        return storescps[name].received() if name in storescps else node.metric("knee_node_received_total")

    runs: dict[str, list[dict[str, float]]] = {name: [] for name in pids}
    try:
        for round_ in range(ROUNDS):
            copies = fresh_copies([source], work / f"round-{round_}", count)
            files = [path for path, _ in copies]
            megabytes = sum(path.stat().st_size for path in files) / 1e6
            for name, pid in pids.items():
                cpu, before = cpu_seconds(pid), received(name)
                seconds = (storescu(files, "STORESCP", storescps[name].port) if name in storescps else
                           storescu(files, "KNEE_NODE", node.scp_port))
                if received(name) - before != count:
                    raise RuntimeError(f"{name} kept {received(name) - before} of {count} instances")
                runs[name].append({"seconds": seconds, "mb_per_s": megabytes / seconds,
                                   "cpu_ms_per_instance": 1000 * (cpu_seconds(pid) - cpu) / count})
            shutil.rmtree(work / f"round-{round_}")
        peaks = {name: memory_mb(pid, "VmHWM") for name, pid in pids.items()}
    finally:
        for server in storescps.values():
            server.stop()
        node.stop()
    result: dict[str, Any] = {"instances_per_round": count, "rounds": ROUNDS,
                              "instance_mb": source.stat().st_size / 1e6}
    for name, rounds in runs.items():
        result[name] = {"label": LABELS[name], "mb_per_s": percentile([r["mb_per_s"] for r in rounds], 50),
                        "cpu_ms_per_instance": percentile([r["cpu_ms_per_instance"] for r in rounds], 50),
                        "peak_rss_mb": peaks[name], "rounds": rounds}
    best = max(STORESCP, key=lambda name: result[name]["mb_per_s"])
    result["ratio"] = {"reference": best, "node_over_reference": result["node"]["mb_per_s"] / result[best]["mb_per_s"]}
    return result
