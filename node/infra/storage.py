"""Files that must survive a crash: written to a temporary name, fsynced, renamed, and the folder fsynced."""

from __future__ import annotations

import errno
import os
import re
import tempfile
from pathlib import Path

UID_PATTERN = re.compile(r"^[0-9]+(\.[0-9]+)*$")


def is_valid_uid(value: str) -> bool:
    """A DICOM UID (PS3.5 9.1): digits and dots, at most 64 characters; safe as a file name."""
    return len(value) <= 64 and UID_PATTERN.match(value) is not None and ".." not in value


def synced_temporary(path: Path, data: bytes) -> Path:
    """`data` in a new temporary file beside `path` (mode 0600: patient data), fsynced; a disk that fills up
    midway keeps no partial file.  Its name is unique even among writers of the same path on shared storage."""
    descriptor, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    temporary = Path(name)
    try:
        with open(descriptor, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return temporary


def write_durably(path: Path, data: bytes) -> None:
    """Atomically replace `path` with `data`; once this returns, the file survives power loss."""
    temporary = synced_temporary(path, data)
    try:
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    sync_folder(path.parent)


def create_durably(path: Path, data: bytes) -> bool:
    """Like write_durably, but only where `path` does not exist yet (False then): of several processes creating
    the same file at once, exactly one succeeds, and no reader sees it half written."""
    temporary = synced_temporary(path, data)
    try:
        os.link(temporary, path)
    except FileExistsError:
        return False
    finally:
        temporary.unlink()
    sync_folder(path.parent)
    return True


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
