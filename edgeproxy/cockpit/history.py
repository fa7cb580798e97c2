"""The last hour, minute by minute: an in-process ring of counter deltas for the overview's charts.

Why sampled from the Prometheus registry rather than counted where things happen: the
counters already exist on every path (accepted, rejected by reason, delivered and failed by
target, sessions), so the hot path pays nothing more; a sample (every ``SAMPLE_EVERY_S``, and
when a page is drawn) adds what each counter gained since the last one to the current
minute. Gauges (spool depth, oldest age) keep their last value in the minute. Per process:
behind nginx each process charts its own share, like its /metrics.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass, field
from typing import Any, Iterable

MINUTE_MS = 60_000
MINUTES = 60
SAMPLE_EVERY_S = 10.0
TREND_MINUTES = 5  # headline numbers: the last 5 minutes against the 5 before

# (series, metric sample name, label that splits it or None, samples kept: label -> bool)
_FAILED = frozenset({"ok", "sink"})
COUNTERS: tuple[tuple[str, str, str | None], ...] = (
    ("accepted", "edgeproxy_events_accepted_total", None),
    ("rejected", "edgeproxy_events_rejected_total", "reason"),
    ("delivered", "edgeproxy_delivered_items_total", "target"),
    ("failed", "edgeproxy_deliveries_total", "target"),  # requests answered other than ok (see _keep)
    ("dead", "edgeproxy_dead_letters_total", "target"),
    ("sessions", "edgeproxy_sessions_started_total", None),
    ("latency_sum", "edgeproxy_delivery_seconds_sum", "target"),
    ("latency_count", "edgeproxy_delivery_seconds_count", "target"),
)
_BY_SAMPLE = {name: (series, label) for series, name, label in COUNTERS}

Key = tuple[str, str]  # (series, label value or "")


def _keep(series: str, labels: dict[str, str]) -> bool:
    return series != "failed" or labels.get("outcome") not in _FAILED


def snapshot(families: Iterable[Any]) -> dict[Key, float]:
    """Totals of the charted counters, from ``registry.collect()``."""
    out: dict[Key, float] = {}
    for family in families:
        for sample in family.samples:
            spec = _BY_SAMPLE.get(sample.name)
            if spec is None or not _keep(spec[0], sample.labels):
                continue
            series, label = spec
            key = (series, sample.labels.get(label, "") if label else "")
            out[key] = out.get(key, 0.0) + float(sample.value)
    return out


@dataclass(slots=True)
class Minute:
    start_ms: int
    counts: dict[Key, float] = field(default_factory=dict)
    gauges: dict[str, float] = field(default_factory=dict)


class MinuteHistory:
    """Sixty one-minute buckets; ``sample`` folds new totals in, the rest reads them."""

    def __init__(self, minutes: int = MINUTES):
        self.minutes = minutes
        self._ring: collections.deque[Minute] = collections.deque(maxlen=minutes)
        self._last: dict[Key, float] = {}  # totals at the last sample (none yet: all since the start)

    def _bucket(self, now_ms: int) -> Minute:
        start = now_ms - now_ms % MINUTE_MS
        if not self._ring or self._ring[-1].start_ms < start:
            self._ring.append(Minute(start))
        return self._ring[-1]

    def sample(self, now_ms: int, totals: dict[Key, float], gauges: dict[str, float] | None = None) -> None:
        bucket = self._bucket(now_ms)
        for key, total in totals.items():
            delta = total - self._last.get(key, 0.0)
            if delta:
                bucket.counts[key] = bucket.counts.get(key, 0.0) + delta
        self._last = dict(totals)
        if gauges:
            bucket.gauges.update(gauges)

    def labels(self, series: str) -> list[str]:
        """The label values ``series`` has counted this hour (e.g. each rejection reason)."""
        return sorted({label for m in self._ring for (s, label) in m.counts if s == series})

    def _minutes(self, now_ms: int) -> list[tuple[int, Minute | None]]:
        by_start = {m.start_ms: m for m in self._ring}
        end = now_ms - now_ms % MINUTE_MS
        return [(t, by_start.get(t)) for t in range(end - (self.minutes - 1) * MINUTE_MS, end + 1, MINUTE_MS)]

    def series(self, series: str, now_ms: int, label: str | None = None) -> list[tuple[int, float]]:
        """(minute start, count) for the last hour, oldest first; ``label`` None: every label summed."""
        out = []
        for t, m in self._minutes(now_ms):
            value = 0.0
            if m is not None:
                value = sum(v for (s, lab), v in m.counts.items() if s == series and (label is None or lab == label))
            out.append((t, value))
        return out

    def gauge(self, name: str, now_ms: int) -> list[tuple[int, float | None]]:
        """(minute start, last value in that minute or None) for the last hour."""
        return [(t, m.gauges.get(name) if m is not None else None) for t, m in self._minutes(now_ms)]

    def latency_ms(self, now_ms: int, label: str | None = None) -> list[tuple[int, float | None]]:
        """Mean upstream latency per minute (None: no request that minute)."""
        sums = self.series("latency_sum", now_ms, label)
        counts = self.series("latency_count", now_ms, label)
        return [(t, (s / n * 1000) if n else None) for (t, s), (_, n) in zip(sums, counts)]

    def headline(self, series: str, now_ms: int) -> dict[str, Any]:
        """This hour's total, the last ``TREND_MINUTES`` and the ones before (for an arrow)."""
        points = [v for _, v in self.series(series, now_ms)]
        recent, before = sum(points[-TREND_MINUTES:]), sum(points[-2 * TREND_MINUTES:-TREND_MINUTES])
        return {"hour": int(sum(points)), "recent": int(recent), "before": int(before), "trend": trend(recent, before)}


def trend(recent: float, before: float) -> str:
    """"up", "down" or "flat": the recent window against the one before (flat within 10 %)."""
    if recent == before or (before and abs(recent - before) / before < 0.1):
        return "flat"
    return "up" if recent > before else "down"
