"""`python -m bench.soak --minutes N`: the node under mixed traffic and overlapping faults, then reconciled.

Set-up, all on loopback: `knee-node serve` (the embedded node, or with --scale-out a receiver, a worker and a
dispatcher on a durable redis-server) with its data_dir (queue, spool, outbox, audit) on a small tmpfs and
`queue.max_depth` QUEUE_BOUND; Debian's Orthanc with the project's Lua routing (tools.orthanc.LocalOrthanc) in
front of it; a pynetdicom Storage SCP as the results' destination.  Three senders, Orthanc (REST upload, routed by
the Lua script), `storescu` and `knee-node send`, feed good radiographs in three transfer syntaxes, minimal-header
ones, non-knees, broken files and oversized ones, together FEED_FACTOR times the throughput measured on a warm-up
batch: more than the node can analyse, so that it answers 0xA700 and the senders resend (a bounded number of
times, as a PACS does).  The model is random weights at 64 px (tests.helpers.random_model): the soak loads the
node's receive, queue, report and delivery paths and its recovery, not the grading, and a small model lets it
analyse enough radiographs to meet every fault many times on a 2-core machine.

A fault script (seeded: `--seed`) injects, one after another at random gaps, each kind in a random order per
round: kill -9 of a node process (any role), kill -9 of redis-server (scale-out), the destination stopped for a
while, the data_dir filled to its last byte for a while, Orthanc restarted.

At the end, from the senders' own records (their C-STORE answers, Orthanc's routing jobs) and the destination's
store: every acknowledged instance has its results at the destination, is a dead letter with a reason, or was
passed over by the selection rules with a reason (else: lost); every acknowledged instance is in the node's
records (else: acknowledged, not kept); results delivered again (same SOP Instance UID) that the node's own
recovery caused, at most one per kill; RSS and open fds of each node process, sampled every SAMPLE_SECONDS, fitted
after WARMUP_SECONDS of each process's life; no store left without an answer except while the receiving process
was down (so a full disk is answered, 0xA700); the analysis queue never beyond its bound.  Prints the tables and
writes everything to JSON.  Every loop is bounded in count and time.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import random
import re
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom import Dataset, dcmwrite
from pydicom.uid import UID, ExplicitVRLittleEndian, JPEG2000Lossless, RLELossless, generate_uid
from pynetdicom import evt

from bench.__main__ import environment, table
from node.scu import send
from node.training.data import load_crops
from tests.hardening import corpus
from tests.helpers import NodeProcess, RedisServer, StoreScp, fill, memory_mb, random_model
from tools import KNEE_KL, REPO
from tools.orthanc import LocalOrthanc, free_port
from tools.synthetic import compose, encode, minimal_header

QUEUE_BOUND = 16
TMPFS_MB = 256
WARMUP_RADIOGRAPHS = 8
FEED_FACTOR = 2.0  # times the measured throughput
MAX_SENDS = 4  # per instance and direct sender, the first included
RESEND_SECONDS = 5.0
SAMPLE_SECONDS = 5.0
WARMUP_SECONDS = 60.0  # of each node process's life, before RSS and fds are judged
JUDGED_SECONDS = 120.0  # at least this much life after warm-up to judge (shorter spans: noise, not trend)
RSS_GROWTH_LIMIT = 0.05
FD_GROWTH_LIMIT = 5  # descriptors, fitted over a process's life after warm-up
DRAIN_SECONDS = 300.0
NODE_AE = "KNEE_NODE"
SYNTAXES = {"explicit": ExplicitVRLittleEndian, "jpeg2000": JPEG2000Lossless, "rle": RLELossless}
STORESCU_PROPOSE = {ExplicitVRLittleEndian: [], JPEG2000Lossless: ["-xv"], RLELossless: ["-xr"]}
# Share of new inputs by kind; "good" cycles through SYNTAXES.
MIX = {"good": 0.55, "minimal": 0.12, "non-knee": 0.1, "broken": 0.15, "oversized": 0.08}
BROKEN = ("short-pixel-data", "flat-image", "columns-mismatch", "jpeg2000-truncated-frame")  # corpus cases


@dataclass(frozen=True)
class Variant:
    kind: str
    name: str
    dataset: Dataset
    truncated: bool = False  # the file cut in its pixel data


@dataclass(frozen=True)
class Answer:
    at: float  # monotonic
    status: int | None
    reason: str = ""
    sent: bool = True  # False: never left the sender (no association, unreadable file)


@dataclass
class Record:
    """One instance as its sender knows it."""

    sender: str
    kind: str
    variant: str
    uid: str
    study: str
    syntax: str
    path: Path
    answers: list[Answer] = field(default_factory=list)
    orthanc_id: str = ""
    acknowledged: bool = False

    def answered(self, answer: Answer) -> None:
        self.answers.append(answer)
        self.acknowledged = self.acknowledged or answer.status == 0x0000


@dataclass(frozen=True)
class Fault:
    kind: str
    target: str
    started: float  # monotonic
    restored: float  # the fault undone (for a kill: the restart begun)
    back: float  # the node healthy again (kills), else == restored


class Inputs:
    """Fresh instances (new Study, Series and SOP Instance UIDs each time) of a fixed set of variants."""

    def __init__(self, folder: Path, seed: int) -> None:
        crops = load_crops(KNEE_KL / "val")
        rng = np.random.default_rng(seed)
        knees = [compose(crops, [int(rng.integers(len(crops.files)))], rng, spacing_mm=0.4, bits=12).dataset
                 for _ in range(len(SYNTAXES))]
        with warnings.catch_warnings():  # pydicom's about the corpus's invalid values, which are on purpose
            warnings.simplefilter("ignore")
            cases = {case.name: case.path for case in corpus.build(folder / "corpus", crops)}
        self.variants: dict[str, list[Variant]] = {
            "good": [Variant("good", name, encode(knee, syntax))
                     for knee in knees for name, syntax in SYNTAXES.items()],
            "minimal": [Variant("minimal", "minimal-header", minimal_header(knees[0]))],
            "non-knee": [Variant("non-knee", "not-a-knee", pydicom.dcmread(cases["not-a-knee"]))],
            "broken": [Variant("broken", name, pydicom.dcmread(cases[name])) for name in BROKEN]
            + [Variant("broken", "truncated-in-pixels", knees[0], truncated=True)],
            "oversized": [Variant("oversized", "3000x2400x16", compose(crops, [1], rng, spacing_mm=0.1,
                                                                          bits=16).dataset)],
        }
        self.folder, self.lock, self.rng = folder, threading.Lock(), random.Random(seed)
        self.made = 0

    def fresh(self, sender: str, kinds: tuple[str, ...] = tuple(MIX)) -> Record:
        with self.lock:  # the variants' datasets are shared: re-identified and written one at a time
            kind = self.rng.choices(kinds, [MIX[k] for k in kinds])[0]
            variant = self.rng.choice(self.variants[kind])
            dataset = variant.dataset
            dataset.StudyInstanceUID, dataset.SeriesInstanceUID = generate_uid(), generate_uid()
            dataset.SOPInstanceUID = dataset.file_meta.MediaStorageSOPInstanceUID = generate_uid()
            buffer = io.BytesIO()
            dcmwrite(buffer, dataset, enforce_file_format=True)
            data = buffer.getvalue()
            if variant.truncated:
                data = data[: len(data) - len(dataset.PixelData) // 2]
            self.made += 1
            path = self.folder / sender / f"{self.made:06d}.dcm"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
            return Record(sender, kind, variant.name, str(dataset.SOPInstanceUID), str(dataset.StudyInstanceUID),
                          str(dataset.file_meta.TransferSyntaxUID), path)


class Destination(StoreScp):
    """The results' destination: every arrival, and the study each result belongs to."""

    def __init__(self, folder: Path) -> None:
        super().__init__(folder)
        self.arrivals: list[tuple[float, str]] = []  # (monotonic, SOP Instance UID), every delivery
        self.study: dict[str, str] = {}  # result SOP Instance UID -> Study Instance UID

    def on_store(self, event: evt.Event) -> int:
        status = super().on_store(event)
        uid = str(event.dataset.SOPInstanceUID)
        self.arrivals.append((time.monotonic(), uid))
        self.study[uid] = str(event.dataset.StudyInstanceUID)
        return status


class Setup:
    """The node's processes, the broker, Orthanc and the destination, and what can be done to them."""

    def __init__(self, work: Path, model: Path, scale_out: bool) -> None:
        self.data_dir = work / "data"
        self.data_dir.mkdir(parents=True)
        mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={TMPFS_MB}m", "tmpfs", str(self.data_dir)],
                                 capture_output=True, text=True)
        if mounted.returncode != 0:
            raise PermissionError(f"cannot mount a tmpfs at {self.data_dir}: {mounted.stderr.strip()}")
        self.destination = Destination(work / "destination")
        self.redis = RedisServer(work / "redis", durable=True) if scale_out else None
        port = free_port()
        self.orthanc = LocalOrthanc(work / "orthanc", port)
        settings = json.loads(self.orthanc.config.read_text())
        settings["JobsHistorySize"] = 1000000  # its routing jobs are the record of what the node acknowledged
        self.orthanc.config.write_text(json.dumps(settings, indent=2))
        config: dict[str, Any] = {
            "data_dir": str(self.data_dir), "log_level": "INFO",
            "scp": {"port": port, "min_free_disk_mb": 0,
                    "peers": [{"ae_title": "ORTHANC"}, {"ae_title": "STORESCU"}, {"ae_title": "TEST_SCU"}]},
            "queue": {"max_depth": QUEUE_BOUND}
            | ({"backend": "redis", "redis_url": self.redis.url} if self.redis else {}),
            "worker": {"batch_size": 4, "max_wait_ms": 100, "threads": 1},
            "destinations": [{"ae_title": "DEST", "host": "127.0.0.1", "port": self.destination.port}],
            "dispatch": {"backoff_seconds": 1, "max_backoff_seconds": 10, "max_attempts": 10},
        }
        roles = ["receiver", "worker", "dispatcher"] if scale_out else ["all"]
        self.nodes = [NodeProcess(work / f"node-{role}", model, role=role, **config) for role in roles]
        for node in self.nodes:
            node.scp_port = port  # the port Orthanc routes to, set above
        self.receiver = self.nodes[0]  # the one with the SCP

    def start(self) -> None:
        self.destination.start()
        self.orthanc.start()
        with ThreadPoolExecutor(len(self.nodes)) as pool:
            list(pool.map(NodeProcess.start, self.nodes))

    def stop(self) -> None:
        for node in self.nodes:
            if node.process is not None and node.process.poll() is None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    node.stop()
        self.orthanc.stop()
        self.destination.stop()
        if self.redis is not None:
            self.redis.stop()
        subprocess.run(["umount", "-l", str(self.data_dir)], check=False)

    def status(self) -> dict[str, Any]:
        """`knee-node status --json` (queues, dead letters)."""
        return dict(json.loads(self.receiver.admin("status", "--json").stdout))


class Soak:
    def __init__(self, setup: Setup, inputs: Inputs, seed: int, minutes: float) -> None:
        self.setup, self.inputs, self.minutes = setup, inputs, minutes
        self.rng = random.Random(seed + 1)
        self.records: list[Record] = []
        self.faults: list[Fault] = []
        self.samples: list[dict[str, Any]] = []  # RSS, fds per node process; queue depths
        self.down: list[tuple[float, float]] = []  # when the receiving process was dead (kill -> healthy)
        self.full: list[tuple[float, float]] = []  # when data_dir was full
        self.rate = 0.0
        self.lock = threading.Lock()
        self.feeding_until = self.feed_started = self.fed = 0.0
        self.finished = threading.Event()

    # --- warm-up: the rate to feed at ----------------------------------------------------------------------------

    def measure_throughput(self) -> float:
        """Radiographs per second, from C-STORE of WARMUP_RADIOGRAPHS good ones to their last result."""
        records = [self.inputs.fresh("warm-up", ("good",)) for _ in range(WARMUP_RADIOGRAPHS)]
        started = time.monotonic()
        for record, sent in zip(records, send([r.path for r in records], self.setup.receiver.peer(), "TEST_SCU"),
                                strict=True):
            record.answered(Answer(time.monotonic(), sent.status, sent.reason,
                                   sent=sent.status is not None or sent.reason == "no response"))
        self.records += records
        want = {r.study for r in records if r.acknowledged}
        if len(want) < WARMUP_RADIOGRAPHS:
            raise RuntimeError(f"warm-up: {[a.reason for r in records for a in r.answers]}")
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            studies = Counter(self.setup.destination.study.values())
            if all(studies[study] >= 3 for study in want):
                break
            time.sleep(0.2)
        else:
            raise TimeoutError("the warm-up radiographs' results did not arrive within 600 s")
        return len(want) / (time.monotonic() - started)

    # --- senders --------------------------------------------------------------------------------------------------

    def keep(self, record: Record) -> Record:
        with self.lock:
            self.records.append(record)
        return record

    def direct(self, sender: str, transmit: Callable[[list[Record]], list[Answer]], batch: int) -> None:
        """Send fresh instances, and resend refused or unanswered ones after RESEND_SECONDS, MAX_SENDS times at most;
        pace: `batch` instances every batch * 3 / rate seconds (three senders share the rate)."""
        pending: list[tuple[float, Record]] = []
        interval = batch * 3 / self.rate
        for _ in range(int(self.minutes * 60 / interval) + 1):
            started = time.monotonic()
            if started >= self.feeding_until:
                break
            due = [record for at, record in pending if at <= started][:batch]
            pending = [(at, record) for at, record in pending if record not in due]
            records = due + [self.keep(self.inputs.fresh(sender)) for _ in range(batch - len(due))]
            for record, answer in zip(records, transmit(records), strict=True):
                record.answered(answer)
                if not record.acknowledged and len(record.answers) < MAX_SENDS:
                    pending.append((time.monotonic() + RESEND_SECONDS, record))
                else:
                    record.path.unlink(missing_ok=True)
            time.sleep(max(0.0, interval - (time.monotonic() - started)))

    def storescu(self, records: list[Record]) -> list[Answer]:
        (record,) = records
        command = ["storescu", "-v", "-aet", "STORESCU", "-aec", NODE_AE, *STORESCU_PROPOSE[UID(record.syntax)],
                   "127.0.0.1", str(self.setup.receiver.scp_port), str(record.path)]
        try:
            result = subprocess.run(command, capture_output=True, text=True, timeout=120)
        except subprocess.TimeoutExpired:
            return [Answer(time.monotonic(), None, "storescu timed out")]
        now, log = time.monotonic(), result.stdout + result.stderr
        if response := re.search(r"Received Store Response \((.+)\)", log):
            text = response.group(1)
            status = 0x0000 if text == "Success" else 0xA700 if "OutOfResources" in text else 0xC000
            return [Answer(now, status, text)]
        last = (log.strip().splitlines() or [f"exit {result.returncode}"])[-1]
        return [Answer(now, None, last, sent="Sending Store Request" in log)]

    def knee_node_send(self, records: list[Record]) -> list[Answer]:
        """`knee-node send`: it names each file not acknowledged, with the status or why, on stderr."""
        command = [sys.executable, "-m", "node.cli", "send", *[str(r.path) for r in records], "--to",
                   f"{NODE_AE}@127.0.0.1:{self.setup.receiver.scp_port}", "--calling-ae", "TEST_SCU"]
        try:
            result = subprocess.run(command, capture_output=True, text=True, timeout=300)
        except subprocess.TimeoutExpired:
            return [Answer(time.monotonic(), None, "knee-node send timed out") for _ in records]
        now, answers = time.monotonic(), []
        for record in records:
            line = next((line for line in result.stderr.splitlines() if line.startswith(f"{record.path}: ")), None)
            if line is None:
                answers.append(Answer(now, 0x0000) if result.returncode in (0, 1)
                               else Answer(now, None, f"knee-node send exited {result.returncode}"))
            elif status := re.search(r"status 0x([0-9A-F]{4})", line):
                answers.append(Answer(now, int(status.group(1), 16), line.split(": ", 1)[1]))
            else:
                reason = line.split(": ", 1)[1]
                answers.append(Answer(now, None, reason, sent=reason == "no response"))
        return answers

    def orthanc(self) -> None:
        """Upload to Orthanc, which routes knees to the node (its jobs say what the node acknowledged)."""
        interval = 3 / self.rate
        for _ in range(int(self.minutes * 60 / interval) + 1):
            started = time.monotonic()
            if started >= self.feeding_until:
                break
            self.upload(self.keep(self.inputs.fresh("orthanc")))
            time.sleep(max(0.0, interval - (time.monotonic() - started)))

    def upload(self, record: Record) -> None:
        try:
            record.orthanc_id = str(self.setup.orthanc.post("/instances", record.path.read_bytes())["ID"])
        except OSError as error:  # Orthanc restarting, or a file it refuses (400)
            record.answers.append(Answer(time.monotonic(), None, f"Orthanc: {error}", sent=False))
        record.path.unlink()

    # --- faults ---------------------------------------------------------------------------------------------------

    def fault_script(self) -> None:
        kinds = ["kill node", "destination down", "data_dir full", "Orthanc restart"]
        kinds += ["kill redis-server"] if self.setup.redis else []
        # Short runs meet every kind; long ones leave a node process minutes between kills to show a memory trend.
        gaps = (3.0, 10.0) if self.minutes < 5 else (20.0, 90.0)
        for _ in range(int(self.minutes * 60 / gaps[0]) + 1):
            for kind in self.rng.sample(kinds, len(kinds)):
                gap = self.rng.uniform(*gaps)
                if time.monotonic() + gap + 20 > self.feeding_until:
                    return
                time.sleep(gap)
                self.inject(kind)

    def inject(self, kind: str) -> None:
        setup, started = self.setup, time.monotonic()
        if kind == "kill node":
            node = self.rng.choice(setup.nodes)
            node.kill()
            node.start(timeout=300)
            back = time.monotonic()
            if node is setup.receiver:
                self.down.append((started, back + 1))
            self.faults.append(Fault(kind, node.role, started, started, back))
            return
        if kind == "destination down":
            setup.destination.stop()
            time.sleep(self.rng.uniform(5, 20))
            setup.destination.start()
        elif kind == "data_dir full":
            filler = fill(setup.data_dir)
            time.sleep(self.rng.uniform(5, 15))
            filler.unlink()
            self.full.append((started, time.monotonic()))
        elif kind == "Orthanc restart":
            setup.orthanc.stop()
            setup.orthanc.start()
        elif kind == "kill redis-server":
            assert setup.redis is not None
            setup.redis.kill()
            time.sleep(self.rng.uniform(2, 8))
            setup.redis.start()
        now = time.monotonic()
        self.faults.append(Fault(kind, "", started, now, now))

    # --- sampling -------------------------------------------------------------------------------------------------

    def sample(self) -> None:
        while not self.finished.wait(SAMPLE_SECONDS):
            now = time.monotonic()
            for node in self.setup.nodes:
                process = node.process
                if process is None or process.poll() is not None:
                    continue
                with contextlib.suppress(OSError, ValueError):  # it died between the check and the read
                    self.samples.append({"at": now, "role": node.role, "pid": process.pid,
                                         "rss_mb": memory_mb(process.pid, "VmRSS"),
                                         "fds": len(os.listdir(f"/proc/{process.pid}/fd"))})
            with contextlib.suppress(OSError):
                depths = {queue: self.setup.receiver.metric(f'knee_node_queue_depth{{queue="{queue}"}}')
                          for queue in ("analyze", "deliver")}
                self.samples.append({"at": now, "queue_depth": depths})

    # --- the run --------------------------------------------------------------------------------------------------

    def run(self) -> None:
        throughput = self.measure_throughput()
        self.rate = FEED_FACTOR * throughput
        say(f"throughput {60 * throughput:.1f} radiographs/min; feeding {60 * self.rate:.1f} instances/min "
            f"for {self.minutes:g} min")
        self.feed_started = time.monotonic()
        self.feeding_until = self.feed_started + self.minutes * 60
        sampler = threading.Thread(target=self.sample, daemon=True)
        sampler.start()
        workers = [threading.Thread(target=target, args=args) for target, args in (
            (self.direct, ("storescu", self.storescu, 1)), (self.direct, ("knee-node send", self.knee_node_send, 3)),
            (self.orthanc, ()), (self.fault_script, ()))]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        self.fed = time.monotonic()
        say(f"fed {len(self.records)} instances, {len(self.faults)} faults; draining")
        self.drain()
        self.finished.set()
        sampler.join()

    def drain(self) -> None:
        """Until the node's queues are empty, Orthanc's routing jobs all done and nothing has arrived for 20 s, or
    DRAIN_SECONDS.  While routing jobs wait for a retry, a non-knee goes to Orthanc every 5 s: Debian's Orthanc
    (1.10) runs the routing script's retries only on an event, such as a stored instance."""
        deadline = time.monotonic() + DRAIN_SECONDS
        while time.monotonic() < deadline:
            queues = self.setup.status()["queues"]
            busy = any(queue["queued"] + queue["leased"] for queue in queues.values())
            # Failure: Orthanc's routing script resends it after a backoff.
            routing = [job["State"] for job in self.setup.orthanc.get("/jobs?expand")
                       if job["State"] in ("Pending", "Running", "Failure")]
            last = self.setup.destination.arrivals[-1][0] if self.setup.destination.arrivals else 0.0
            if not busy and not routing and time.monotonic() - last > 20:
                return
            if routing:
                self.upload(self.keep(self.inputs.fresh("orthanc", ("non-knee",))))
            time.sleep(5)
        say(f"still busy after draining {DRAIN_SECONDS:.0f} s")


# --- reconciliation -----------------------------------------------------------------------------------------------


def node_events(nodes: list[NodeProcess], name: str) -> Iterator[dict[str, Any]]:
    for node in nodes:
        yield from node.events(name)


def orthanc_acknowledged(orthanc: LocalOrthanc) -> dict[str, str]:
    """Orthanc instance id -> the state of its routing job to the node (Success: the node acknowledged it)."""
    states = {}
    for job in orthanc.get("/jobs?expand"):
        if job["Type"] == "DicomModalityStore" and job["Content"].get("RemoteAet") == NODE_AE:
            for instance in job["Content"].get("ParentResources", []):
                states[instance] = "Success" if states.get(instance) == "Success" else job["State"]
    return states


def result_uids(event: dict[str, Any]) -> set[str]:
    """The SOP Instance UIDs of the results a `processed` event wrote (files `sr-UID.dcm`, ...)."""
    return {Path(path).stem.split("-", 1)[1] for path in event.get("files", [])}


def reconcile(soak: Soak) -> dict[str, Any]:
    setup = soak.setup
    jobs = orthanc_acknowledged(setup.orthanc)
    unrouted = {}  # what Orthanc did not hand to the node, and why
    for record in soak.records:
        if record.sender == "orthanc":
            state = jobs.get(record.orthanc_id)
            record.acknowledged = state == "Success"
            if not record.orthanc_id:
                unrouted[record.uid] = "not stored by Orthanc"
            elif state is None:
                unrouted[record.uid] = "not routed by Orthanc"
    received = Counter(e["sop_instance_uid"] for e in node_events(setup.nodes, "received"))
    passed_over = {e["sop_instance_uid"]: e["reason"] for e in node_events(setup.nodes, "received")
                   if not e["selected"]}
    processed = {e["sop_instance_uid"]: result_uids(e) for e in node_events(setup.nodes, "processed")}
    status = setup.status()
    dead = {(letter["queue"], letter["key"].split("@")[0]): letter["error"] for letter in status["dead_letters"]}
    arrivals = [uid for _, uid in setup.destination.arrivals]
    by_study: dict[str, set[str]] = defaultdict(set)
    for uid, study in setup.destination.study.items():
        by_study[study].add(uid)
    source_of = {result: source for source, results in processed.items() for result in results}

    outcomes: dict[str, Counter[str]] = defaultdict(Counter)
    lost, not_kept, reasons = [], [], Counter()
    for record in soak.records:
        if not record.acknowledged:
            outcomes[record.kind][unrouted.get(record.uid, "not acknowledged")] += 1
            continue
        if not received[record.uid]:
            not_kept.append(record)
        results = processed.get(record.uid)
        if results is not None and results <= by_study[record.study]:
            outcome = f"delivered ({len(results)} results)"
        elif ("analyze", record.uid) in dead:
            outcome = "dead letter (analysis)"
            reasons[dead["analyze", record.uid][:80]] += 1
        elif results and all(("deliver", uid) in dead or uid in by_study[record.study] for uid in results):
            outcome = "dead letter (delivery)"
            reasons.update(dead["deliver", uid][:80] for uid in results if ("deliver", uid) in dead)
        elif record.uid in passed_over:
            outcome = f"passed over ({passed_over[record.uid]})"
        else:
            outcome = "LOST"
            lost.append(record)
        outcomes[record.kind][outcome] += 1

    # A result delivered again: after the node's own recovery, or because its source was C-STOREd again.
    again = Counter(arrivals) - Counter(set(arrivals))
    resent_sources = {uid for uid, count in received.items() if count > 1}
    by_node = sum(count for uid, count in again.items() if source_of.get(uid) not in resent_sources)
    kills = sum(fault.kind.startswith("kill") for fault in soak.faults)

    answers = [(record, answer) for record in soak.records for answer in record.answers
               if record.sender in ("storescu", "knee-node send", "warm-up")]
    within = lambda at, spans: any(start <= at <= end for start, end in spans)  # noqa: E731
    unanswered = [(r, a) for r, a in answers if a.sent and a.status is None]
    unexplained = [(r, a) for r, a in unanswered if not within(a.at, soak.down)]
    while_full = Counter("no answer" if a.status is None else f"0x{a.status:04X}"
                         for _, a in answers if a.sent and within(a.at, soak.full))

    depths = [s["queue_depth"] for s in soak.samples if "queue_depth" in s]
    memory = memory_trends(soak.samples)
    recoveries = [recovery(fault, setup.destination.arrivals) for fault in soak.faults]
    judged = [m for m in memory if m["judged"]]
    checks = {
        "lost == 0": not lost,
        "acknowledged and not kept == 0": not not_kept,
        f"duplicates by the node ({by_node}) <= kills ({kills})": by_node <= kills,
        f"RSS growth after warm-up < {100 * RSS_GROWTH_LIMIT:g} %": all(m["rss_growth"] < RSS_GROWTH_LIMIT
                                                                       for m in judged),
        f"fds flat after warm-up (fitted growth <= {FD_GROWTH_LIMIT})": all(m["fd_growth"] <= FD_GROWTH_LIMIT
                                                                           for m in judged),
        "every store sent answered, except while the receiver was down": not unexplained,
        f"analysis queue never beyond {QUEUE_BOUND}": max((d["analyze"] for d in depths), default=0) <= QUEUE_BOUND,
    }
    return {
        "inputs": {kind: dict(Counter(r.sender for r in soak.records if r.kind == kind)) for kind in MIX},
        "outcomes": {kind: dict(counts) for kind, counts in outcomes.items()},
        "dead_letter_reasons": dict(reasons.most_common()),
        "acknowledged": sum(r.acknowledged for r in soak.records),
        "answers": dict(Counter("no answer" if a.status is None else f"0x{a.status:04X}"
                                for _, a in answers if a.sent)),
        "not_sent": dict(Counter(re.sub(r"[\d.:]+", "N", a.reason)[:60] for _, a in answers if not a.sent)),
        "orthanc_jobs": dict(Counter(jobs.values())),
        "queues_at_end": status["queues"],  # acknowledged, still unfinished here, are counted lost above
        "lost": [asdict(r) | {"path": str(r.path)} for r in lost],
        "not_kept": [r.uid for r in not_kept],
        "results": {"arrivals": len(arrivals), "distinct": len(set(arrivals)), "again_by_node": by_node,
                    "again_after_a_resend": sum(again.values()) - by_node},
        "faults": [asdict(f) | {"recovery_s": r} for f, r in zip(soak.faults, recoveries, strict=True)],
        "faults_by_kind": dict(Counter(f"{f.kind} {f.target}".strip() for f in soak.faults)),
        "longest_recovery_s": max((r for r in recoveries if r is not None), default=None),
        "unanswered": {"total": len(unanswered), "outside_receiver_down": [
            {"sender": r.sender, "kind": r.kind, "reason": a.reason} for r, a in unexplained]},
        "answers_while_data_dir_full": dict(while_full),
        "queue_depth_max": {queue: max((d[queue] for d in depths), default=0) for queue in ("analyze", "deliver")},
        "memory": memory,
        "samples": [sample | {"at": round(sample["at"] - soak.feed_started, 1)} for sample in soak.samples],
        "checks": checks,
        "passed": all(checks.values()),
    }


def recovery(fault: Fault, arrivals: list[tuple[float, str]]) -> float | None:
    """Seconds from the fault undone (a kill: the kill) to the first result arriving at the destination after it."""
    after = next((at for at, _ in arrivals if at > fault.restored), None)
    return round(after - fault.restored, 1) if after is not None else None


def memory_trends(samples: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per node process: RSS first and at most, and the least-squares slopes of RSS and fds after WARMUP_SECONDS of
    its life; judged when at least JUDGED_SECONDS of samples follow the warm-up."""
    by_pid: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for sample in samples:
        if "pid" in sample:
            by_pid[sample["pid"]].append(sample)
    trends = []
    for pid, rows in by_pid.items():
        born = rows[0]["at"]
        settled = [row for row in rows if row["at"] - born >= WARMUP_SECONDS]
        trend: dict[str, Any] = {"role": rows[0]["role"], "pid": pid, "lived_s": round(rows[-1]["at"] - born),
                                 "rss_mb_first": round(rows[0]["rss_mb"]), "rss_mb_max": round(max(
                                     row["rss_mb"] for row in rows)), "judged": False}
        if len(settled) >= 3 and settled[-1]["at"] - settled[0]["at"] >= JUDGED_SECONDS:
            minutes = np.array([row["at"] for row in settled]) / 60
            span = minutes[-1] - minutes[0]
            rss_slope, rss_start = np.polyfit(minutes - minutes[0], [row["rss_mb"] for row in settled], 1)
            fd_slope, _ = np.polyfit(minutes - minutes[0], [row["fds"] for row in settled], 1)
            trend |= {"judged": True, "settled_s": round(60 * span), "rss_mb_per_min": round(float(rss_slope), 3),
                      "rss_growth": round(float(rss_slope * span / rss_start), 4),
                      "fds_per_min": round(float(fd_slope), 3), "fd_growth": round(float(fd_slope * span), 1),
                      "fds_range": [min(row["fds"] for row in settled), max(row["fds"] for row in settled)]}
        trends.append(trend)
    return trends


# --- entry points -------------------------------------------------------------------------------------------------


def soak(minutes: float, work: Path, seed: int = 0, scale_out: bool = False) -> dict[str, Any]:
    """Run the soak in `work` (mounts a tmpfs: needs root); returns the report."""
    model = random_model(work / "model", input_size=64, seed=seed)
    say("making inputs")
    inputs = Inputs(work / "inputs", seed)
    setup = Setup(work, model, scale_out)
    report: dict[str, Any] = {"environment": environment(model, "random weights, 64 px (the soak loads the node, "
                                                                "not the grading)"),
                              "settings": {"minutes": minutes, "seed": seed, "scale_out": scale_out,
                                           "queue_bound": QUEUE_BOUND, "tmpfs_mb": TMPFS_MB,
                                           "feed_factor": FEED_FACTOR, "mix": MIX}}
    try:
        setup.start()
        run = Soak(setup, inputs, seed, minutes)
        run.run()
        report["throughput_per_min"] = round(60 * run.rate / FEED_FACTOR, 1)
        report["feed_per_min"] = round(60 * run.rate, 1)
        report["seconds"] = {"feed": round(run.fed - run.feed_started), "drain": round(time.monotonic() - run.fed)}
        report |= reconcile(run)
    finally:
        setup.stop()
    report["environment"]["load_average_end"] = os.getloadavg()
    return report


def render(report: dict[str, Any]) -> str:
    env, results = report["environment"], report["results"]
    senders = sorted({sender for counts in report["inputs"].values() for sender in counts})
    outcomes = sorted({outcome for counts in report["outcomes"].values() for outcome in counts})
    short = [f"(lived under {WARMUP_SECONDS + JUDGED_SECONDS:.0f} s)"] * 5
    memory = [[m["role"], m["pid"], m["lived_s"], m["rss_mb_first"], m["rss_mb_max"],
               *([m["rss_mb_per_min"], f"{100 * m['rss_growth']:.1f} %", m["fds_per_min"], m["fd_growth"],
                  f"{m['fds_range'][0]}-{m['fds_range'][1]}"] if m["judged"] else short)]
              for m in report["memory"]]
    parts = [
        f"### Soak: {report['settings']['minutes']:g} min, seed {report['settings']['seed']}, "
        f"{'scale-out' if report['settings']['scale_out'] else 'embedded node'}, {env['cores']} cores, load "
        f"{env['load_average_start'][0]:.1f} -> {env['load_average_end'][0]:.1f}, commit {env['commit']}",
        f"Throughput at warm-up {report['throughput_per_min']} radiographs/min; fed {report['feed_per_min']} "
        f"instances/min for {report['seconds']['feed']} s; drained in {report['seconds']['drain']} s.",
        table(["input", *senders, "total"], [[kind, *[counts.get(s, 0) for s in senders], sum(counts.values())]
                                             for kind, counts in report["inputs"].items()]),
        table(["input", *outcomes], [[kind, *[counts.get(o, 0) for o in outcomes]]
                                     for kind, counts in report["outcomes"].items()]),
        table(["fault", "count"], list(report["faults_by_kind"].items())),
        table(["figure", "value"], [
            ["acknowledged", report["acknowledged"]], ["lost", len(report["lost"])],
            ["acknowledged, not kept", len(report["not_kept"])],
            ["C-STORE answers (direct senders)", report["answers"]],
            ["Orthanc routing jobs", report["orthanc_jobs"]],
            ["node queues at the end", report["queues_at_end"]],
            ["results arrived / distinct", f"{results['arrivals']} / {results['distinct']}"],
            ["delivered again: by the node's recovery / after a resend", f"{results['again_by_node']} / "
                                                                          f"{results['again_after_a_resend']}"],
            ["stores without an answer (all while the receiver was down)",
             f"{report['unanswered']['total']} ({len(report['unanswered']['outside_receiver_down'])} outside)"],
            ["answers while data_dir was full", report["answers_while_data_dir_full"]],
            ["queue depth max (analyze, deliver)", report["queue_depth_max"]],
            ["longest recovery (s)", report["longest_recovery_s"]],
            ["dead letters by reason", report["dead_letter_reasons"]]]),
        table(["process", "pid", "lived s", "RSS MB first", "RSS MB max", "RSS MB/min", "RSS growth", "fds/min",
               "fd growth", "fds"], memory),
        table(["check", "met"], [[name, "yes" if met else "NO"] for name, met in report["checks"].items()]),
    ]
    return "\n\n".join(parts) + "\n"


def say(message: str) -> None:
    print(f"soak: {message}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=30.0, help="how long to feed (then it drains)")
    parser.add_argument("--seed", type=int, default=0, help="inputs and fault script")
    parser.add_argument("--scale-out", action="store_true", help="receiver, worker, dispatcher on redis-server")
    parser.add_argument("--json", type=Path, default=REPO / "results" / "soak.json", help="where to write JSON")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="knee-soak-") as folder:
        report = soak(args.minutes, Path(folder), args.seed, args.scale_out)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    print(render(report))
    say(f"JSON written to {args.json}")
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
