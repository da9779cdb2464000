"""Prometheus metrics and a health check, served over HTTP (/metrics, /healthz)."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300, 900, 3600)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.received = Counter("knee_node_received", "Instances acknowledged by the Storage SCP",
                                registry=self.registry)
        self.selected = Counter("knee_node_selected", "Received instances queued for grading", registry=self.registry)
        self.processed = Counter("knee_node_processed", "Radiographs analysed, by outcome (ok: graded knees; "
                                 "skipped: no knee graded, reason reported)", ["outcome"], registry=self.registry)
        self.refused = Counter("knee_node_refused_knees", "Knees found but not graded, by refusal (metal: an "
                               "implant over the joint; unfamiliar: unlike the training radiographs)", ["refusal"],
                               registry=self.registry)
        self.sent = Counter("knee_node_sent", "Result objects delivered to a destination", registry=self.registry)
        self.failed = Counter("knee_node_failed", "Failures by stage (receive, analyze, deliver)", ["stage"],
                              registry=self.registry)
        self.queue_depth = Gauge("knee_node_queue_depth", "Unfinished jobs by queue", ["queue"],
                                 registry=self.registry)
        self.dead_letters = Gauge("knee_node_dead_letters", "Jobs in dead-letter by queue (`knee-node status`: "
                                  "their reasons; `knee-node requeue`: back to the queue)", ["queue"],
                                  registry=self.registry)
        self.oldest = Gauge("knee_node_queue_oldest_seconds", "Age of the oldest unfinished job by queue (0: none); "
                            "growing: a backlog", ["queue"], registry=self.registry)
        self.receive_to_result = Histogram("knee_node_receive_to_result_seconds",
                                           "From C-STORE acknowledgement to SC + SR written", buckets=LATENCY_BUCKETS,
                                           registry=self.registry)
        self.result_to_delivered = Histogram("knee_node_result_to_delivered_seconds",
                                             "From result written to accepted by a destination",
                                             buckets=LATENCY_BUCKETS, registry=self.registry)

    def track_queue(self, queue: str, depth: Callable[[], int], dead: Callable[[], int],
                    oldest: Callable[[], float | None]) -> None:
        """The queue's gauges, read at each scrape (on Redis: the broker's, the same in every process)."""
        self.queue_depth.labels(queue).set_function(depth)
        self.dead_letters.labels(queue).set_function(dead)
        self.oldest.labels(queue).set_function(lambda: oldest() or 0.0)


class MetricsServer:
    """/metrics for Prometheus; /healthz answers 200 while `healthy()` says so, else 503."""

    def __init__(self, metrics: Metrics, address: str, port: int, healthy: Callable[[], dict[str, bool]]) -> None:
        registry = metrics.registry

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path == "/metrics":
                    self.reply(200, CONTENT_TYPE_LATEST, generate_latest(registry))
                elif self.path == "/healthz":
                    checks = healthy()
                    body = json.dumps({"status": "ok" if all(checks.values()) else "failing", **checks})
                    self.reply(200 if all(checks.values()) else 503, "application/json", body.encode())
                else:
                    self.reply(404, "text/plain", b"not found\n")

            def reply(self, status: int, content_type: str, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:  # scrapes are not events worth a log line
                pass

        self.server = ThreadingHTTPServer((address, port), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, name="metrics", daemon=True)

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
