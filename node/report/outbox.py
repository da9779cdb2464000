"""The outbox: each result file written durably once, into one folder per destination (or one results folder).

A result for several destinations is one file hard-linked into each destination's folder: each delivery removes
its own link, and the file goes with the last.  `knee-node analyze` writes into its --out folder the same way.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

from pydicom import Dataset

from node.config import Destination
from node.infra.storage import link_durably, write_durably


def file_name(output: Dataset) -> str:
    """`sc-UID.dcm` or `sr-UID.dcm`: unique, and telling which object a file holds."""
    kind = "sr" if output.Modality == "SR" else "sc"
    return f"{kind}-{output.SOPInstanceUID}.dcm"


def encode(dataset: Dataset) -> bytes:
    """The dataset as a DICOM Part 10 file."""
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def destination_folder(data_dir: Path, destination: Destination) -> Path:
    """One folder per destination; the AE title is sanitised since it becomes a file name."""
    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in destination.ae_title)
    return data_dir / "outbox" / safe


class Outbox:
    """Writes result files into each of `folders`, which it creates."""

    def __init__(self, folders: Sequence[Path]) -> None:
        if not folders:
            raise ValueError("an outbox needs at least one folder")
        self.folders = tuple(folders)
        for folder in self.folders:
            folder.mkdir(parents=True, exist_ok=True)

    @classmethod
    def of_node(cls, data_dir: Path, destinations: Sequence[Destination]) -> Outbox:
        """The node's: a folder per destination, in their order; data_dir/results when there is none."""
        return cls([destination_folder(data_dir, d) for d in destinations] or [data_dir / "results"])

    def write(self, dataset: Dataset) -> list[Path]:
        """The file's path in each folder, in the folders' order; all durable when this returns."""
        paths = [folder / file_name(dataset) for folder in self.folders]
        write_durably(paths[0], encode(dataset))
        for path in paths[1:]:
            link_durably(paths[0], path)
        return paths
