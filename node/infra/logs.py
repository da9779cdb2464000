"""Structured logs: one JSON object per line and per event; patients appear only as a keyed pseudonym."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import secrets
import sys
import time
import warnings
from pathlib import Path
from typing import Any

from pydicom import Dataset

from node.infra.storage import create_durably

LOGGER = logging.getLogger("knee_node")
PSEUDONYM_KEY_FILE = "pseudonym.key"


class JsonLines(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {"time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
                 "level": record.levelname, "event": record.getMessage()}
        entry.update(getattr(record, "fields", {}))
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def setup_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonLines())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # pynetdicom's INFO lines are per-PDU detail; its warnings (network trouble) are worth keeping.
    logging.getLogger("pynetdicom").setLevel(max(logging.WARNING, logging.getLevelName(level)))


def quiet_libraries() -> None:
    """pydicom's and highdicom's warnings about odd input values are not shown: nothing here acts on them, and
    they may quote patient data."""
    warnings.filterwarnings("ignore", category=UserWarning, module=r"(pydicom|highdicom)(\.|$)")
    for name in ("pydicom", "highdicom"):
        logging.getLogger(name).setLevel(logging.ERROR)


def log_event(event: str, level: int = logging.INFO, traceback: bool = False, **fields: Any) -> None:
    """One line for `event`; `traceback=True` (inside an except block) adds the exception's traceback."""
    LOGGER.log(level, event, exc_info=traceback, extra={"fields": fields})


def describe(error: BaseException) -> str:
    """An exception as one line of a reason (logs, dead letters, alerts): its type and message."""
    return " ".join(f"{type(error).__name__}: {error}".split())


def pseudonym_key(data_dir: Path) -> bytes:
    """The node's secret for pseudonyms, made at first start in data_dir (shared by the processes using it)."""
    path = data_dir / PSEUDONYM_KEY_FILE
    create_durably(path, secrets.token_bytes(32))  # of processes starting together, one makes it
    return path.read_bytes()


def pseudonym(value: object, key: bytes) -> str:
    """A short, stable stand-in for an identifier: 12 hex digits of HMAC-SHA-256 under the node's secret.  Keyed,
    so that a short Patient ID cannot be found again by hashing every candidate."""
    return hmac.new(key, str(value).encode(), hashlib.sha256).hexdigest()[:12]


def instance_fields(header: Dataset, key: bytes) -> dict[str, str]:
    """What a log line may say about an instance: UIDs, modality, and the patient ID only as a pseudonym."""
    return {"sop_instance_uid": str(header.get("SOPInstanceUID", "")), "modality": str(header.get("Modality", "")),
            "patient": pseudonym(header.get("PatientID", ""), key)}
