"""The delivery queue interface: what the edge, the session sweep, the worker and /debug use.

Two backends stand behind it, like the session store's: the embedded SQLite spool
(``spool.Spool``, the default: no server needed) and Redis streams (``redis_queue.RedisQueue``,
for several edgeproxy processes sharing one queue). The worker and the edge see only this
Protocol, so both backends run the same behaviour tests.

Row ids are opaque: an ``int`` (SQLite row) or a ``(stream, entry id)`` tuple (Redis). The
worker only hashes them and hands them back to ``settle``.

Every method /debug, the worker or the CLI calls is declared here, so a backend that lacks
one (or takes other parameters) fails tests/test_queue_protocol.py rather than a page at
run time.
"""

from __future__ import annotations

from typing import Any, Hashable, Mapping, Protocol, Sequence, runtime_checkable

from edgeproxy.config_checks import DURABILITY, is_redis_url
from edgeproxy.delivery.records import DeadLetter, SpoolItem
from edgeproxy.delivery.spool import ClaimedItem, DueGroup, ReplayFilter, Spool
from edgeproxy.metrics import Metrics

RowId = Hashable

@runtime_checkable
class DeliveryQueue(Protocol):
    async def open(self) -> None:
        """Connect or create; raise ``SpoolUnavailable`` with a clear reason when it cannot."""

    async def close(self) -> None: ...

    async def ping(self) -> bool: ...

    # edge side
    async def append(self, items: Sequence[SpoolItem], dead: Sequence[DeadLetter] = ()) -> None:
        """Durable when this returns: only then may the client get its 200."""

    # worker side
    async def due_groups(self, now: int | None = None) -> list[DueGroup]: ...

    async def next_attempt_ms(self, now: int | None = None) -> int | None: ...

    async def claim(self, key: str, *, limit: int, max_bytes: int, now: int | None = None) -> list[ClaimedItem]: ...

    async def settle(
        self,
        *,
        ack: Sequence[Any] = (),
        dead: Mapping[Any, str | tuple[str, str]] | None = None,
        retry: Sequence[tuple[Sequence[Any], int, str]] = (),
        release: Sequence[tuple[Sequence[Any], int]] = (),
        response: tuple[Any, ...] | None = None,
        now: int | None = None,
    ) -> None:
        """One request's verdict at once. ``dead``: row -> (reason code, text), or a bare text
        (code "other"); the code is what dead letters are counted and replayed by."""

    async def release(self, row_ids: Sequence[Any], not_before_ms: int = 0) -> None: ...

    # read side (/debug, CLI)
    async def stats(self) -> dict[str, Any]: ...

    async def events_for_session(self, device_id: str, session_id: int | None = None, limit: int = 100) -> list[dict[str, Any]]: ...

    async def dead_letters(self, limit: int = 100) -> list[dict[str, Any]]:
        """Most recent first; each with ``reason`` (text) and ``reason_code``."""

    async def dead_by_reason(self) -> dict[str, int]:
        """Dead letters counted by reason code, most frequent first."""

    async def undelivered(self, which: str, limit: int = 20) -> list[dict[str, Any]]:
        """Items ``"in_flight"`` (sent, answer awaited) or ``"retrying"`` (waiting to be sent again)."""

    async def recent_responses(self, limit: int = 50) -> list[dict[str, Any]]: ...

    async def depth_by_target(self) -> list[dict[str, Any]]:
        """Undelivered (``pending``: waiting, retrying or in flight) and dead items per (target, source)."""

    async def replay_dead_letters(self, selection: ReplayFilter | None = None) -> int:
        """Dead letters with an item that match ``selection`` back to be delivered; returns how many."""

    async def forget(self, device_ids: Sequence[str], user_id: str | None) -> dict[str, int]:
        """Delete a person's items in every state (not deletion requests); counts by state."""

    async def user_devices(self, user_id: str) -> list[str]:
        """Device ids seen with this user id."""


def open_queue(settings: Any, metrics: Metrics | None = None) -> DeliveryQueue:
    """The queue ``[delivery] queue`` names: empty for the SQLite spool in ``data_dir``, or a Redis URL."""
    d = settings.delivery
    if d.queue and is_redis_url(d.queue):
        from edgeproxy.delivery.redis_queue import RedisQueue

        return RedisQueue.from_url(d.queue, metrics=metrics, retention=d.retention, claim_idle=d.claim_idle,
                                   min_replicas=d.queue_min_replicas)
    if d.queue:
        raise ValueError(f"delivery.queue: must be empty (the SQLite spool) or a redis:// URL, got {d.queue!r}")
    return Spool(settings.data_dir / "spool.sqlite3", metrics=metrics, retention=d.retention, max_bytes=d.max_spool_size,
                 synchronous=DURABILITY.get(d.durability, "FULL"))


def describe(settings: Any) -> str:
    """Where the queue lives, for start-up logs (never the URL's password)."""
    d = settings.delivery
    if d.queue:
        from urllib.parse import urlsplit

        parts = urlsplit(d.queue)
        return f"Redis stream at {parts.hostname or parts.path}{':' + str(parts.port) if parts.port else ''}"
    return str(settings.data_dir / "spool.sqlite3")
