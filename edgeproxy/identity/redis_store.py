"""Redis session store, for several edgeproxy processes sharing sessions.

Layout: one string per device (``<prefix>s:<device id>``, the state as JSON, expiring
``ttl_for(timeout)`` after its last touch) and one sorted set (``<prefix>idx``) of device
ids scored by their last event time, for listing and for the session-end sweep.

Why WATCH/MULTI rather than a Lua script for ``update``: the rule is a Python function
(``sessions.touch``), so the read-modify-write is optimistic: watch the key, compute, and
commit only if nobody wrote it meanwhile, else retry with the fresh state. Concurrent
callers in one process first queue on a per-device lock, so retries happen only between
processes. The sweep's claim needs no Python, so it is a Lua script (atomic, one trip).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from typing import Any, Callable

import orjson
from redis.asyncio import Redis
from redis.exceptions import RedisError, WatchError

from edgeproxy.identity.sessions import SessionState
from edgeproxy.identity.store import StoreUnavailable, UpdateFn, ttl_for

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 200
LIST_CHUNK = 500
LIST_MAX_SCAN = 50_000

# KEYS[1] index; ARGV: cutoff (exclusive), limit, key prefix. Returns id, state, id, state…
# The state keys are derived in the script, so this needs a single Redis (not Redis Cluster).
_CLAIM_EXPIRED = """
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
local out = {}
for _, id in ipairs(ids) do
  local raw = redis.call('GET', ARGV[3] .. id)
  redis.call('ZREM', KEYS[1], id)
  if raw then
    redis.call('DEL', ARGV[3] .. id)
    table.insert(out, id)
    table.insert(out, raw)
  end
end
return out
"""


class StoreConflictError(StoreUnavailable):
    """An update kept losing optimistic races; the caller should answer 503 (retry)."""


def _encode(state: SessionState) -> bytes:
    return orjson.dumps(state.to_dict())


def _decode(raw: bytes | str | None, device_id: str) -> SessionState | None:
    if raw is None:
        return None
    try:
        return SessionState.from_dict(orjson.loads(raw))
    except (orjson.JSONDecodeError, ValueError, TypeError) as exc:
        log.warning("ignoring an unreadable session state in Redis", extra={"device_id": device_id, "error": str(exc)})
        return None


class RedisSessionStore:
    def __init__(
        self,
        redis: Redis,
        *,
        timeout_ms: int,
        prefix: str = "edgeproxy:",
        ttl_ms: int | None = None,
        clock: Callable[[], float] = time.time,
    ):
        self._redis = redis
        self._ttl_ms = ttl_for(timeout_ms) if ttl_ms is None else ttl_ms
        self._key_prefix = f"{prefix}s:"
        self._index = f"{prefix}idx"
        self._clock = clock
        # device id -> [lock, users]: callers in this process queue instead of racing.
        self._locks: dict[str, list[Any]] = {}
        self._claim = redis.register_script(_CLAIM_EXPIRED)

    @classmethod
    def from_url(cls, url: str, **kwargs: Any) -> RedisSessionStore:
        # Bounded timeouts: a dead Redis must turn into a 503 quickly, not a hung request.
        return cls(Redis.from_url(url, socket_timeout=2.0, socket_connect_timeout=2.0), **kwargs)

    def _key(self, device_id: str) -> str:
        return self._key_prefix + device_id

    async def update(self, device_id: str, fn: UpdateFn) -> tuple[SessionState | None, SessionState]:
        entry = self._locks.get(device_id)
        if entry is None:
            entry = self._locks[device_id] = [asyncio.Lock(), 0]
        entry[1] += 1
        try:
            async with entry[0]:
                return await self._update(device_id, fn)
        except (RedisError, OSError) as exc:
            raise StoreUnavailable(f"Redis session store: {exc}") from exc
        finally:
            entry[1] -= 1
            if entry[1] == 0:
                del self._locks[device_id]

    async def _update(self, device_id: str, fn: UpdateFn) -> tuple[SessionState | None, SessionState]:
        key = self._key(device_id)
        async with self._redis.pipeline(transaction=True) as pipe:
            for attempt in range(MAX_ATTEMPTS):
                try:
                    await pipe.watch(key)
                    old = _decode(await pipe.get(key), device_id)
                    new = fn(old)
                    now_ms = int(self._clock() * 1000)
                    pipe.multi()
                    pipe.set(key, _encode(new), px=self._ttl_ms)
                    pipe.zadd(self._index, {device_id: new.last_event_ms})
                    # Index entries whose key has long expired (when no sweep runs).
                    pipe.zremrangebyscore(self._index, "-inf", f"({now_ms - 2 * self._ttl_ms}")
                    await pipe.execute()
                    return old, new
                except WatchError:
                    await pipe.reset()
                    await asyncio.sleep(random.uniform(0, 0.001 * min(attempt, 20)))
        raise StoreConflictError(f"session update for one device lost {MAX_ATTEMPTS} optimistic races in a row")

    async def get(self, device_id: str) -> SessionState | None:
        return _decode(await self._redis.get(self._key(device_id)), device_id)

    async def list_sessions(self, *, query: str = "", limit: int = 100) -> list[tuple[str, SessionState]]:
        needle = query.casefold()
        found: list[tuple[str, SessionState]] = []
        start = 0
        while len(found) < limit and start < LIST_MAX_SCAN:
            ids = await self._redis.zrevrange(self._index, start, start + LIST_CHUNK - 1)
            if not ids:
                break
            start += len(ids)
            names = [i.decode() if isinstance(i, bytes) else i for i in ids]
            raws = await self._redis.mget([self._key(n) for n in names])
            for device_id, raw in zip(names, raws):
                state = _decode(raw, device_id)
                if state is None:
                    continue
                if needle and needle not in device_id.casefold() and needle not in (state.user_id or "").casefold():
                    continue
                found.append((device_id, state))
                if len(found) >= limit:
                    break
        return found

    async def expired(self, older_than_ms: int, limit: int) -> list[tuple[str, SessionState]]:
        flat = await self._claim(keys=[self._index], args=[int(older_than_ms), int(limit), self._key_prefix])
        claimed: list[tuple[str, SessionState]] = []
        for i in range(0, len(flat), 2):
            device_id = flat[i].decode() if isinstance(flat[i], bytes) else flat[i]
            state = _decode(flat[i + 1], device_id)
            if state is not None:
                claimed.append((device_id, state))
        return claimed

    async def ping(self) -> bool:
        try:
            return bool(await self._redis.ping())
        except (RedisError, OSError):
            return False

    async def close(self) -> None:
        await self._redis.aclose()
