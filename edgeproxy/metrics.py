"""Prometheus metrics, one registry per application instance.

Why a registry per app rather than prometheus-client's global one: tests build many apps
in one process, and each must count from zero.
"""

from __future__ import annotations

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)


class Metrics:
    """Every counter edgeproxy exports. Components receive this object and increment it."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("edgeproxy_requests_total", "HTTP requests handled", ["route", "status"], registry=r)
        self.events_accepted = Counter("edgeproxy_events_accepted_total", "Segment messages accepted", ["type"], registry=r)
        self.events_rejected = Counter("edgeproxy_events_rejected_total", "Segment messages rejected", ["reason"], registry=r)
        self.sessions_started = Counter("edgeproxy_sessions_started_total", "Sessions started", registry=r)
        self.session_mismatches = Counter(
            "edgeproxy_session_id_mismatches_total",
            "Web events whose client session id differed from the server's",
            registry=r,
        )
        self.mapping_refused = Counter("edgeproxy_mapping_refused_total", "Events the mapping refused (dead-lettered)", registry=r)
        self.spool_depth = Gauge("edgeproxy_spool_depth", "Amplitude items waiting in the spool", registry=r)
        self.deliveries = Counter("edgeproxy_deliveries_total", "Amplitude requests by outcome", ["endpoint", "outcome"], registry=r)
        self.delivered_items = Counter("edgeproxy_delivered_items_total", "Amplitude items acknowledged", ["endpoint"], registry=r)
        self.dead_letters = Counter("edgeproxy_dead_letters_total", "Items moved to the dead-letter table", ["reason"], registry=r)
        self.delivery_latency = Histogram(
            "edgeproxy_delivery_seconds", "Amplitude request duration", ["endpoint"], registry=r
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
