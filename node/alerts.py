"""Alerts an administrator sees without watching logs: a webhook (JSON POST) and/or an e-mail when work goes to
dead-letter or a queue's backlog grows older than `alerts.backlog_seconds`.

One watcher reads the queues (any backend, so it sees what every process of the node dead-lettered) every
CHECK_SECONDS.  Per kind (dead_letter, backlog) and queue it sends at most one alert per `repeat_seconds`: a flood
of dead letters gives one alert at once and then one summary of what came since, not one per job.  An alert carries
no patient data: node, queue, counts, ages and the reasons with anything quoted, any path and any UID taken out.
Sending never raises: a failure is logged (`alert_failed`) and tried again at the next check.
"""

from __future__ import annotations

import json
import logging
import re
import smtplib
import socket
import ssl
import threading
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass
from email.message import EmailMessage
from typing import Any

from node.config import AlertsConfig
from node.infra.logs import describe, log_event
from node.queue import ANALYZE, DELIVER, Queue

CHECK_SECONDS = 15.0
TIMEOUT_SECONDS = 10.0
MAX_REASONS = 5  # the most frequent reasons an alert lists
# What a reason may quote of an instance: values in quotes, paths, UIDs (an IPv4 address is kept).
QUOTED = re.compile(r"'[^']*'|\"[^\"]*\"")
PATH = re.compile(r"(?<![\w:])/[^\s,;)]+")
DOTTED = re.compile(r"\b\d+(?:\.\d+){2,}\b")


def scrub(reason: str) -> str:
    """A reason fit for an alert: quoted values, paths and UIDs replaced, at most 200 characters."""
    reason = PATH.sub("<path>", QUOTED.sub("<value>", reason))
    reason = DOTTED.sub(lambda m: m[0] if is_ipv4(m[0]) else "<uid>", reason)
    return reason[:200]


def is_ipv4(text: str) -> bool:
    parts = text.split(".")
    return len(parts) == 4 and all(len(part) <= 3 and int(part) <= 255 for part in parts)


@dataclass
class Watched:
    """Per kind and queue: what was last reported, and when."""

    reported_dead: int = 0
    sent_at: float = -float("inf")


class Alerter:
    def __init__(self, config: AlertsConfig, queue: Queue, node: str) -> None:
        self.config, self.queue, self.node = config, queue, node
        self.host = socket.gethostname()
        self.watched: dict[tuple[str, str], Watched] = {}

    def run(self, stop: threading.Event) -> None:
        """Check now and every CHECK_SECONDS until `stop` is set."""
        while True:
            self.check(time.monotonic())
            if stop.wait(CHECK_SECONDS):
                return

    def check(self, now: float) -> None:
        """Send what is due at monotonic time `now`; never raises."""
        try:
            counts = self.queue.counts()
            for topic in (ANALYZE, DELIVER):
                dead = counts.get(topic, {}).get("dead", 0)
                self.check_dead_letters(topic, dead, now)
                if self.config.backlog_seconds:
                    self.check_backlog(topic, counts.get(topic, {}), now)
        except Exception as error:  # the queue not answering (broker down) is seen elsewhere; try again later
            log_event("alert_check_failed", logging.WARNING, reason=repr(error))

    def check_dead_letters(self, topic: str, dead: int, now: float) -> None:
        watched = self.watched.setdefault(("dead_letter", topic), Watched())
        watched.reported_dead = min(watched.reported_dead, dead)  # requeued meanwhile: count from what is left
        if dead <= watched.reported_dead or now - watched.sent_at < self.config.repeat_seconds:
            return
        reasons = Counter(scrub(letter.error) for letter in self.queue.dead(topic))
        new = dead - watched.reported_dead
        alert = {"alert": "dead_letter", "queue": topic, "new": new, "dead": dead,
                 "reasons": [{"reason": reason, "count": count} for reason, count in reasons.most_common(MAX_REASONS)],
                 "oldest_seconds": self.oldest(topic),
                 "summary": f"{new} new dead letter{'s' if new != 1 else ''} in queue {topic} ({dead} in all)"}
        if self.send(alert):
            watched.reported_dead, watched.sent_at = dead, now

    def check_backlog(self, topic: str, counts: dict[str, int], now: float) -> None:
        watched = self.watched.setdefault(("backlog", topic), Watched())
        oldest = self.oldest(topic)
        if oldest is None or oldest < self.config.backlog_seconds or now - watched.sent_at < self.config.repeat_seconds:
            return
        depth = counts.get("queued", 0) + counts.get("leased", 0)
        alert = {"alert": "backlog", "queue": topic, "depth": depth, "oldest_seconds": oldest,
                 "summary": f"backlog in queue {topic}: {depth} unfinished, the oldest {oldest:.0f} s old"}
        if self.send(alert):
            watched.sent_at = now

    def oldest(self, topic: str) -> float | None:
        age = self.queue.oldest_age(topic)
        return round(age, 1) if age is not None else None

    def send(self, alert: dict[str, Any]) -> bool:
        """To every channel configured; True when at least one took it."""
        message = {"node": self.node, "host": self.host,
                   "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **alert}
        channels = [("webhook", self.post)] if self.config.webhook_url else []
        channels += [("email", self.mail)] if self.config.email_to else []
        sent = False
        for channel, deliver in channels:
            try:
                deliver(message)
                sent = True
            except Exception as error:  # never the node's problem: logged, tried again at the next check
                log_event("alert_failed", logging.WARNING, channel=channel, alert=alert["alert"], queue=alert["queue"],
                          reason=describe(error))
        if sent:
            log_event("alert_sent", alert=alert["alert"], queue=alert["queue"], summary=alert["summary"])
        return sent

    def post(self, message: dict[str, Any]) -> None:
        request = urllib.request.Request(self.config.webhook_url, data=json.dumps(message).encode(), method="POST",
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=TIMEOUT_SECONDS) as response:
            response.read()  # urlopen raises on 4xx and 5xx

    def mail(self, message: dict[str, Any]) -> None:
        config = self.config
        email = EmailMessage()
        email["Subject"] = f"knee-node {self.node} on {self.host}: {message['summary']}"
        email["From"] = config.email_from or f"knee-node@{self.host}"
        email["To"] = ", ".join(config.email_to)
        email.set_content(json.dumps(message, indent=2) + "\n")
        with smtplib.SMTP(config.smtp_host, config.smtp_port, timeout=TIMEOUT_SECONDS) as smtp:
            if config.smtp_starttls:
                smtp.starttls(context=ssl.create_default_context())
            if config.smtp_username:
                smtp.login(config.smtp_username, config.smtp_password)
            smtp.send_message(email)
