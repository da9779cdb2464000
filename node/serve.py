"""`knee-node serve`: receiver, worker and dispatcher of one node, with metrics, until SIGTERM or SIGINT.

Shutdown order keeps every promise: stop accepting associations, let the worker finish its batch, then give the
dispatcher a few seconds to flush the outbox.  Whatever is left stays queued for the next start.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from functools import partial
from typing import Literal

from node.config import Config
from node.infra.logs import log_event, setup_logging
from node.infra.metrics import Metrics, MetricsServer
from node.queue import ANALYZE, DELIVER, open_queue

Role = Literal["all", "receiver", "worker", "dispatcher"]


def serve(config: Config, role: Role = "all", on_ready: Callable[[dict[str, int]], None] | None = None,
          stop: threading.Event | None = None) -> int:
    """Run until `stop` is set (SIGTERM/SIGINT set it); `on_ready` gets the bound ports."""
    from node.dispatch import Dispatcher
    from node.infra.audit import AuditLog
    from node.receive import Receiver

    setup_logging(config.log_level)
    stop = stop or threading.Event()
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: stop.set())
    queue = open_queue(config)
    metrics = Metrics()

    def dead(topic: str) -> int:
        return queue.counts().get(topic, {}).get("dead", 0)

    for topic in (ANALYZE, DELIVER):
        metrics.track_queue(topic, partial(queue.depth, topic), partial(dead, topic), partial(queue.oldest_age, topic))
    consumed = {"all": [ANALYZE, DELIVER], "worker": [ANALYZE], "dispatcher": [DELIVER], "receiver": []}[role]
    queue.recover(consumed)
    audit = AuditLog(config.data_dir)
    receiver = Receiver(config, queue, metrics, audit) if role in ("all", "receiver") else None
    loops: dict[str, tuple[threading.Thread, threading.Event]] = {}
    if role in ("all", "worker"):  # only workers load torch and the model
        from node.analysis.grading import Analyzer
        from node.analysis.model import Grader
        from node.report import Equipment
        from node.worker import Worker

        grader = Grader(config.worker.model, device=config.worker.device, threads=config.worker.threads or None)
        worker = Worker(config, queue, Analyzer(grader), Equipment(name=config.scp.ae_title), metrics, audit)
        loops["worker"] = background(worker.run, "worker")
        log_event("model_loaded", model=grader.spec.name, version=grader.spec.version, device=str(grader.device))
    if role in ("all", "dispatcher"):
        loops["dispatcher"] = background(Dispatcher(config, queue, metrics, audit).run, "dispatcher")
        if not config.destinations:
            log_event("no_destinations", results=str(config.data_dir / "results"))
    if config.alerts.enabled:  # the one place alerts are raised: it watches the queues every process shares
        from node.alerts import Alerter

        loops["alerts"] = background(Alerter(config.alerts, queue, config.scp.ae_title).run, "alerts")

    def healthy() -> dict[str, bool]:
        checks = {name: thread.is_alive() for name, (thread, _) in loops.items()}
        if receiver is not None:
            checks["receiver"] = receiver.server is not None
        return checks

    ports: dict[str, int] = {}
    server = None
    if config.metrics.port:
        server = MetricsServer(metrics, config.metrics.bind_address, config.metrics.port, healthy)
        server.start()
        ports["metrics"] = server.port
    if receiver is not None:
        ports["scp"] = receiver.start()
    for thread, _ in loops.values():
        thread.start()
    log_event("ready", role=role, **ports)
    if on_ready:
        on_ready(ports)
    stop.wait()

    log_event("stopping", role=role)
    if receiver is not None:
        receiver.stop()
    for name in ("worker", "dispatcher", "alerts"):  # the worker's last results reach the dispatcher's flush
        if name in loops:
            thread, done = loops[name]
            done.set()
            thread.join()
    if server is not None:
        server.stop()
    queue.close()
    audit.close()
    log_event("stopped", role=role)
    return 0


def background(run: Callable[[threading.Event], None], name: str) -> tuple[threading.Thread, threading.Event]:
    done = threading.Event()
    return threading.Thread(target=run, args=(done,), name=name, daemon=True), done
