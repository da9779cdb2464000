"""Deterministic UIDs: the same source and model version always give the same output objects."""

from __future__ import annotations

import uuid

from pydicom.uid import UID

# Name-based UUIDs (RFC 4122 version 5) in this namespace, written as 2.25.<integer> (PS3.5 B.2).
NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "https://github.com/knee-node/knee-node")


def derived_uid(*parts: str) -> UID:
    return UID(f"2.25.{uuid.uuid5(NAMESPACE, '|'.join(parts)).int}")
