"""Prometheus metrics, one registry per application instance.

Why a registry per app rather than prometheus-client's global one: tests build many apps
in one process, and each must count from zero.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)


class LabelledChildren:
    """``metric.labels(*values)``, looked up once per distinct label values and then remembered.

    Why: prometheus-client's ``labels()`` validates and stringifies the values and takes a lock
    on every call (about 1 µs, more than the ``inc()`` itself), and the tracking API counts every
    event. The child for a given set of values never changes (edgeproxy never removes a labelled
    child), so handing out the same object again counts exactly the same samples.
    """

    __slots__ = ("_metric", "_children")

    def __init__(self, metric: Any) -> None:
        self._metric = metric
        self._children: dict[tuple[str, ...], Any] = {}

    def __call__(self, *values: str) -> Any:
        child = self._children.get(values)
        if child is None:
            child = self._children[values] = self._metric.labels(*values)
        return child


class Metrics:
    """Every counter edgeproxy exports. Components receive this object and increment it."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("edgeproxy_requests_total", "HTTP requests handled", ["route", "status"], registry=r)
        self.events_accepted = Counter("edgeproxy_events_accepted_total", "Segment messages accepted", ["source", "type"],
                                       registry=r)
        self.events_rejected = Counter("edgeproxy_events_rejected_total", "Segment messages rejected", ["reason"], registry=r)
        self.sessions_started = Counter("edgeproxy_sessions_started_total", "Sessions started", registry=r)
        self.session_mismatches = Counter(
            "edgeproxy_session_id_mismatches_total",
            "Web events whose client session id differed from the server's",
            registry=r,
        )
        self.mapping_refused = Counter("edgeproxy_mapping_refused_total", "Events the mapping refused (dead-lettered)", registry=r)
        self.spool_depth = Gauge("edgeproxy_spool_depth", "Items waiting in the spool (every target)", registry=r)
        # Delivery, by target ("amplitude", "segment": the relay) and source (write keys' owner).
        target = ["target", "source"]
        self.deliveries = Counter("edgeproxy_deliveries_total", "Delivery requests by outcome",
                                  [*target, "endpoint", "outcome"], registry=r)
        self.delivered_items = Counter("edgeproxy_delivered_items_total", "Items acknowledged by their target",
                                       [*target, "endpoint"], registry=r)
        self.dead_letters = Counter("edgeproxy_dead_letters_total", "Items moved to the dead-letter table",
                                    [*target, "reason"], registry=r)
        self.delivery_latency = Histogram(
            "edgeproxy_delivery_seconds", "Delivery request duration", [*target, "endpoint"], registry=r
        )
        # Privacy: accepted events not delivered to Amplitude, by why (consent_denied, no_consent,
        # gpc, bot); anonymised deliveries; bots seen by kind, dropped or not.
        self.events_withheld = Counter("edgeproxy_events_withheld_total",
                                       "Accepted events not delivered to Amplitude (privacy rules)",
                                       ["source", "reason"], registry=r)
        self.events_anonymised = Counter("edgeproxy_events_anonymised_total",
                                         "Events delivered anonymously (events_without_consent = \"anonymous\")",
                                         ["source"], registry=r)
        self.bots = Counter("edgeproxy_bot_events_total", "Accepted events from known bots and crawlers",
                            ["source", "kind", "dropped"], registry=r)
        # Remembered children of the counters the request path increments per request or per event.
        self.requests_by = LabelledChildren(self.requests)
        self.events_accepted_by = LabelledChildren(self.events_accepted)
        self.events_rejected_by = LabelledChildren(self.events_rejected)
        self.events_withheld_by = LabelledChildren(self.events_withheld)
        self.events_anonymised_by = LabelledChildren(self.events_anonymised)
        self.bots_by = LabelledChildren(self.bots)

    def render(self) -> bytes:
        return generate_latest(self.registry)
