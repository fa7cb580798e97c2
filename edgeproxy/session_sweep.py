"""The idle sweep: end events for sessions whose visitor simply left.

No browser plugin can send these: the page is gone. Every ``interval`` the sweeper claims the
sessions idle past the timeout from the session store (``store.expired`` hands each one out
once, across processes sharing Redis), turns each into a session-end message and spools it like
any tracking call. Runs only when ``[sessions] session_events`` is on.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Callable

from edgeproxy.config import Settings
from edgeproxy.delivery.queue import DeliveryQueue
from edgeproxy.delivery.records import DeadLetter, SpoolItem, SpoolUnavailable
from edgeproxy.identity.session_events import session_message
from edgeproxy.identity.store import SessionStore, StoreUnavailable
from edgeproxy.mapping import Mapper
from edgeproxy.pipeline import spool_records

log = logging.getLogger("edgeproxy.sessions")

CLAIM_LIMIT = 500


class SessionSweeper:
    def __init__(self, store: SessionStore, mapper: Mapper, spool: DeliveryQueue, settings: Settings, *,
                 wake: Callable[[], None] | None = None, clock: Callable[[], float] = time.time):
        self.store = store
        self.mapper = mapper
        self.spool = spool
        self.timeout_ms = int(settings.sessions.timeout * 1000)
        self.event_name = settings.sessions.session_end_event
        # Well inside the memory store's margin (an entry lives timeout + max(timeout, 60 s)).
        self.interval = max(0.05, min(30.0, settings.sessions.timeout / 4))
        self.wake = wake
        self.clock = clock
        self._task: asyncio.Task[None] | None = None

    async def run_once(self, now_ms: int | None = None) -> int:
        """Claim and end every session idle past the timeout; returns how many were ended."""
        now_ms = int(self.clock() * 1000) if now_ms is None else now_ms
        ended = 0
        while True:
            claimed = await self.store.expired(now_ms - self.timeout_ms, CLAIM_LIMIT)
            if not claimed:
                break
            items: list[SpoolItem] = []
            dead: list[DeadLetter] = []
            for device_id, state in claimed:
                message = session_message("end", self.event_name, device_id, state)
                more_items, more_dead = spool_records(self.mapper, message, device_id=device_id,
                                                      session_id=state.session_id, received_ms=now_ms)
                items += more_items
                dead += more_dead
            await self.spool.append(items, dead)
            ended += len(claimed)
            if len(claimed) < CLAIM_LIMIT:
                break
        if ended and self.wake is not None:
            self.wake()
        return ended

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.run_once()
            except (SpoolUnavailable, StoreUnavailable) as exc:
                # The claimed sessions' end events are lost for this round; client events are not
                # affected (they get 503s of their own). Say so rather than crash the loop.
                log.error("session sweep failed: %s", exc)
            except Exception:  # the loop must survive anything a round throws
                log.exception("session sweep failed")

    async def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="edgeproxy-session-sweep")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
