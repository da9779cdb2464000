"""Files that must survive a crash: written to a temporary name, fsynced, renamed, and the folder fsynced."""

from __future__ import annotations

import errno
import os
import re
import socket
from pathlib import Path

UID_PATTERN = re.compile(r"^[0-9]+(\.[0-9]+)*$")


def is_valid_uid(value: str) -> bool:
    """A DICOM UID (PS3.5 9.1): digits and dots, at most 64 characters; safe as a file name."""
    return len(value) <= 64 and UID_PATTERN.match(value) is not None and ".." not in value


def write_durably(path: Path, data: bytes) -> None:
    """Atomically replace `path` with `data`; once this returns, the file survives power loss."""
    # Host and pid: on shared storage two receivers (each pid 1 in its container) may write the same instance.
    temporary = path.with_name(f".{path.name}.{socket.gethostname()}.{os.getpid()}.tmp")
    try:
        with open(temporary, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:  # a disk that filled up midway keeps no partial file (it would stay full)
        temporary.unlink(missing_ok=True)
        raise
    sync_folder(path.parent)


def move_durably(source: Path, path: Path) -> None:
    """Durably give the file `source` the name `path` (replacing it); a copy across file systems."""
    with open(source, "rb") as handle:
        os.fsync(handle.fileno())
    try:
        os.replace(source, path)
    except OSError as error:
        if error.errno != errno.EXDEV:
            raise
        write_durably(path, source.read_bytes())
        source.unlink()
        return
    sync_folder(path.parent)


def link_durably(source: Path, target: Path) -> None:
    """Another durable name for `source` (a hard link, no copy)."""
    target.unlink(missing_ok=True)
    os.link(source, target)
    sync_folder(target.parent)


def sync_folder(folder: Path) -> None:
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
