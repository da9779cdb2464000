"""Durable files: atomic replacement, creation by exactly one of several writers, no temporary left behind."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from node.infra.storage import create_durably, is_valid_uid, write_durably


def test_write_durably_replaces_the_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    path = tmp_path / "result.dcm"
    write_durably(path, b"first")
    write_durably(path, b"second")
    assert path.read_bytes() == b"second"
    assert [p.name for p in tmp_path.iterdir()] == ["result.dcm"]


def test_create_durably_succeeds_once_among_concurrent_writers(tmp_path: Path) -> None:
    path = tmp_path / "secret"
    with ThreadPoolExecutor(8) as pool:
        created = list(pool.map(lambda n: create_durably(path, bytes([n]) * 32), range(8)))
    assert created.count(True) == 1
    assert path.read_bytes() == bytes([created.index(True)]) * 32
    assert path.stat().st_mode & 0o777 == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["secret"]


def test_only_uids_become_file_names() -> None:
    assert is_valid_uid("1.2.840.10008.5.1.4.1.1.1")
    assert not any(map(is_valid_uid, ["", "../../etc/passwd", "1..2", "1.2/3", "1." * 40]))
