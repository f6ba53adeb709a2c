"""Prometheus metrics, one registry per process (served at /metrics).

Every label value comes from a bounded set, so that no input can grow `/metrics`: a labelled metric
is a `Bounded` one, and each of its labels keeps the first `MAX_VALUES` distinct values it is given
(for each combination of the labels before it), cut to `MAX_LEN` characters; any later value is
counted as `other`. Sources, transports and outcomes are fixed in the code, and unknown codes are
counted under their source alone, so no label takes its values from input.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Generic, TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.metrics import MetricWrapperBase

REGISTRY = CollectorRegistry(auto_describe=True)

MAX_VALUES = 100
MAX_LEN = 64
OTHER = "other"

M = TypeVar("M", bound=MetricWrapperBase)


class Bounded(Generic[M]):
    """A labelled metric whose `labels(...)` takes any values and uses bounded ones (see above)."""

    def __init__(self, metric: M, names: Sequence[str], max_values: int = MAX_VALUES) -> None:
        self.metric = metric
        self.names = tuple(names)
        self.max_values = max_values
        self._seen: dict[tuple[str, ...], set[str]] = {}

    def labels(self, *values: object, **named: object) -> M:
        """The child for these label values (positional, or by name), with each value bounded."""
        if named:
            values = tuple(named[n] for n in self.names)
        if len(values) != len(self.names):
            raise ValueError(f"{len(self.names)} label values expected, got {len(values)}")
        kept: list[str] = []
        for value in values:
            text = str(value)[:MAX_LEN]
            seen = self._seen.setdefault(tuple(kept), set())
            if text not in seen:
                if len(seen) < self.max_values:
                    seen.add(text)
                else:
                    text = OTHER
            kept.append(text)
        return self.metric.labels(*kept)


def _counter(name: str, doc: str, labels: Sequence[str]) -> Bounded[Counter]:
    return Bounded(Counter(name, doc, labels, registry=REGISTRY), labels)


def _histogram(name: str, doc: str, labels: Sequence[str], buckets: Sequence[float]) -> Bounded[Histogram]:
    return Bounded(Histogram(name, doc, labels, registry=REGISTRY, buckets=buckets), labels)


EVENTS_ACCEPTED = _counter("trackd_events_accepted", "Events accepted (stored or duplicate)", ["source", "transport"])
EVENTS_STORED = _counter("trackd_events_stored", "New events stored", ["source"])
EVENTS_DUPLICATE = _counter("trackd_events_duplicate", "Redelivered events ignored", ["source"])
UNKNOWN_CODES = _counter(
    "trackd_unknown_codes",
    "Milestones stored with a source code trackd does not map (the codes are in the events' raw_code)",
    ["source"],
)
QUARANTINED = _counter("trackd_quarantined", "Inputs kept in quarantine", ["source", "transport"])
UNATTRIBUTED = _counter(
    "trackd_unattributed_input",
    "Input no tenant could be authenticated for: kept in the bounded quarantine sample, or dropped",
    ["source", "outcome"],
)
INGEST_SECONDS = _histogram(
    "trackd_ingest_seconds",
    "Time from receipt to commit of one batch",
    ["transport"],
    (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
BATCH_SIZE = _histogram(
    "trackd_ingest_batch_events", "Events per committed batch", ["transport"], (1, 10, 50, 100, 500, 1000, 5000, 10000)
)
WS_CLIENTS = Gauge("trackd_stream_clients", "Connected websocket clients", registry=REGISTRY)
HOOK_ATTEMPTS = _counter("trackd_webhook_attempts", "Outbound webhook attempts", ["outcome"])
STREAM_RESETS = Counter(
    "trackd_stream_resets",
    "Tenant streams dropped from the bus because they were ahead of the database (a restored database)",
    registry=REGISTRY,
)

# The process's PostgreSQL pool, as psycopg_pool counts it (labels fixed here): how many requests
# wait for a connection now, and in total how many came and how long they waited since the start.
POOL_STATS = ("pool_size", "pool_available", "requests_waiting", "requests_num", "requests_queued",
              "requests_wait_ms", "requests_errors", "usage_ms", "connections_lost")  # fmt: skip
DB_POOL = Gauge("trackd_db_pool", "This process's PostgreSQL connection pools (psycopg_pool statistics)",
                ["pool", "stat"], registry=REGISTRY)  # fmt: skip


def record_pool(pool: str, stats: dict[str, int]) -> None:
    """`pool`: `main` (the tenants' work) or `guest` (input no tenant is authenticated for)."""
    for name in POOL_STATS:
        DB_POOL.labels(pool, name).set(stats.get(name, 0))
