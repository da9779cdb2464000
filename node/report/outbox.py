"""The outbox: each result file written durably once, into one folder per destination (or one results folder).

A result for several destinations is one file hard-linked into the folder of each destination that takes its kind
of object (Destination.objects): each delivery removes its own link, and the file goes with the last.
`knee-node analyze` writes into its --out folder the same way.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

from pydicom import Dataset

from node.config import RESULT_OBJECTS, Destination, ResultObject
from node.infra.storage import link_durably, write_durably


def object_kind(output: Dataset) -> ResultObject:
    return {"SR": "sr", "SEG": "seg"}.get(output.Modality, "sc")


def file_name(output: Dataset) -> str:
    """`sr-UID.dcm`, `sc-UID.dcm` or `seg-UID.dcm`: unique, and telling which object a file holds."""
    return f"{object_kind(output)}-{output.SOPInstanceUID}.dcm"


def encode(dataset: Dataset) -> bytes:
    """The dataset as a DICOM Part 10 file."""
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def destination_folder(data_dir: Path, destination: Destination) -> Path:
    """One folder per destination; its name is sanitised since it becomes a file name."""
    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in destination.name)
    return data_dir / "outbox" / safe


class Outbox:
    """Writes result files into each of `folders` that takes their kind (`objects`, by default all); creates them."""

    def __init__(self, folders: Sequence[Path], objects: Sequence[Sequence[ResultObject]] | None = None) -> None:
        if not folders:
            raise ValueError("an outbox needs at least one folder")
        self.folders = tuple(folders)
        self.objects = tuple(objects) if objects is not None else (RESULT_OBJECTS,) * len(self.folders)
        if len(self.objects) != len(self.folders):
            raise ValueError("one list of objects per folder")
        for folder in self.folders:
            folder.mkdir(parents=True, exist_ok=True)

    @classmethod
    def of_node(cls, data_dir: Path, destinations: Sequence[Destination]) -> Outbox:
        """The node's: a folder per destination, in their order; data_dir/results when there is none."""
        if not destinations:
            return cls([data_dir / "results"])
        return cls([destination_folder(data_dir, d) for d in destinations], [d.objects for d in destinations])

    def takes(self, dataset: Dataset) -> list[int]:
        """The indices of the folders (the node's: of its destinations) that take this kind of object."""
        kind = object_kind(dataset)
        return [index for index, objects in enumerate(self.objects) if kind in objects]

    def write(self, dataset: Dataset) -> list[Path]:
        """The file's path in each folder that takes it (see takes), in order; all durable when this returns."""
        paths = [self.folders[index] / file_name(dataset) for index in self.takes(dataset)]
        if paths:
            write_durably(paths[0], encode(dataset))
        for path in paths[1:]:
            link_durably(paths[0], path)
        return paths
