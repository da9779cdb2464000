"""Alerts: a real HTTP server takes the webhook's POSTs, a small SMTP server in the test the e-mails; real queues
(SQLite, and Redis on a real redis-server) hold the dead letters and the backlog."""

from __future__ import annotations

import email
import json
import logging
import socketserver
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from node.alerts import Alerter, scrub
from node.config import AlertsConfig, Config, ConfigError, QueueConfig, load_config
from node.queue import ANALYZE, DELIVER, AnalyzeJob, DeliverJob, Queue, open_queue
from node.queue.sqlite import SqliteQueue
from node.serve import serve
from tests.helpers import wait_until

PATIENT = "DOE^JANE"
UID = "1.2.826.0.1.3680043.8.498.12345678901234567890"


class Webhook:
    """A real HTTP server standing in for a chat or paging webhook: keeps each JSON body, answers `status`."""

    def __init__(self, status: int = 204) -> None:
        self.status, self.bodies = status, []
        webhook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                webhook.bodies.append((self.headers["Content-Type"], body))
                self.send_response(webhook.status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/knee-node"

    @property
    def alerts(self) -> list[dict[str, Any]]:
        return [json.loads(body) for _, body in self.bodies]


class SmtpSink:
    """A minimal SMTP server (the commands smtplib sends without extensions): keeps each message it is given."""

    def __init__(self) -> None:
        self.messages: list[email.message.Message] = []
        sink = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                self.reply("220 sink")
                while line := self.rfile.readline():
                    command = line.decode().strip().upper()
                    if command == "DATA":
                        self.reply("354 end with .")
                        data = b""
                        while (chunk := self.rfile.readline()) not in (b".\r\n", b""):
                            data += chunk[1:] if chunk.startswith(b"..") else chunk
                        sink.messages.append(email.message_from_bytes(data))
                        self.reply("250 queued")
                    elif command == "QUIT":
                        self.reply("221 bye")
                        return
                    else:  # EHLO, MAIL FROM, RCPT TO
                        self.reply("250 ok")

            def reply(self, text: str) -> None:
                self.wfile.write(text.encode() + b"\r\n")

        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.port = int(self.server.server_address[1])


@pytest.fixture
def webhook() -> Iterator[Webhook]:
    server = Webhook()
    yield server
    server.server.shutdown()


@pytest.fixture(params=["sqlite", "redis"])
def queue(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Queue]:
    """Either backend: the watcher reads only the Queue interface."""
    redis = {"redis_url": request.getfixturevalue("redis_url")} if request.param == "redis" else {}
    queue = open_queue(Config(data_dir=tmp_path, queue=QueueConfig(backend=request.param, **redis)))
    yield queue
    queue.close()


def dead_letters(queue: Queue, count: int, start: int = 0) -> None:
    """`count` results that cannot be delivered, with reasons that quote a path, a UID and a patient's name."""
    for index in range(start, start + count):
        queue.put(f"r{index}", DeliverJob(path=f"/data/outbox/PACS/{UID}.{index}.dcm", destination="PACS",
                                          sop_instance_uid=f"{UID}.{index}", source=UID, result_at=time.time()))
    for job in queue.claim(DELIVER, count):
        reason = (f"result file {job.message.path} is missing" if int(job.key[1:]) % 3
                  else f"status 0xA900: dataset of '{PATIENT}' {UID} refused by 10.0.0.5")
        queue.bury(job, reason)


def test_a_flood_of_dead_letters_gives_one_alert_then_one_summary(queue: Queue, webhook: Webhook) -> None:
    alerter = Alerter(AlertsConfig(webhook_url=webhook.url, repeat_seconds=600), queue, "KNEE_NODE")
    dead_letters(queue, 200)
    alerter.check(now=1000.0)
    (alert,) = webhook.alerts
    assert webhook.bodies[0][0] == "application/json"
    assert (alert["alert"], alert["queue"], alert["new"], alert["dead"], alert["node"]) == (
        "dead_letter", "deliver", 200, 200, "KNEE_NODE")
    assert alert["reasons"] == [{"reason": "result file <path> is missing", "count": 133},
                                {"reason": "status 0xA900: dataset of <value> <uid> refused by 10.0.0.5", "count": 67}]
    assert alert["oldest_seconds"] is None  # nothing left unfinished
    assert alert["summary"] == "200 new dead letters in queue deliver (200 in all)"
    raw = webhook.bodies[0][1].decode()
    assert PATIENT not in raw and "DOE" not in raw and UID not in raw

    dead_letters(queue, 100, start=200)  # more while the first alert is recent: held back
    alerter.check(now=1300.0)
    alerter.check(now=1599.0)
    assert len(webhook.alerts) == 1
    alerter.check(now=1600.0)  # then one summary of what came since
    assert [(a["new"], a["dead"]) for a in webhook.alerts] == [(200, 200), (100, 300)]
    alerter.check(now=2300.0)  # nothing new: nothing sent
    assert len(webhook.alerts) == 2


def test_e_mail_and_webhook_both_get_the_alert(queue: Queue, webhook: Webhook) -> None:
    smtp = SmtpSink()
    config = AlertsConfig(webhook_url=webhook.url, email_to=("pacs-admin@example.org", "oncall@example.org"),
                          email_from="knee-node@example.org", smtp_host="127.0.0.1", smtp_port=smtp.port)
    dead_letters(queue, 3)
    Alerter(config, queue, "KNEE_NODE").check(now=0.0)
    (mail,) = smtp.messages
    assert mail["To"] == "pacs-admin@example.org, oncall@example.org" and mail["From"] == "knee-node@example.org"
    assert "3 new dead letters in queue deliver (3 in all)" in mail["Subject"]
    body = json.loads(mail.get_payload(decode=True))
    assert body == webhook.alerts[0]
    assert PATIENT not in mail.as_string() and UID not in mail.as_string()
    smtp.server.shutdown()


def test_a_backlog_older_than_the_threshold_is_reported_once_per_repeat(queue: Queue, webhook: Webhook) -> None:
    alerter = Alerter(AlertsConfig(webhook_url=webhook.url, backlog_seconds=0.2, repeat_seconds=60), queue, "N")
    for index in range(4):
        queue.put(f"i{index}", AnalyzeJob(path=f"/spool/{UID}.{index}.dcm", patient="0123456789ab",
                                          received_at=time.time()))
    alerter.check(now=0.0)
    assert webhook.alerts == []  # not old enough yet
    time.sleep(0.3)
    alerter.check(now=1.0)
    alerter.check(now=2.0)
    (alert,) = webhook.alerts
    assert (alert["alert"], alert["queue"], alert["depth"]) == ("backlog", "analyze", 4)
    assert alert["oldest_seconds"] >= 0.2
    alerter.check(now=61.0)
    assert len(webhook.alerts) == 2


def test_a_failing_channel_is_logged_never_raised_and_tried_again(queue: Queue, webhook: Webhook,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    webhook.status = 500
    closed = SmtpSink()
    closed.server.shutdown()
    closed.server.server_close()  # nothing listens on its port any more
    config = AlertsConfig(webhook_url=webhook.url, email_to=("admin@example.org",), smtp_host="127.0.0.1",
                          smtp_port=closed.port)
    alerter = Alerter(config, queue, "N")
    dead_letters(queue, 2)
    with caplog.at_level(logging.WARNING, logger="knee_node"):
        alerter.check(now=0.0)
    failed = [record.fields for record in caplog.records if record.getMessage() == "alert_failed"]
    assert sorted(entry["channel"] for entry in failed) == ["email", "webhook"]
    assert "500" in next(entry["reason"] for entry in failed if entry["channel"] == "webhook")
    webhook.status = 204  # the webhook is back: the same alert goes out at the next check, repeat or not
    alerter.check(now=1.0)
    assert [alert["new"] for alert in webhook.alerts] == [2, 2]


def test_alerts_config_is_checked_at_start(tmp_path: Path) -> None:
    assert not load_config(None, {}).alerts.enabled  # the bundled config: off
    cases = {
        "{webhook_url: 'ftp://x'}": "config: alerts.webhook_url: 'ftp://x' is not an http:// or https:// URL",
        "{email_to: [admin@example.org]}": "config: alerts.smtp_host: needed to send e-mail (email_to is set)",
        "{email_to: [admin], smtp_host: mail}": "config: alerts.email: 'admin' is not an e-mail address",
        "{smtp_host: mail}": "config: alerts.email_to: required when smtp_host or email_from is set (the recipients)",
        "{webhook_url: 'https://h/x', smtp_username: u, email_to: [a@b], smtp_host: m}":
            "config: alerts.smtp_password: goes with smtp_username",
        "{webhook_url: 'https://h/x', repeat_seconds: 0}": "config: alerts.repeat_seconds: must be positive",
    }
    for alerts, message in cases.items():
        path = tmp_path / "node.yaml"
        path.write_text(f"alerts: {alerts}\n")
        with pytest.raises(ConfigError) as raised:
            load_config(path, {})
        assert str(raised.value) == message
    password = load_config(None, {"KNEE_NODE_ALERTS_EMAIL_TO": "[a@example.org]", "KNEE_NODE_ALERTS_SMTP_HOST": "m",
                                  "KNEE_NODE_ALERTS_SMTP_USERNAME": "u", "KNEE_NODE_ALERTS_SMTP_PASSWORD": "s3cret"})
    assert password.alerts.smtp_password == "s3cret" and "s3cret" not in repr(password.alerts)


def test_the_serving_node_alerts_what_is_dead_when_it_starts(tmp_path: Path, webhook: Webhook) -> None:
    config = load_config(None, {})
    config = replace(config, data_dir=tmp_path, scp=replace(config.scp, port=0),
                     metrics=replace(config.metrics, port=0), alerts=AlertsConfig(webhook_url=webhook.url))
    queue = SqliteQueue(tmp_path / "queue.sqlite", 300.0, {ANALYZE: 3, DELIVER: 10})
    dead_letters(queue, 1)
    queue.close()
    stop = threading.Event()
    node = threading.Thread(target=serve, args=(config, "receiver"), kwargs={"stop": stop})
    node.start()
    try:
        wait_until(lambda: webhook.alerts, timeout=30)
    finally:
        stop.set()
        node.join(30)
    (alert,) = webhook.alerts
    assert (alert["alert"], alert["queue"], alert["new"]) == ("dead_letter", "deliver", 1)
    assert not node.is_alive()


def test_scrub_keeps_what_an_administrator_needs() -> None:
    assert scrub("cannot associate with PACS@10.0.0.5:104") == "cannot associate with PACS@10.0.0.5:104"
    assert scrub(f"not a readable DICOM file (InvalidDicomError: /spool/{UID}.ab12.dcm)") == (
        "not a readable DICOM file (InvalidDicomError: <path>)")
    assert scrub("x" * 500) == "x" * 200
