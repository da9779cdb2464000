"""The audit trail: one JSON line per received instance, per result and per delivery.

It answers who sent what, what the node concluded with which model, and where it went.  Patients appear only as
pseudonyms (a keyed hash of the Patient ID, as in the logs); UIDs stay, since tracing an object needs them.  One
file per host under data_dir/audit/, appended with a single write per line, so the roles of a node on one host can
share it.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from pathlib import Path
from typing import Any


class AuditLog:
    def __init__(self, data_dir: Path) -> None:
        folder = data_dir / "audit"
        folder.mkdir(parents=True, exist_ok=True)
        self.path = folder / f"{socket.gethostname()}.jsonl"
        self._descriptor = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        self._lock = threading.Lock()

    def record(self, event: str, **fields: Any) -> None:
        line = json.dumps({"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "event": event, **fields},
                          default=str)
        with self._lock:
            os.write(self._descriptor, (line + "\n").encode())

    def close(self) -> None:
        with self._lock:
            os.close(self._descriptor)
