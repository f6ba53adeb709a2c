"""Prometheus metrics, one registry per process (served at /metrics)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REGISTRY = CollectorRegistry(auto_describe=True)

EVENTS_ACCEPTED = Counter(
    "trackd_events_accepted", "Events accepted (stored or duplicate)", ["source", "transport"], registry=REGISTRY
)
EVENTS_STORED = Counter("trackd_events_stored", "New events stored", ["source"], registry=REGISTRY)
EVENTS_DUPLICATE = Counter("trackd_events_duplicate", "Redelivered events ignored", ["source"], registry=REGISTRY)
UNKNOWN_CODES = Counter(
    "trackd_unknown_codes",
    "Milestones stored with a source code trackd does not map",
    ["source", "code"],
    registry=REGISTRY,
)
QUARANTINED = Counter("trackd_quarantined", "Inputs kept in quarantine", ["source", "transport"], registry=REGISTRY)
INGEST_SECONDS = Histogram(
    "trackd_ingest_seconds",
    "Time from receipt to commit of one batch",
    ["transport"],
    registry=REGISTRY,
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
BATCH_SIZE = Histogram(
    "trackd_ingest_batch_events",
    "Events per committed batch",
    ["transport"],
    registry=REGISTRY,
    buckets=(1, 10, 50, 100, 500, 1000, 5000, 10000),
)
WS_CLIENTS = Gauge("trackd_stream_clients", "Connected websocket clients", registry=REGISTRY)
HOOK_ATTEMPTS = Counter("trackd_webhook_attempts", "Outbound webhook attempts", ["outcome"], registry=REGISTRY)
