"""What the dispatcher asks of a destination's sender: one per destination kind (node.scu.CStoreSender for DIMSE,
node.dicomweb.StowSender for STOW-RS), each saying for every result file whether the destination keeps it.

The queue's guarantees (durable outbox, retries with backoff, dead-letter) stay with the dispatcher: a sender only
sends and judges the answer.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol


@dataclass(frozen=True)
class Outcome:
    """What became of one result file: delivered, or not and why."""

    delivered: bool
    detail: str  # delivered: the destination's status; else the reason, as dead letters and logs show it
    permanent: bool = False  # not delivered and retrying cannot help: dead-letter at once


class Sender(Protocol):
    def send(self, paths: Sequence[Path]) -> Iterator[Outcome]:
        """One Outcome per path, in order, each as soon as it is known; the caller may stop early (shutdown), and
        the paths it did not take an Outcome for count as not tried."""

    def close(self) -> None:
        """Let go of any connection held (idle, or stopping); the next send opens a new one."""
