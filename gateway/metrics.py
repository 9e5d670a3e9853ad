"""Prometheus metrics: exchanges by outcome, their latency, upstream time, audit failures; provisional deadlines;
what was refused before it became an exchange. Under `serve --workers N`, one scrape gives the totals of all workers."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, multiprocess

if TYPE_CHECKING:  # the type only: the audit writer calls observe(), not the other way round
    from gateway.audit.writer import AuditEvent


# Latency buckets in seconds, from a fast local call to a slow upstream timing out.
_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

EXCHANGES = Counter(
    "msjx_exchanges_total",
    "Exchanges answered and audited, by interface (rest, soap), event, decision (allowed, refused, failed) and problem"
    " code",
    ["interface", "event", "decision", "code"],
)
DURATION = Histogram(
    "msjx_exchange_duration_seconds",
    "Time from arrival until the answer was ready to be audited (the audit commit comes after)",
    ["event"],
    buckets=_BUCKETS,
)
UPSTREAM = Histogram(
    "msjx_upstream_duration_seconds", "Time spent calling an upstream service", ["service"], buckets=_BUCKETS
)
PROVISIONAL_DEADLINES = Gauge(
    "msjx_calendar_provisional_deadlines",
    "Open sharing-request deadlines still provisional (counted over a year whose holiday schedule is not loaded)",
    multiprocess_mode="livemostrecent",  # a count over the shared database: the latest scrape's, from any worker
)
AUDIT_UNAVAILABLE = Counter(
    "msjx_audit_unavailable_total", "Exchanges refused with 503 because their audit record could not be committed"
)
HTTP_REFUSED = Counter(
    "msjx_http_refused_total",
    "Requests or connections the server layer refused before the application saw them, by problem code",
    ["code"],
)
UNAUTHENTICATED_COUNTED = Counter(
    "msjx_unauthenticated_counted_total",
    "Unauthenticated requests refused with 429 and counted rather than audited one by one",
)


# The labelled children, looked up once: `labels()` validates, locks and builds its key on every call (~2.7 µs of
# the event loop's time an exchange for the three). The keys are events, decisions, problem codes and services, a
# fixed set; prometheus_client keeps every child for ever in any case.
_exchange_children: dict[tuple[str, str, str], tuple[Any, Any]] = {}
_upstream_children: dict[str, Any] = {}


def observe(event: AuditEvent) -> None:
    """Count one exchange whose audit record is durable."""
    key = (event.event, event.decision, event.reason_code or "")
    children = _exchange_children.get(key)
    if children is None:
        interface = "soap" if event.event.startswith("soap.") else "rest"
        children = _exchange_children[key] = (EXCHANGES.labels(interface, *key), DURATION.labels(event.event))
    children[0].inc()
    children[1].observe(event.duration_us / 1e6)
    service = event.service
    if service is not None and event.upstream_us is not None:
        upstream = _upstream_children.get(service)
        if upstream is None:
            upstream = _upstream_children[service] = UPSTREAM.labels(service)
        upstream.observe(event.upstream_us / 1e6)


# prometheus_client's multiprocess mode: set by the supervisor of `serve --workers N` for its workers, so that each
# worker's counters live in files there and a scrape, whichever worker answers it, adds them all up.
MULTIPROCESS_DIR = "PROMETHEUS_MULTIPROC_DIR"


def exposition() -> bytes:
    """The text a scrape gets: this process's metrics, or every worker's added up under `serve --workers N`."""
    if os.environ.get(MULTIPROCESS_DIR):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry)
    return generate_latest()
