"""Helpers shared by the tests: paths, a randomly initialised model folder, external tools."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis
import torch
import yaml
from pynetdicom import AE, AllStoragePresentationContexts, evt

from node.analysis.familiarity import Familiarity
from node.analysis.model import KneeGrader, ModelSpec, save_model
from node.config import Destination
from node.training.data import KNEE_KL_FIELD_MM
from tools.orthanc import free_port


def random_model(folder: Path, input_size: int = 224, seed: int = 0) -> Path:
    """A model folder with randomly initialised weights: the real format, meaningless grades."""
    torch.manual_seed(seed)
    spec = ModelSpec(name="test-random", version="0.0.0-test", input_size=input_size,
                     class_names=("KL0", "KL1", "KL2", "KL3", "KL4"), temperature=1.0, field_mm=KNEE_KL_FIELD_MM,
                     attention_threshold=0.2, confidence_threshold=0.3, familiarity_threshold=1e9)
    # Random weights have no training features: an identity metric and a threshold nothing reaches.
    module = KneeGrader()
    channels = module.classifier.in_features
    save_model(module, spec, Familiarity(np.zeros((5, channels), np.float32), np.eye(channels, dtype=np.float32)),
               folder)
    return folder


def memory_mb(pid: int, field: str) -> float:
    """A memory figure of the live process `pid` from /proc, in MB: VmRSS (resident now) or VmHWM (its peak)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    raise ValueError(f"/proc/{pid}/status has no {field} (the process has exited)")


def wait_until(condition: Callable[[], object], timeout: float) -> None:
    """Poll `condition` until it holds; fail the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def fill(folder: Path) -> Path:
    """A file that takes every free byte of `folder`'s file system."""
    filler = folder / "filler"
    descriptor = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:
        while True:
            os.write(descriptor, b"\0" * 65536)
    except OSError as error:
        assert error.errno == errno.ENOSPC
    finally:
        os.close(descriptor)
    assert os.statvfs(folder).f_bavail == 0
    return filler


def require_tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} not installed (make test installs it)")
    return path


def dciodvfy_errors(path: Path) -> list[str]:
    """The error lines of dicom3tools' validator (`-new`: the current standard); warnings are not errors."""
    result = subprocess.run([require_tool("dciodvfy"), "-new", str(path)], capture_output=True, text=True)
    return [line for line in (result.stdout + result.stderr).splitlines() if line.startswith("Error")]


PIXELMED = Path("/usr/share/java/pixelmed.jar")  # Debian libpixelmed-java
# JDK 17 caps XPath expressions far below what PixelMed's compiled templates need.
UNLIMITED_XPATH = ["-Djdk.xml.xpathExprOpLimit=0", "-Djdk.xml.xpathExprGrpLimit=0", "-Djdk.xml.xpathTotalOpLimit=0"]


def pixelmed_sr_findings(path: Path) -> list[str]:
    """The error and warning lines of PixelMed's DicomSRValidator (IOD, templates, context groups) for an SR."""
    return pixelmed_findings("DicomSRValidator", path)


def pixelmed_iod_errors(path: Path) -> list[str]:
    """The error lines of PixelMed's DicomInstanceValidator (the IOD's modules and attributes) for any object."""
    return [line for line in pixelmed_findings("DicomInstanceValidator", path) if line.startswith("Error")]


def pixelmed_findings(validator: str, path: Path) -> list[str]:
    java = require_tool("java")
    if not PIXELMED.is_file():
        pytest.skip(f"{PIXELMED} not installed (make test installs libpixelmed-java)")
    classpath = f"{PIXELMED}:/usr/share/java/commons-codec.jar"
    result = subprocess.run([java, *UNLIMITED_XPATH, "-cp", classpath, f"com.pixelmed.validate.{validator}",
                             str(path)], capture_output=True, text=True, timeout=300)
    return [line for line in (result.stdout + result.stderr).splitlines() if line.startswith(("Error", "Warning"))]


class StoreScp:
    """A real Storage SCP (pynetdicom) standing in for a PACS: keeps what it receives, answers `status`;
    DICOM TLS with the server context `tls`."""

    def __init__(self, folder: Path, ae_title: str = "DEST", status: int = 0x0000,
                 tls: ssl.SSLContext | None = None) -> None:
        self.folder, self.ae_title, self.status, self.tls = folder, ae_title, status, tls
        self.port = free_port()
        self.received: list[tuple[str, str]] = []  # (SOP Class UID, SOP Instance UID), in arrival order
        self.server: Any = None
        folder.mkdir(parents=True, exist_ok=True)

    def on_store(self, event: evt.Event) -> int:
        if self.status == 0x0000:
            dataset = event.dataset
            dataset.file_meta = event.file_meta
            dataset.save_as(self.folder / f"{dataset.SOPInstanceUID}.dcm", enforce_file_format=True)
            self.received.append((str(dataset.SOPClassUID), str(dataset.SOPInstanceUID)))
        return self.status

    def start(self) -> StoreScp:
        ae = AE(self.ae_title)
        ae.supported_contexts = AllStoragePresentationContexts
        self.server = ae.start_server(("127.0.0.1", self.port), block=False, ssl_context=self.tls,
                                      evt_handlers=[(evt.EVT_C_STORE, self.on_store)])
        return self

    def stop(self) -> None:
        """As a PACS going down: the associations it holds end too (pynetdicom's shutdown leaves them open)."""
        if self.server is not None:
            for association in self.server.active_associations:
                association.abort()
            self.server.shutdown()
            self.server = None

    def wait_for(self, count: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while len(self.received) < count and time.monotonic() < deadline:
            time.sleep(0.2)
        return len(self.received) >= count


class RedisServer:
    """A real redis-server on a free loopback port, its files in `folder`.  `durable`: as the node requires it in
    production (append-only file, fsync always), so that it can be killed and restarted with its data; else no
    persistence."""

    def __init__(self, folder: Path, durable: bool = False) -> None:
        self.folder, self.durable = folder, durable
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        folder.mkdir(parents=True, exist_ok=True)
        self.client = redis.Redis(port=self.port, decode_responses=True)
        self.start()

    def start(self) -> None:
        persistence = ["--appendonly", "yes", "--appendfsync", "always"] if self.durable else ["--appendonly", "no"]
        self.process = subprocess.Popen([require_tool("redis-server"), "--port", str(self.port), "--bind", "127.0.0.1",
                                         "--dir", str(self.folder), "--save", "", *persistence],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while True:
            try:
                self.client.ping()
                return
            except redis.ConnectionError:  # not listening yet, or still loading its append-only file
                if time.monotonic() > deadline or self.process.poll() is not None:
                    raise
                time.sleep(0.05)

    def kill(self) -> None:
        """kill -9: what it acknowledged is in its append-only file (when durable), nothing else is saved."""
        self.process.kill()
        self.process.wait()

    def stop(self) -> None:
        self.client.close()
        self.process.terminate()
        self.process.wait(30)


class NodeProcess:
    """`knee-node serve` in its own process, on free loopback ports, with a config written for the test."""

    def __init__(self, folder: Path, model_dir: Path, role: str = "all", **config: Any) -> None:
        self.folder, self.role = folder, role
        self.scp_port, self.metrics_port = free_port(), free_port()
        settings = {
            "data_dir": str(folder / "data"),
            "log_level": "DEBUG",
            "scp": {"port": self.scp_port, "bind_address": "127.0.0.1",
                    "peers": [{"ae_title": "STORESCU"}, {"ae_title": "ECHOSCU"}, {"ae_title": "TEST_SCU"}]},
            "worker": {"model": str(model_dir), "threads": 1, "max_wait_ms": 100},
            "metrics": {"port": self.metrics_port},
        }
        for section, values in config.items():
            settings[section] = {**settings.get(section, {}), **values} if isinstance(values, dict) else values
        folder.mkdir(parents=True, exist_ok=True)
        self.config = folder / "node.yaml"
        self.config.write_text(yaml.safe_dump(settings))
        self.log = folder / "node.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 120) -> NodeProcess:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen([sys.executable, "-m", "node.cli", "serve", "--config", str(self.config),
                                             "--role", self.role], stdout=log, stderr=log)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"node exited with {self.process.returncode}:\n{self.log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/healthz", timeout=1) as reply:
                    if reply.status == 200:
                        return self
            except OSError:
                time.sleep(0.2)
        raise TimeoutError(f"node not healthy after {timeout} s:\n{self.log.read_text()[-3000:]}")

    def kill(self) -> None:
        """kill -9: no chance to clean up."""
        assert self.process is not None
        self.process.kill()
        self.process.wait()

    def stop(self, timeout: float = 60) -> int:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)

    def events(self, name: str) -> list[dict[str, Any]]:
        lines = [json.loads(line) for line in self.log.read_text().splitlines() if line.startswith("{")]
        return [line for line in lines if line.get("event") == name]

    def metric(self, name: str) -> float:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as reply:
            for line in reply.read().decode().splitlines():
                if line.startswith(name + " ") or line.startswith(name + "{"):
                    return float(line.rsplit(" ", 1)[1])
        return 0.0

    def peer(self) -> Destination:
        return Destination("KNEE_NODE", "127.0.0.1", self.scp_port)

    def admin(self, command: str, *args: str) -> subprocess.CompletedProcess[str]:
        """`knee-node status|requeue` on this node's config."""
        return subprocess.run([sys.executable, "-m", "node.cli", command, "--config", str(self.config), *args],
                              capture_output=True, text=True, timeout=60)
