"""What a stop says: the log lines an operator reads when a process is told to go away.

Why: a SIGTERM that ends in silence leaves the operator guessing whether anything was lost.
The lines say what the shutdown flush delivered, what the spool keeps for the next start,
and what does not survive (the memory session store; visitors continue from their cookies).
"""

from __future__ import annotations

import logging
from typing import Any

from edgeproxy.delivery.records import SpoolUnavailable
from edgeproxy.metrics import Metrics

log = logging.getLogger("edgeproxy")


def delivered_so_far(metrics: Metrics) -> int:
    """Items every target acknowledged since this process started (all labels summed)."""
    return int(sum(sample.value for family in metrics.delivered_items.collect()
                   for sample in family.samples if sample.name.endswith("_total")))


def log_stopping(grace: float) -> None:
    log.info("edgeproxy stopping: tracking calls get 503 from now; delivering what is due for up to %gs "
             "(server.shutdown_grace)", grace)


async def log_stopped(spool: Any, store: Any, *, delivered: int, memory_store: bool) -> None:
    """One line after the worker stopped (the spool still open): flushed, kept, and sessions."""
    try:
        stats = await spool.stats()
        kept = (f"the spool keeps {stats['depth'] + stats['in_flight']} undelivered ({stats['retrying']} of them "
                f"retrying) and {stats['dead']} dead letters for the next start")
    except SpoolUnavailable as exc:
        kept = f"the spool could not be read ({exc}); what it holds stays for the next start"
    if memory_store:
        sessions = (f"the memory session store is not kept ({len(store)} live sessions; visitors continue "
                    "them from their cookies)")
    else:
        sessions = "sessions stay in Redis"
    log.info("edgeproxy stopped: delivered %d items while stopping; %s; %s", delivered, kept, sessions)
