"""Redis session store, for several edgeproxy processes sharing sessions.

Layout: one string per device (``<prefix>s:<device id>``, the state as JSON, expiring
``ttl_for(timeout)`` after its last touch) and one sorted set (``<prefix>idx``) of device
ids scored by their last event time, for listing and for the session-end sweep.

Why a Lua script for ``touch``: the touch is the one store call on every tracking event,
and it must be atomic across processes (two processes touching one new device at once must
not start two sessions). A script runs inside Redis with nothing interleaved, in one round
trip (EVALSHA; redis-py loads the script once per server on NOSCRIPT), where an optimistic
WATCH/GET/MULTI/EXEC costs three round trips uncontended and retries under contention.
The price is that ``_TOUCH`` restates the Python rule (``TouchRequest.apply``, i.e.
``sessions.reconcile`` then ``sessions.touch``) in Lua; ``tests/test_store_differential.py``
applies random request sequences to both and requires identical results at every step.

Numbers: Redis' Lua has only doubles, exact for integers up to 2**53 (epoch ms are ~2**41).
Integers go to the script as decimal strings, come back formatted with ``%d`` (never
``1.78e+12``), and a request whose integers are not exact in a double is refused
(``ValueError``) rather than rounded; a stored value the script cannot read (not JSON of
a session state, or integers beyond 2**53) counts as absent, as unreadable values do in
``get``. The script writes the JSON object ``_encode`` writes (same keys in the same order,
integers in full; only how strings escape a few characters, such as '/', may differ), so
keys from earlier versions keep working, in both directions. The sweep's claim is a script too (atomic, one trip).
"""

from __future__ import annotations

import logging
import time
from typing import Any, Callable, Iterable

import orjson
from redis.asyncio import Redis
from redis.exceptions import RedisError

from edgeproxy import redis_replies as reply
from edgeproxy.identity.sessions import SessionState, adoptable_at
from edgeproxy.identity.store import StoreUnavailable, TouchRequest, TouchResult, ttl_for

log = logging.getLogger(__name__)

LIST_CHUNK = 500
LIST_MAX_SCAN = 50_000
_EXACT = 2**53  # integers of smaller magnitude are exact in a double (Lua's only number)

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

# TouchRequest.apply on the stored state, then SET with expiry and the index update.
# KEYS[1] the device's state key, KEYS[2] the index.
# ARGV[1] device id (the index member), [2] t_ms, [3] timeout_ms, [4] ttl_ms (PX),
#   [5] index entries scored below this are pruned (their keys have long expired),
#   [6] adopt_session_id, or '' when absent or not adoptable for this t_ms (checked in Python:
#       it depends on the request only), [7] user_id, [8] library, [9] user_agent, [10] consent,
#   [11] '1' when a carried state follows in [12..19]: session_id, last_event_ms,
#       event_count, first_seen, user_id, library, user_agent, consent.
# Optional strings are '' for None and '=' .. value otherwise (so '' stays distinct from None).
# Integers are decimal strings. Returns {old, new, started, unreadable}: old and new as JSON
# in the stored format (old false when absent or unreadable), started 0/1, unreadable 1 when
# a stored value existed but was not a session state (treated as absent, like ``_decode``).
_TOUCH = """
local EXACT = 9007199254740992

local function opt(a)
  if a == '' then return nil end
  return string.sub(a, 2)
end

-- Python's ``a or b`` for str | None: '' and None are both false.
local function either(a, b)
  if a ~= nil and a ~= '' then return a end
  return b
end

local function decode(raw)
  local ok, data = pcall(cjson.decode, raw)
  if not ok or type(data) ~= 'table' then return nil end
  local s = {}
  for _, name in ipairs({'session_id', 'last_event_ms', 'event_count', 'first_seen'}) do
    local v = data[name]
    if type(v) ~= 'number' or v ~= math.floor(v) or v >= EXACT or v <= -EXACT then return nil end
    s[name] = v
  end
  for _, name in ipairs({'user_id', 'library', 'user_agent', 'consent'}) do
    local v = data[name]
    if v == cjson.null then v = nil end
    if v ~= nil and type(v) ~= 'string' then return nil end
    s[name] = v
  end
  return s
end

local function str(v)
  if v == nil then return 'null' end
  return cjson.encode(v)
end

-- The stored format: SessionState.to_dict() as compact JSON, integers written in full.
local function encode(s)
  return string.format(
    '{"session_id":%d,"last_event_ms":%d,"event_count":%d,"user_id":%s,"first_seen":%d,"library":%s,"user_agent":%s,"consent":%s}',
    s.session_id, s.last_event_ms, s.event_count, str(s.user_id), s.first_seen, str(s.library), str(s.user_agent),
    str(s.consent))
end

-- sessions.reconcile
local function reconcile(stored, carried)
  if carried == nil then return stored end
  if stored == nil then return carried end
  if carried.session_id > stored.session_id then
    return {session_id = carried.session_id, last_event_ms = carried.last_event_ms,
            event_count = carried.event_count, user_id = either(carried.user_id, stored.user_id),
            first_seen = math.min(stored.first_seen, carried.first_seen),
            library = either(carried.library, stored.library),
            user_agent = either(carried.user_agent, stored.user_agent),
            consent = either(carried.consent, stored.consent)}
  end
  if carried.session_id == stored.session_id and
      (carried.last_event_ms > stored.last_event_ms or carried.event_count > stored.event_count) then
    return {session_id = stored.session_id,
            last_event_ms = math.max(stored.last_event_ms, carried.last_event_ms),
            event_count = math.max(stored.event_count, carried.event_count), user_id = stored.user_id,
            first_seen = math.min(stored.first_seen, carried.first_seen),
            library = stored.library, user_agent = stored.user_agent, consent = stored.consent}
  end
  return stored
end

-- sessions.touch (the adopt id arrives pre-checked by sessions.adoptable_at)
local function touch(state, t, timeout, adopt, user_id, library, user_agent, consent)
  if state == nil then
    local session_id = adopt or t
    return {session_id = session_id, last_event_ms = math.max(session_id, t), event_count = 1, user_id = user_id,
            first_seen = math.min(session_id, t), library = library, user_agent = user_agent,
            consent = consent}, 1
  end
  if user_id == nil then user_id = state.user_id end
  if library == nil then library = state.library end
  if user_agent == nil then user_agent = state.user_agent end
  if consent == nil then consent = state.consent end
  local first_seen = math.min(state.first_seen, t)
  if t - state.last_event_ms > timeout then
    return {session_id = t, last_event_ms = t, event_count = 1, user_id = user_id, first_seen = first_seen,
            library = library, user_agent = user_agent, consent = consent}, 1
  end
  return {session_id = state.session_id, last_event_ms = math.max(state.last_event_ms, t),
          event_count = state.event_count + 1, user_id = user_id, first_seen = first_seen,
          library = library, user_agent = user_agent, consent = consent}, 0
end

local raw = redis.call('GET', KEYS[1])
local old = nil
local unreadable = 0
if raw then
  old = decode(raw)
  if old == nil then unreadable = 1 end
end
local carried = nil
if ARGV[11] == '1' then
  carried = {session_id = tonumber(ARGV[12]), last_event_ms = tonumber(ARGV[13]), event_count = tonumber(ARGV[14]),
             first_seen = tonumber(ARGV[15]), user_id = opt(ARGV[16]), library = opt(ARGV[17]),
             user_agent = opt(ARGV[18]), consent = opt(ARGV[19])}
end
local adopt = nil
if ARGV[6] ~= '' then adopt = tonumber(ARGV[6]) end
local new, started = touch(reconcile(old, carried), tonumber(ARGV[2]), tonumber(ARGV[3]), adopt,
                           opt(ARGV[7]), opt(ARGV[8]), opt(ARGV[9]), opt(ARGV[10]))
local new_json = encode(new)
redis.call('SET', KEYS[1], new_json, 'PX', ARGV[4])
redis.call('ZADD', KEYS[2], string.format('%d', new.last_event_ms), ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', '(' .. ARGV[5])
local old_json = false
if old ~= nil then old_json = encode(old) end
return {old_json, new_json, started, unreadable}
"""


def _encode(state: SessionState) -> bytes:
    """The stored format, as earlier versions wrote it from Python and ``_TOUCH``'s ``encode``
    still writes it (the tests use this to check that existing keys keep working)."""
    return orjson.dumps(state.to_dict())


def _decode(raw: bytes | str | None, device_id: str) -> SessionState | None:
    if raw is None:
        return None
    try:
        return SessionState.from_dict(orjson.loads(raw))
    except (orjson.JSONDecodeError, ValueError, TypeError, AttributeError) as exc:  # AttributeError: not an object
        log.warning("ignoring an unreadable session state in Redis", extra={"device_id": device_id, "error": str(exc)})
        return None


def _int(value: int, name: str) -> str:
    """An integer for the touch script, as a decimal string; refused unless exact in a double."""
    if not -_EXACT < value < _EXACT:
        raise ValueError(f"session touch: {name} = {value} is beyond what Redis' Lua numbers hold exactly")
    return str(value)


def _opt(value: str | None) -> str:
    return "" if value is None else "=" + value


def _touch_args(device_id: str, request: TouchRequest, ttl_ms: int, prune_below_ms: int) -> list[str]:
    t_ms = request.t_ms
    adopt = request.adopt_session_id
    args = [
        device_id,
        _int(t_ms, "t_ms"),
        _int(request.timeout_ms, "timeout_ms"),
        str(ttl_ms),
        str(prune_below_ms),
        # The adoption test depends on the request only: decided here, so the script never
        # sees an out-of-range id (parse_session_id allows 18 digits, beyond 2**53).
        str(adopt) if adoptable_at(adopt, t_ms) else "",
        _opt(request.user_id),
        _opt(request.library),
        _opt(request.user_agent),
        _opt(request.consent),
    ]
    carried = request.carried
    if carried is None:
        args.append("")
    else:
        args += [
            "1",
            _int(carried.session_id, "carried.session_id"),
            _int(carried.last_event_ms, "carried.last_event_ms"),
            _int(carried.event_count, "carried.event_count"),
            _int(carried.first_seen, "carried.first_seen"),
            _opt(carried.user_id),
            _opt(carried.library),
            _opt(carried.user_agent),
            _opt(carried.consent),
        ]
    return args


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
        self._touch = redis.register_script(_TOUCH)
        self._claim = redis.register_script(_CLAIM_EXPIRED)

    @classmethod
    def from_url(cls, url: str, **kwargs: Any) -> RedisSessionStore:
        # Bounded timeouts: a dead Redis must turn into a 503 quickly, not a hung request.
        return cls(Redis.from_url(url, socket_timeout=2.0, socket_connect_timeout=2.0), **kwargs)

    def _key(self, device_id: str) -> str:
        return self._key_prefix + device_id

    async def touch(self, device_id: str, request: TouchRequest) -> TouchResult:
        now_ms = int(self._clock() * 1000)
        args = _touch_args(device_id, request, self._ttl_ms, now_ms - 2 * self._ttl_ms)
        try:
            old_raw, new_raw, started, unreadable = await self._touch(
                keys=[self._key(device_id), self._index], args=args
            )
        except (RedisError, OSError) as exc:
            raise StoreUnavailable(f"Redis session store: {exc}") from exc
        if unreadable:
            log.warning("ignoring an unreadable session state in Redis", extra={"device_id": device_id})
        old = None if old_raw is None else SessionState.from_dict(orjson.loads(old_raw))
        return old, SessionState.from_dict(orjson.loads(new_raw)), bool(started)

    async def get(self, device_id: str) -> SessionState | None:
        return _decode(await self._redis.get(self._key(device_id)), device_id)

    async def list_sessions(self, *, query: str = "", limit: int = 100) -> list[tuple[str, SessionState]]:
        needle = query.casefold()
        found: list[tuple[str, SessionState]] = []
        start = 0
        while len(found) < limit and start < LIST_MAX_SCAN:
            ids = reply.members(await self._redis.zrevrange(self._index, start, start + LIST_CHUNK - 1))
            if not ids:
                break
            start += len(ids)
            names = [reply.text(i) for i in ids]
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
            device_id = reply.text(flat[i])
            state = _decode(flat[i + 1], device_id)
            if state is not None:
                claimed.append((device_id, state))
        return claimed

    async def forget(self, device_ids: Iterable[str]) -> int:
        ids = list(device_ids)
        if not ids:
            return 0
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.delete(*(self._key(d) for d in ids))
            pipe.zrem(self._index, *ids)
            deleted, _ = await pipe.execute()
        return int(deleted)

    async def ping(self) -> bool:
        try:
            return bool(await self._redis.ping())
        except (RedisError, OSError):
            return False

    async def close(self) -> None:
        await self._redis.aclose()
