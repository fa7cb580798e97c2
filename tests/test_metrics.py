"""The request path's remembered counter children count exactly what ``labels()`` would."""

from __future__ import annotations

from edgeproxy.metrics import Metrics


def test_remembered_children_are_the_metrics_own_children() -> None:
    metrics = Metrics()
    child = metrics.events_accepted_by("default", "track")
    assert child is metrics.events_accepted_by("default", "track")
    assert child is metrics.events_accepted.labels("default", "track")
    assert metrics.requests_by("/v1/t", "200") is metrics.requests.labels("/v1/t", "200")


def test_counting_through_remembered_children_renders_the_same_samples() -> None:
    metrics = Metrics()
    metrics.events_accepted_by("default", "track").inc(20)
    metrics.events_accepted.labels("default", "track").inc()
    metrics.events_rejected_by("invalid_json").inc()
    text = metrics.render().decode()
    assert 'edgeproxy_events_accepted_total{source="default",type="track"} 21.0' in text
    assert 'edgeproxy_events_rejected_total{reason="invalid_json"} 1.0' in text
