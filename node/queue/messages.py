"""The typed messages that flow between the stages through the queue, serialised (JSON) at the queue only.

Each message type belongs to one topic: ANALYZE carries a spooled radiograph to the worker, DELIVER one result
file to one destination.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from typing import ClassVar

ANALYZE = "analyze"
DELIVER = "deliver"


@dataclass(frozen=True)
class AnalyzeJob:
    """A received radiograph in the spool, waiting for the worker."""

    topic: ClassVar[str] = ANALYZE
    path: str  # the instance as received
    patient: str  # keyed pseudonym (node.infra.logs), for logs and the audit trail
    received_at: float  # epoch seconds, for the receive-to-result latency


@dataclass(frozen=True)
class DeliverJob:
    """One result file (SC or SR) for one destination."""

    topic: ClassVar[str] = DELIVER
    path: str  # the file in that destination's outbox folder
    destination: str  # its AE title
    sop_instance_uid: str  # of the result
    source: str  # SOP Instance UID of the radiograph it is the result of
    result_at: float  # epoch seconds, for the result-to-delivered latency


Message = AnalyzeJob | DeliverJob
MESSAGE_TYPES: dict[str, type[AnalyzeJob] | type[DeliverJob]] = {ANALYZE: AnalyzeJob, DELIVER: DeliverJob}


def encode(message: Message) -> str:
    return json.dumps(asdict(message))


def decode(topic: str, text: str) -> Message:
    """The message of a stored job; fields a newer or older release wrote and this one lacks are ignored."""
    kind = MESSAGE_TYPES[topic]
    raw = json.loads(text)
    return kind(**{f.name: raw[f.name] for f in fields(kind) if f.name in raw})
