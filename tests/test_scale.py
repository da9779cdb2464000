"""Scale-out: `knee-node serve --role ...` as separate processes on a real redis-server, sharing one spool.

One receiver, two workers and a dispatcher; one worker is killed with SIGKILL while it holds a batch, and every
acknowledged radiograph still gives exactly one SR, SC and SEG at the destination.  redis-server itself killed
with SIGKILL and restarted: the results wait about as long as the outage, not a lease.
"""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml
from pydicom.uid import ExplicitVRLittleEndian

from node.config import load_config
from node.queue import ANALYZE
from node.queue.redis import GROUP, PREFIX
from tests.helpers import NodeProcess, RedisServer, StoreScp, random_model, wait_until
from tests.test_serve import pynetdicom_send
from tools import KNEE_KL, REPO
from tools.synthetic import write_composites

COUNT = 16
OUTAGE_SECONDS = 5


@pytest.fixture(scope="module")
def radiographs(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    if not (KNEE_KL / "val").is_dir():
        pytest.skip(f"knee-kl crops not found at {KNEE_KL}")
    folder = tmp_path_factory.mktemp("knees")
    records = write_composites(KNEE_KL / "val", folder, COUNT, bilateral_fraction=0.3,
                               syntaxes=[ExplicitVRLittleEndian], seed=5, spacing_mm=0.4)
    return [folder / record["file"] for record in records]


def held_by(server: RedisServer, pid: int) -> list[str]:
    """SOP Instance UIDs of the analysis jobs that the worker process `pid` holds (its consumer's pending entries)."""
    stream = f"{PREFIX}{ANALYZE}:stream"
    keys = []
    for consumer in server.client.xinfo_consumers(stream, GROUP):
        if f":{pid}:" in consumer["name"] and consumer["pending"]:
            for lease in server.client.xpending_range(stream, GROUP, "-", "+", 100, consumer["name"]):
                ((_, entry),) = server.client.xrange(stream, lease["message_id"], lease["message_id"])
                keys.append(server.client.hget(f"{PREFIX}job:{entry['job']}", "key"))
    return keys


def start_roles(tmp_path: Path, redis_url: str, destination: StoreScp) -> list[NodeProcess]:
    """A receiver, two workers and a dispatcher on the broker, sharing one data_dir; started."""
    model = random_model(tmp_path / "model", input_size=64)
    shared = {"data_dir": str(tmp_path / "shared"),
              "queue": {"backend": "redis", "redis_url": redis_url},
              "worker": {"batch_size": 4, "max_wait_ms": 100},
              "destinations": [{"ae_title": "DEST", "host": "127.0.0.1", "port": destination.port}]}
    nodes = [NodeProcess(tmp_path / name, model, role=role, **shared)
             for name, role in (("receiver", "receiver"), ("worker-1", "worker"), ("worker-2", "worker"),
                                ("dispatcher", "dispatcher"))]
    with ThreadPoolExecutor(len(nodes)) as pool:
        list(pool.map(NodeProcess.start, nodes))
    return nodes


def test_kill_9_of_one_of_two_workers_mid_batch_loses_nothing_and_duplicates_nothing(
        radiographs: list[Path], redis_server: RedisServer, redis_url: str, tmp_path: Path) -> None:
    destination = StoreScp(tmp_path / "pacs").start()
    receiver, doomed, survivor, dispatcher = nodes = start_roles(tmp_path, redis_url, destination)
    try:
        assert pynetdicom_send(radiographs, receiver.scp_port) == [0] * COUNT
        deadline = time.monotonic() + 60
        assert doomed.process is not None
        while not (held := held_by(redis_server, doomed.process.pid)) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert held, "the worker never held a batch"
        doomed.kill()
        assert destination.wait_for(3 * COUNT, timeout=120), f"got {len(destination.received)} of {3 * COUNT}"
        status = json.loads(receiver.admin("status", "--json").stdout)
    finally:
        with ThreadPoolExecutor(len(nodes)) as pool:
            exits = list(pool.map(NodeProcess.stop, (receiver, survivor, dispatcher)))
        destination.stop()
    assert exits == [0, 0, 0]
    uids = [uid for _, uid in destination.received]
    assert len(uids) == 3 * COUNT and len(set(uids)) == 3 * COUNT
    assert all(queue == {"queued": 0, "leased": 0, "dead": 0, "oldest_seconds": None}
               for queue in status["queues"].values()), status
    assert status["dead_letters"] == []
    assert set(held) <= {event["sop_instance_uid"] for event in survivor.events("processed")}
    assert survivor.events("stopped") and dispatcher.events("stopped")


def test_kill_9_of_the_broker_under_load_delays_results_by_about_the_outage(radiographs: list[Path],
                                                                             tmp_path: Path) -> None:
    """redis-server (append-only, fsync always) killed while workers hold batches, restarted OUTAGE_SECONDS later:
    every result arrives within 30 s of its return, although the leases the live processes held run 300 s."""
    server = RedisServer(tmp_path / "redis", durable=True)
    destination = StoreScp(tmp_path / "pacs").start()
    nodes = start_roles(tmp_path, server.url, destination)
    receiver, workers = nodes[0], nodes[1:3]
    try:
        assert pynetdicom_send(radiographs, receiver.scp_port) == [0] * COUNT
        pids = [worker.process.pid for worker in workers if worker.process is not None]
        wait_until(lambda: any(held_by(server, pid) for pid in pids), timeout=60)
        held = sum(len(held_by(server, pid)) for pid in pids)
        server.kill()
        time.sleep(OUTAGE_SECONDS)  # the fault itself: the broker stays away this long
        server.start()
        returned = time.monotonic()
        assert destination.wait_for(3 * COUNT, timeout=30), f"got {len(destination.received)} of {3 * COUNT}"
        print(f"broker killed with {held} analyses held by live workers, back after {OUTAGE_SECONDS} s; all "
              f"{3 * COUNT} results {time.monotonic() - returned:.1f} s after its return, "
              f"{len(destination.received)} arrivals")
        status = json.loads(receiver.admin("status", "--json").stdout)
    finally:
        with ThreadPoolExecutor(len(nodes)) as pool:
            exits = list(pool.map(NodeProcess.stop, nodes))
        destination.stop()
        server.stop()
    assert exits == [0] * len(nodes)
    assert len({uid for _, uid in destination.received}) == 3 * COUNT
    assert all(queue == {"queued": 0, "leased": 0, "dead": 0, "oldest_seconds": None}
               for queue in status["queues"].values()), status


def test_the_scale_profile_runs_each_role_on_the_broker_with_one_shared_volume() -> None:
    services = yaml.safe_load((REPO / "docker-compose.yml").read_text())["services"]
    nodes = {name: service for name, service in services.items()
             if "scale" in service.get("profiles", []) and "--role" in service.get("command", [])}
    roles = sorted(service["command"][service["command"].index("--role") + 1] for service in nodes.values())
    assert roles == ["dispatcher", "receiver", "worker", "worker"]
    assert "scale" in services["redis"]["profiles"]
    for service in nodes.values():
        config = load_config(None, service["environment"])
        assert (config.queue.backend, config.queue.redis_url) == ("redis", "redis://redis:6379/0")
        assert service["volumes"] == ["knee-node-shared:/data"]  # data_dir (the image's): spool and outbox
