"""Durable delivery: the SQLite spool (edge side appends, worker side claims) and the worker
that batches items to Amplitude and applies each response's verdict.

The spool and the worker are imported on first use (PEP 562): they import the targets'
modules (``segment_api``, ``amplitude_api``), which import this package's ``classify``, so
importing one of those first (``import edgeproxy.segment_api``) would otherwise find this
package half-initialized.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from edgeproxy.delivery.classify import DeadReason, Verdict, backoff_delay, classify
from edgeproxy.delivery.records import DeadLetter, SpoolItem, SpoolUnavailable

if TYPE_CHECKING:
    from edgeproxy.delivery.spool import ClaimedItem, DueGroup, ReplayFilter, Spool
    from edgeproxy.delivery.spool_cli import replay, spool_report
    from edgeproxy.delivery.worker import DeliveryWorker

_LAZY = {
    "ClaimedItem": "spool", "DueGroup": "spool", "ReplayFilter": "spool", "Spool": "spool",
    "replay": "spool_cli", "spool_report": "spool_cli", "DeliveryWorker": "worker",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


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
