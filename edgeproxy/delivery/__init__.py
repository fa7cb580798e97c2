"""Durable delivery: the SQLite spool (edge side appends, worker side claims) and the worker
that batches items to Amplitude and applies each response's verdict."""

from edgeproxy.delivery.classify import DeadReason, Verdict, backoff_delay, classify
from edgeproxy.delivery.records import DeadLetter, SpoolItem, SpoolUnavailable
from edgeproxy.delivery.spool import ClaimedItem, DueGroup, ReplayFilter, Spool
from edgeproxy.delivery.spool_cli import replay, spool_report
from edgeproxy.delivery.worker import DeliveryWorker

__all__ = [
    "ClaimedItem",
    "DeadLetter",
    "DeadReason",
    "DeliveryWorker",
    "DueGroup",
    "ReplayFilter",
    "Spool",
    "SpoolItem",
    "SpoolUnavailable",
    "Verdict",
    "backoff_delay",
    "classify",
    "replay",
    "spool_report",
]
