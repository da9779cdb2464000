"""Shared services of every stage: durable files, logs, metrics, audit trail, TLS."""
