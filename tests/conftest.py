"""Shared fixtures: a randomly initialised model folder, knee-kl crops, a redis-server."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from node.training.data import CropSet, load_crops
from tests.helpers import RedisServer, random_model
from tools import KNEE_KL


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return random_model(tmp_path_factory.mktemp("model"))


@pytest.fixture(scope="session")
def val_crops() -> CropSet:
    if not (KNEE_KL / "val" / "labels.csv").is_file():
        pytest.skip(f"knee-kl crops not found at {KNEE_KL}")
    return load_crops(KNEE_KL / "val")


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """The session's redis-server, emptied for this test."""
    redis_server.client.flushall()
    return redis_server.url
