"""`python -m bench.scale_out`: throughput of the scale-out node with 1 worker and with 2 workers.

One receiver, one dispatcher and N workers, each `knee-node serve --role ...` in its own process, on a real
redis-server, sharing one data_dir.  The same radiographs are sent on one association; the clock runs from the
first C-STORE to the last SR at the destination.  Workers run one torch thread each, so 2 workers use 2 cores
where 1 uses one.  Prints a markdown table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from pydicom.uid import ExplicitVRLittleEndian

from node.scu import send
from tests.helpers import NodeProcess, RedisServer, StoreScp, random_model
from tools import KNEE_KL, REPO
from tools.synthetic import write_composites


def run(workers: int, radiographs: list[Path], model: Path, redis: RedisServer, work: Path,
        batch_size: int) -> dict[str, Any]:
    redis.client.flushall()
    destination = StoreScp(work / "pacs").start()
    shared = {"data_dir": str(work / "shared"), "log_level": "INFO",
              "queue": {"backend": "redis", "redis_url": redis.url},
              "worker": {"batch_size": batch_size, "threads": 1},
              "destinations": [{"ae_title": "DEST", "host": "127.0.0.1", "port": destination.port}]}
    roles = ["receiver", "dispatcher", *["worker"] * workers]
    nodes = [NodeProcess(work / f"{role}-{index}", model, role=role, **shared) for index, role in enumerate(roles)]
    with ThreadPoolExecutor(len(nodes)) as pool:
        list(pool.map(NodeProcess.start, nodes))
    try:
        started = time.perf_counter()
        statuses = [result.status for result in send(radiographs, nodes[0].peer(), "TEST_SCU")]
        if statuses != [0] * len(radiographs):
            raise RuntimeError(f"C-STORE statuses {statuses}")
        if not destination.wait_for(3 * len(radiographs), timeout=1800):  # SR, SC, SEG each
            raise RuntimeError(f"only {len(destination.received)} of {3 * len(radiographs)} results arrived")
        elapsed = time.perf_counter() - started
    finally:
        with ThreadPoolExecutor(len(nodes)) as pool:
            list(pool.map(NodeProcess.stop, nodes))
        destination.stop()
    per_worker = [len(node.events("processed")) for node in nodes[2:]]
    return {"workers": workers, "radiographs": len(radiographs), "seconds": round(elapsed, 2),
            "per_minute": round(60 * len(radiographs) / elapsed, 1), "processed_per_worker": per_worker}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.scale_out", description=__doc__.splitlines()[0])
    parser.add_argument("-n", "--radiographs", type=int, default=40)
    parser.add_argument("--spacing-mm", type=float, default=0.15, help="pixel spacing: 0.15 makes CR-sized images")
    parser.add_argument("--input-size", type=int, default=224, help="model input (random weights, real network)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--json", type=Path, default=REPO / "results" / "scale-out.json", help="where to write JSON")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="knee-scale-") as folder:
        work = Path(folder)
        records = write_composites(KNEE_KL / "val", work / "in", args.radiographs, bilateral_fraction=0.3,
                                   syntaxes=[ExplicitVRLittleEndian], seed=7, spacing_mm=args.spacing_mm)
        radiographs = [work / "in" / record["file"] for record in records]
        model = random_model(work / "model", input_size=args.input_size)
        redis = RedisServer(work / "redis")
        try:
            rows = [run(workers, radiographs, model, redis, work / f"run-{workers}", args.batch_size)
                    for workers in (1, 2)]
        finally:
            redis.stop()
    report = {"cores": os.cpu_count(), "load_average": os.getloadavg(), "spacing_mm": args.spacing_mm,
              "input_size": args.input_size, "batch_size": args.batch_size, "rows": rows,
              "speedup": round(rows[1]["per_minute"] / rows[0]["per_minute"], 2)}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    print(f"{args.radiographs} radiographs ({args.spacing_mm} mm/px), model input {args.input_size} px, "
          f"{report['cores']} cores, load average {report['load_average'][0]:.1f} at the end\n")
    print("| workers | seconds | radiographs/min | processed per worker |\n| --- | --- | --- | --- |")
    for row in rows:
        print(f"| {row['workers']} | {row['seconds']} | {row['per_minute']} | {row['processed_per_worker']} |")
    print(f"\nspeed-up 2 vs 1 workers: {report['speedup']}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
