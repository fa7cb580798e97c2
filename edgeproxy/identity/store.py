"""The session store: one interface, an in-memory backend here, Redis in ``redis_store``.

Shaped like aiohttp-session's storage classes: callers see ``SessionStore`` only and the
same test suite runs against every backend.

The one operation that matters is ``touch``: apply one event to a device's session as an
atomic read-modify-write, so concurrent events for one device (one process, or several
sharing Redis) always see the latest state and never start two sessions for one. It is
declarative (a ``TouchRequest``, not a callable) so that a remote backend can run the rule
next to the data in one round trip: the Redis store runs it as one Lua script, which
duplicates ``TouchRequest.apply`` (a differential property test keeps the two in step).

Why a hand-written dict rather than aiocache's memory backend: aiocache keeps one event
loop timer per key when a ttl is given; ``bench/bench_session_store.py`` measures both.
Here every entry has the same time to live, so the least recently touched entry is always
the next to expire: one ``OrderedDict`` in touch order gives expiry, the ``max_sessions``
cap (evict least recently touched) and the session-end sweep in O(1) per entry, without
timers.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Protocol, runtime_checkable

from edgeproxy.config_checks import is_redis_url
from edgeproxy.identity.sessions import SessionState, reconcile, touch

TouchResult = tuple[SessionState | None, SessionState, bool]  # (old, new, started)


@dataclass(slots=True)
class TouchRequest:
    """One event applied to a device's session: ``sessions.touch(sessions.reconcile(stored,
    carried), t_ms, timeout_ms, ...)`` on whatever state the store holds at that moment.

    ``carried`` is the state the request's signed session cookie carried (None without one);
    the other fields are ``sessions.touch``'s arguments.

    Not frozen: one is built per event, and a frozen dataclass pays an ``object.__setattr__``
    per field (~1.1 µs to build instead of ~0.8); nothing changes or hashes a request once built.
    """

    t_ms: int
    timeout_ms: int
    carried: SessionState | None = None
    adopt_session_id: int | None = None
    user_id: str | None = None
    library: str | None = None
    user_agent: str | None = None
    consent: str | None = None

    def apply(self, stored: SessionState | None) -> tuple[SessionState, bool]:
        """The rule itself (pure): the new state and whether a session started."""
        return touch(
            reconcile(stored, self.carried),
            self.t_ms,
            self.timeout_ms,
            adopt_session_id=self.adopt_session_id,
            user_id=self.user_id,
            library=self.library,
            user_agent=self.user_agent,
            consent=self.consent,
        )


def ttl_for(timeout_ms: int) -> int:
    """How long a store keeps a device after its last touch: the timeout plus a margin.

    The margin (another timeout, at least a minute) leaves the session-end sweep time to
    claim a session before the store forgets it, and lets late events still find it.
    """
    return timeout_ms + max(timeout_ms, 60_000)


class StoreUnavailable(Exception):
    """The session store cannot answer now (Redis down or unreachable): the edge answers 503."""


@runtime_checkable
class SessionStore(Protocol):
    async def touch(self, device_id: str, request: TouchRequest) -> TouchResult:
        """Atomically replace the device's state with ``request.apply(state)``.

        Returns ``(old, new, started)``: the state before (None when the store had none, or
        only an expired or unreadable one), the state stored, and whether a session started.
        """

    async def get(self, device_id: str) -> SessionState | None: ...

    async def list_sessions(self, *, query: str = "", limit: int = 100) -> list[tuple[str, SessionState]]:
        """Most recently active first; ``query`` is a case-insensitive substring of the
        device id or the user id."""

    async def expired(self, older_than_ms: int, limit: int) -> list[tuple[str, SessionState]]:
        """Claim up to ``limit`` sessions whose last event is before ``older_than_ms``.

        Claimed sessions are removed, so each is handed out once (across processes too):
        the session-end sweep emits one end event per session.
        """

    async def forget(self, device_ids: Iterable[str]) -> int:
        """Delete these devices' session state (``edgeproxy forget``); returns how many existed."""
        ...

    async def ping(self) -> bool: ...

    async def close(self) -> None: ...


class MemorySessionStore:
    """Process-local store with bounded memory (time to live and a size cap)."""

    def __init__(
        self,
        *,
        timeout_ms: int,
        max_sessions: int = 1_000_000,
        ttl_ms: int | None = None,
        clock: Callable[[], float] = time.time,
    ):
        if max_sessions < 1:
            raise ValueError(f"sessions.max_sessions: must be at least 1, got {max_sessions}")
        self._ttl_ms = ttl_for(timeout_ms) if ttl_ms is None else ttl_ms
        self._max = max_sessions
        self._clock = clock
        # device id -> (state, last touch in wall-clock ms); ordered oldest touch first.
        self._entries: OrderedDict[str, tuple[SessionState, int]] = OrderedDict()
        self.evicted = 0  # entries dropped by the size cap (for tests and /debug)

    def __len__(self) -> int:
        return len(self._entries)

    def _now(self) -> int:
        return int(self._clock() * 1000)

    def _purge(self, now: int) -> None:
        entries = self._entries
        cutoff = now - self._ttl_ms
        while entries:
            _, (_, touched) = next(iter(entries.items()))
            if touched > cutoff:
                break
            entries.popitem(last=False)

    def _live(self, device_id: str, now: int) -> SessionState | None:
        entry = self._entries.get(device_id)
        if entry is None or entry[1] <= now - self._ttl_ms:
            return None
        return entry[0]

    async def touch(self, device_id: str, request: TouchRequest) -> TouchResult:
        # No await between read and write: atomic on the event loop without a lock.
        now = self._now()
        self._purge(now)
        old = self._live(device_id, now)
        new, started = request.apply(old)
        self._entries[device_id] = (new, now)
        self._entries.move_to_end(device_id)
        while len(self._entries) > self._max:
            self._entries.popitem(last=False)
            self.evicted += 1
        return old, new, started

    async def get(self, device_id: str) -> SessionState | None:
        return self._live(device_id, self._now())

    async def list_sessions(self, *, query: str = "", limit: int = 100) -> list[tuple[str, SessionState]]:
        now = self._now()
        self._purge(now)
        needle = query.casefold()
        found: list[tuple[str, SessionState]] = []
        for device_id, (state, _) in reversed(self._entries.items()):
            if len(found) >= limit:
                break
            if needle and needle not in device_id.casefold() and needle not in (state.user_id or "").casefold():
                continue
            found.append((device_id, state))
        found.sort(key=lambda item: item[1].last_event_ms, reverse=True)
        return found

    async def expired(self, older_than_ms: int, limit: int) -> list[tuple[str, SessionState]]:
        # Entries are in touch order and an event is never touched before it happened (the
        # service clamps event times to the receive time), so the scan stops at the first
        # entry touched after the cutoff: O(claimed), not O(sessions). A device whose only
        # events are late replays is found one timeout later, when its touch has aged.
        now = self._now()
        self._purge(now)
        claimed: list[tuple[str, SessionState]] = []
        for device_id, (state, touched) in self._entries.items():
            if len(claimed) >= limit or touched >= older_than_ms:
                break
            if state.last_event_ms < older_than_ms:
                claimed.append((device_id, state))
        for device_id, _ in claimed:
            del self._entries[device_id]
        return claimed

    async def forget(self, device_ids: Iterable[str]) -> int:
        return sum(self._entries.pop(device_id, None) is not None for device_id in device_ids)

    async def ping(self) -> bool:
        return True

    async def close(self) -> None:
        self._entries.clear()


def open_store(settings: Any, *, clock: Callable[[], float] = time.time) -> SessionStore:
    """The store ``[sessions] store`` names: ``"memory"`` or a ``redis://`` URL."""
    s = settings.sessions
    timeout_ms = int(s.timeout * 1000)
    if s.store == "memory":
        return MemorySessionStore(timeout_ms=timeout_ms, max_sessions=s.max_sessions, clock=clock)
    if is_redis_url(s.store):
        from edgeproxy.identity.redis_store import RedisSessionStore

        return RedisSessionStore.from_url(s.store, timeout_ms=timeout_ms, clock=clock)
    raise ValueError(f"sessions.store: must be \"memory\" or a redis:// URL, got {s.store!r}")
