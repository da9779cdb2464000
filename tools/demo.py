"""`python -m tools.demo`: Orthanc (Debian package) with the reference config, the node beside it, OHIF on
Orthanc's DICOMweb, a few radiographs.

It shows the reference deployment end to end on one machine: radiographs uploaded to Orthanc are routed to the
node by config/orthanc/route-to-knee-node.lua, graded, and the SR, SC and SEG come back into their studies; OHIF
(installed by `make setup`; left out when it is not) shows each study with the SR's measurements.
"""

from __future__ import annotations

import argparse
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import pydicom

from node.config import Config, ConfigError, Destination, Peer, load_config
from tools import KNEE_KL
from tools.ohif import OhifServer
from tools.orthanc import LocalOrthanc, free_port, sr_grades


def run_demo(config: Config, data: Path, count: int, stop: threading.Event) -> int:
    """Orthanc + node on free ports, `count` radiographs from the knee-kl split `data`, until `stop`."""
    from node.serve import serve
    from tools.synthetic import write_composites

    folder = Path(tempfile.mkdtemp(prefix="knee-node-demo-"))
    node_port = free_port()
    orthanc = LocalOrthanc(folder / "orthanc", node_port)
    config = replace(config, data_dir=folder / "node", log_level="WARNING",
                     scp=replace(config.scp, port=node_port, bind_address="127.0.0.1", allow_any_peer=False,
                                 peers=(Peer("ORTHANC"),)),
                     destinations=(Destination("ORTHANC", "127.0.0.1", orthanc.dicom_port),),
                     metrics=replace(config.metrics, port=0))
    node_stop, ready = threading.Event(), threading.Event()
    node = threading.Thread(target=serve, args=(config,), kwargs={"on_ready": lambda _: ready.set(),
                                                                 "stop": node_stop}, daemon=True)
    orthanc.start()
    try:
        ohif = OhifServer(orthanc.url).start()
    except FileNotFoundError as error:
        ohif = None
        print(f"no OHIF: {error}")
    try:
        node.start()
        if not ready.wait(300):
            raise RuntimeError("the node did not start")
        print(f"Orthanc {orthanc.url}  (Orthanc Explorer: {orthanc.url}/app/explorer.html)")
        if ohif is not None:
            print(f"OHIF    {ohif.url}  (its study list)")
        print(f"knee-node KNEE_NODE@127.0.0.1:{node_port}, work folder {folder}")
        records = write_composites(data, folder / "radiographs", count, bilateral_fraction=0.5, seed=int(time.time()),
                                   spacing_mm=0.2)
        studies = {}
        for record in records:
            uploaded = orthanc.post("/instances", (folder / "radiographs" / record["file"]).read_bytes())
            studies[uploaded["ParentStudy"]] = (time.monotonic(), record)
        print(f"uploaded {len(records)} radiographs; waiting for the results ...")
        pending = dict(studies)
        while pending and not stop.is_set():
            for study, (started, record) in list(pending.items()):
                results = orthanc.results(study)
                if "SR" in results and "OT" in results:
                    del pending[study]
                    truth = ", ".join(f"{k['laterality']} KL {k['grade']}" for k in record["knees"])
                    grades = sr_grades(orthanc, results["SR"]["Instances"][0])
                    graded = ", ".join(f"{k['laterality']} KL {k['grade']} ({k['confidence']:.0f}%)" for k in grades)
                    print(f"  {record['file']}: {graded or 'no knee graded'} (crop labels: {truth}), "
                          f"{time.monotonic() - started:.1f} s after upload\n"
                          f"    study  {orthanc.url}/app/explorer.html#study?uuid={study}\n"
                          f"    viewer {orthanc.viewer(results['OT']['ID'])}")
                    if ohif is not None:
                        uid = pydicom.dcmread(folder / "radiographs" / record["file"],
                                              stop_before_pixels=True).StudyInstanceUID
                        print(f"    OHIF   {ohif.viewer(str(uid))}")
            stop.wait(0.5)
        if not stop.is_set():
            print("Press Ctrl-C to stop.")
            stop.wait()
    finally:
        node_stop.set()
        node.join(60)
        if ohif is not None:
            ohif.stop()
        orthanc.stop()
        print(f"stopped; files are in {folder}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.demo", description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=KNEE_KL / "val", help="knee-kl split to make radiographs from")
    parser.add_argument("-n", "--count", type=int, default=4, help="radiographs to upload")
    parser.add_argument("--config", type=Path, help="node YAML (ports and folders are replaced for the demo)")
    args = parser.parse_args(argv)
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    try:
        return run_demo(load_config(args.config), args.data, args.count, stop)
    except (ConfigError, OSError, RuntimeError, ValueError) as error:
        print(f"demo: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
