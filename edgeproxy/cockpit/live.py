"""What the overview's live part shows: headline numbers with their trend, and the hour's charts.

A pure function of the minute history, so the page, its JSON twin and the stream agree.
"""

from __future__ import annotations

from typing import Any

from edgeproxy.cockpit.history import MinuteHistory

HEADLINES = (
    ("accepted", "events accepted"),
    ("rejected", "events rejected"),
    ("delivered", "items delivered"),
    ("failed", "delivery requests failed"),
    ("dead", "dead letters"),
    ("sessions", "sessions started"),
)
SPLIT = {"rejected": "reason", "delivered": "target", "failed": "target", "dead": "target"}


def live_data(history: MinuteHistory, now_ms: int) -> dict[str, Any]:
    """Headlines and per-minute series for the last hour (series as ``[minute_ms, value]``)."""
    charts: dict[str, Any] = {}
    for name, _ in HEADLINES:
        if name in SPLIT:
            charts[name] = {label or "unlabelled": history.series(name, now_ms, label) for label in history.labels(name)}
        else:
            charts[name] = history.series(name, now_ms)
    charts["latency_ms"] = {label: history.latency_ms(now_ms, label) for label in history.labels("latency_count")}
    charts["spool_depth"] = history.gauge("depth", now_ms)
    charts["oldest_age_s"] = history.gauge("oldest_age_s", now_ms)
    depth = next((v for _, v in reversed(charts["spool_depth"]) if v is not None), None)
    oldest = next((v for _, v in reversed(charts["oldest_age_s"]) if v is not None), None)
    return {
        "now_ms": now_ms,
        "headline": {name: history.headline(name, now_ms) for name, _ in HEADLINES},
        "spool": {"depth": depth, "oldest_age_s": oldest},
        "charts": charts,
    }
