"""One session-store suite, run against every backend (memory, and a real redis-server).

The Redis tests start their own redis-server on a free port in a temporary directory and
are skipped, saying why, when the binary is not installed.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import datetime, timezone

import orjson
import pytest
from redis.asyncio import Redis
from redis_server import free_port, redis_server

from edgeproxy.config import Settings
from edgeproxy.identity.redis_store import RedisSessionStore
from edgeproxy.identity.service import CookieIdentity, IdentityService
from edgeproxy.identity.sessions import SessionState
from edgeproxy.identity.store import (
    MemorySessionStore,
    SessionStore,
    StoreUnavailable,
    TouchRequest,
    open_store,
    ttl_for,
)

T0 = 1_780_000_000_000
MIN = 60_000
TIMEOUT = 30 * MIN
KEY = "k" * 32


class Clock:
    """A settable wall clock (seconds), shared by a store and the test."""

    def __init__(self, ms: int):
        self.ms = ms

    def __call__(self) -> float:
        return self.ms / 1000


def st(session_id=T0, last=None, count=1, user=None) -> SessionState:
    return SessionState(session_id, session_id if last is None else last, count, user, session_id)


def at(t=T0, **fields) -> TouchRequest:
    """An event at ``t`` (a new device gets ``st(t)``)."""
    return TouchRequest(t, TIMEOUT, **fields)


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory):
    with redis_server(tmp_path_factory.mktemp("redis")) as url:
        yield url


async def _redis_store(url: str, clock: Clock) -> RedisSessionStore:
    return RedisSessionStore.from_url(url, timeout_ms=TIMEOUT, clock=clock)


@pytest.fixture(params=["memory", "redis"])
async def backend(request):
    """``(make_store, clock, name)``: each ``make_store()`` is another handle on the same data
    (the same object for memory; a new connection, like another process, for Redis)."""
    clock = Clock(T0)
    opened: list[SessionStore] = []
    if request.param == "memory":
        shared = MemorySessionStore(timeout_ms=TIMEOUT, clock=clock)

        def make():
            return shared
    else:
        url = request.getfixturevalue("redis_url")

        def make():
            opened.append(RedisSessionStore.from_url(url, timeout_ms=TIMEOUT, clock=clock))
            return opened[-1]

        await make()._redis.flushdb()
    yield make, clock, request.param
    for s in opened:
        await s.close()


# --- the contract ----------------------------------------------------------------------------------


async def test_touch_returns_old_new_and_started(backend):
    make, _, _ = backend
    store = make()
    assert await store.get("d1") is None
    assert await store.touch("d1", at()) == (None, st(), True)
    old, new, started = await store.touch("d1", at(T0 + 5, user_id="u"))
    assert (old, new, started) == (st(), SessionState(T0, T0 + 5, 2, "u", T0), False)
    assert await store.get("d1") == new
    assert await store.get("d2") is None
    old, new, started = await store.touch("d1", at(T0 + 5 + TIMEOUT + 1))  # idle past the timeout
    assert old.session_id == T0 and new == SessionState(T0 + 5 + TIMEOUT + 1, T0 + 5 + TIMEOUT + 1, 1, "u", T0)
    assert started


async def test_touch_reconciles_the_carried_state_and_adopts_a_client_id(backend):
    make, _, _ = backend
    store = make()
    old, new, started = await store.touch("new", at(T0 + 10, adopt_session_id=T0))
    assert (old, new.session_id, new.first_seen, started) == (None, T0, T0, True)
    cookie = SessionState(T0 + MIN, T0 + 2 * MIN, 7, "u", T0 - MIN)  # a newer session than the store's
    old, new, started = await store.touch("new", at(T0 + 2 * MIN, carried=cookie))
    assert old.session_id == T0 and new == SessionState(T0 + MIN, T0 + 2 * MIN, 8, "u", T0 - MIN)
    assert not started


async def test_states_round_trip_every_field(backend):
    make, _, _ = backend
    store = make()
    full = SessionState(T0, T0 + 5, 9, "user-é", T0 - 100, "analytics.js", "Mozilla/5.0 (X11; \"q\")/é")
    _, new, _ = await store.touch("dévice/1 with spaces", at(T0 + 5, carried=full))
    assert new == replace(full, event_count=10)
    assert await store.get("dévice/1 with spaces") == new


async def test_concurrent_touches_lose_nothing(backend):
    make, _, _ = backend
    store = make()
    await asyncio.gather(*(store.touch("d1", at()) for _ in range(100)))
    assert (await store.get("d1")).event_count == 100


async def test_concurrent_touches_for_a_new_device_make_one_session(backend):
    make, _, _ = backend
    store = make()
    results = await asyncio.gather(*(store.touch("d1", at(T0 + i)) for i in range(50)))
    assert len({new.session_id for _, new, _ in results}) == 1
    assert sum(old is None for old, _, _ in results) == 1
    assert sum(started for _, _, started in results) == 1


async def test_concurrent_touches_from_several_processes_one_session_id_per_session(backend):
    """Four handles (for Redis: four connections, as four processes would have) touch one
    device at once, in two visits separated by more than the timeout: each visit gets
    exactly one session id, started once, and the second visit ends the first once.

    Which event arrives first is up to the connections (and the machine's load), and the
    session's id is the time of the event that started it (a late event never moves it), so
    the id is any of the visit's event times, the same for every event of the visit."""
    make, _, _ = backend
    stores = [make() for _ in range(4)]
    second = T0 + 100 + TIMEOUT + 1
    ids: list[int] = []
    for visit, start in enumerate((T0, second)):
        results = await asyncio.gather(*(stores[i % 4].touch("d1", at(start + i % 100)) for i in range(400)))
        [session_id] = {new.session_id for _, new, _ in results}
        assert start <= session_id <= start + 99
        ids.append(session_id)
        assert sum(started for _, _, started in results) == 1
        rotated = [old for old, new, started in results if started and old is not None]
        assert [s.session_id for s in rotated] == ([] if visit == 0 else [ids[0]])
    assert (await stores[0].get("d1")) == SessionState(ids[1], second + 99, 400, None, T0)


async def test_list_sessions_most_recent_first_with_query_and_limit(backend):
    make, clock, _ = backend
    store = make()
    for i, (dev, user) in enumerate([("dev-a", "Alice"), ("dev-b", None), ("other", "bob-alice"), ("dev-c", "carol")]):
        clock.ms = T0 + i
        await store.touch(dev, at(T0 + i * MIN, user_id=user))
    assert [d for d, _ in await store.list_sessions()] == ["dev-c", "other", "dev-b", "dev-a"]
    assert [d for d, _ in await store.list_sessions(limit=2)] == ["dev-c", "other"]
    assert [d for d, _ in await store.list_sessions(query="dev-")] == ["dev-c", "dev-b", "dev-a"]
    assert [d for d, _ in await store.list_sessions(query="ALICE")] == ["other", "dev-a"]
    assert await store.list_sessions(query="nobody") == []


async def test_expired_claims_each_idle_session_once(backend):
    make, clock, _ = backend
    store = make()
    for i in range(5):
        await store.touch(f"idle-{i}", at(T0 + i))
    clock.ms = T0 + 40 * MIN
    await store.touch("active", at(T0 + 40 * MIN))
    cutoff = clock.ms - TIMEOUT
    first = await store.expired(cutoff, limit=3)
    second = await store.expired(cutoff, limit=10)
    claimed = [d for d, _ in first + second]
    assert len(first) == 3 and sorted(claimed) == [f"idle-{i}" for i in range(5)]
    assert await store.expired(cutoff, limit=10) == []
    assert await store.get("idle-0") is None and await store.get("active") is not None
    assert [d for d, _ in await store.list_sessions()] == ["active"]


async def test_expired_is_claimed_once_across_concurrent_sweepers(backend):
    make, clock, _ = backend
    a, b = make(), make()
    for i in range(20):
        await a.touch(f"idle-{i}", at(T0 + i))
    clock.ms = T0 + 40 * MIN  # idle, and still inside the store's time to live
    got = await asyncio.gather(*(s.expired(clock.ms - TIMEOUT, limit=7) for s in (a, b, a, b)))
    claimed = [d for batch in got for d, _ in batch]
    assert sorted(claimed) == sorted(f"idle-{i}" for i in range(20))


async def test_ping(backend):
    make, _, _ = backend
    assert await make().ping()


async def test_service_concurrency_one_session_for_one_new_device(backend):
    make, _, _ = backend
    service = IdentityService(Settings(), make(), [KEY], clock=lambda: T0 / 1000)
    jar = CookieIdentity()
    msgs = [_web(T0 + i, session=T0 - 500 + i) for i in range(40)]
    results = await asyncio.gather(*(service.process(m, jar, T0 + 100) for m in msgs))
    assert len({r.session.session_id for r in results}) == 1
    assert sum(r.started for r in results) == 1
    assert (await service.store.get("anon-1")).event_count == 40


async def test_two_processes_sharing_a_store_agree_on_one_session(backend):
    make, _, _ = backend
    services = [IdentityService(Settings(), make(), [KEY], clock=lambda: T0 / 1000) for _ in range(2)]
    calls = [services[i % 2].process(_web(T0 + i), CookieIdentity(), T0 + 100) for i in range(40)]
    results = await asyncio.gather(*calls)
    assert len({r.session.session_id for r in results}) == 1
    assert (await services[0].store.get("anon-1")).event_count == 40


def _web(t: int, session: int | None = None) -> dict:
    m = {
        "type": "track",
        "event": "E",
        "anonymousId": "anon-1",
        "timestamp": datetime.fromtimestamp(t / 1000, tz=timezone.utc).isoformat(),
        "context": {"library": {"name": "analytics.js"}},
    }
    if session is not None:
        m["integrations"] = {"Actions Amplitude": {"session_id": session}}
    return m


# --- memory backend: bounded memory --------------------------------------------------------------


async def test_memory_entries_expire_after_the_time_to_live():
    clock = Clock(T0)
    store = MemorySessionStore(timeout_ms=TIMEOUT, clock=clock)
    await store.touch("old", at())
    clock.ms = T0 + ttl_for(TIMEOUT) - 1
    await store.touch("new", at())
    assert await store.get("old") is not None
    clock.ms = T0 + ttl_for(TIMEOUT)
    assert await store.get("old") is None
    await store.touch("newer", at())  # purges
    assert len(store) == 2


async def test_memory_expired_entry_is_not_touched():
    clock = Clock(T0)
    store = MemorySessionStore(timeout_ms=TIMEOUT, clock=clock)
    await store.touch("d", at())
    clock.ms = T0 + ttl_for(TIMEOUT) + 1
    # An event late enough to still join the expired session, had the store kept it.
    assert await store.touch("d", at(T0 + 1)) == (None, st(T0 + 1), True)


async def test_memory_cap_evicts_the_least_recently_touched():
    store = MemorySessionStore(timeout_ms=TIMEOUT, max_sessions=3, clock=Clock(T0))
    for d in ("a", "b", "c"):
        await store.touch(d, at())
    await store.touch("a", at())  # a is fresh again
    await store.touch("d", at())
    assert len(store) == 3 and store.evicted == 1
    assert await store.get("b") is None
    assert all([await store.get(d) for d in ("a", "c", "d")])


async def test_memory_cap_must_be_positive():
    with pytest.raises(ValueError, match="sessions.max_sessions"):
        MemorySessionStore(timeout_ms=TIMEOUT, max_sessions=0)


async def test_memory_sweep_finds_a_late_only_device_once_its_touch_ages():
    # A device whose only events are old replays was touched now: the sweep, which scans in
    # touch order, finds it one timeout later rather than at once (documented trade-off).
    clock = Clock(T0 + 60 * MIN)
    store = MemorySessionStore(timeout_ms=TIMEOUT, clock=clock)
    await store.touch("replayed", at(T0))
    assert await store.expired(clock.ms - TIMEOUT, limit=10) == []
    clock.ms += TIMEOUT + 1
    assert [d for d, _ in await store.expired(clock.ms - TIMEOUT, limit=10)] == ["replayed"]


# --- Redis backend specifics ----------------------------------------------------------------------


async def test_redis_keys_expire_with_the_time_to_live(redis_url):
    store = await _redis_store(redis_url, Clock(T0))
    try:
        await store._redis.flushdb()
        await store.touch("d", at())
        pttl = await store._redis.pttl("edgeproxy:s:d")
        assert ttl_for(TIMEOUT) - 5_000 < pttl <= ttl_for(TIMEOUT)
        assert await store._redis.zscore("edgeproxy:idx", "d") == T0
    finally:
        await store.close()


async def test_redis_unreadable_state_reads_as_absent(redis_url):
    store = await _redis_store(redis_url, Clock(T0))
    try:
        await store._redis.flushdb()
        for garbage in (b"{not json", b"[1, 2]", b'{"session_id": "1"}', b'{"session_id": 1.5, "last_event_ms": 1, '
                        b'"event_count": 1, "first_seen": 1}', orjson.dumps({**st().to_dict(), "user_id": 5})):
            await store._redis.set("edgeproxy:s:d", garbage)
            assert await store.get("d") is None
            assert await store.touch("d", at()) == (None, st(), True)
    finally:
        await store.close()


async def test_redis_reads_states_written_before_the_script(redis_url):
    """Keys written by the Python encoder (every earlier version) keep working, and the script
    writes the same format: byte for byte where JSON allows only one spelling."""
    from edgeproxy.identity.redis_store import _encode

    store = await _redis_store(redis_url, Clock(T0))
    try:
        await store._redis.flushdb()
        earlier = SessionState(T0, T0 + 5, 3, "user-é", T0 - 100, "analytics.js", "Mozilla/5.0 (X11; \\u00e9)")
        await store._redis.set("edgeproxy:s:d", _encode(earlier))
        old, new, started = await store.touch("d", at(T0 + 6))
        assert (old, new, started) == (earlier, replace(earlier, last_event_ms=T0 + 6, event_count=4), False)
        assert orjson.loads(await store._redis.get("edgeproxy:s:d")) == new.to_dict()
        plain = SessionState(T0, T0, 1, "user-é", T0, "analytics.js", "Mozilla 5.0 (X11)")  # no '/', no controls
        await store.touch("p", at(carried=replace(plain, event_count=0)))
        assert await store._redis.get("edgeproxy:s:p") == _encode(plain)
        escaped = SessionState(T0, T0, 1, 'q"\\/\n\x00😀', T0, None, "")
        await store.touch("e", at(carried=replace(escaped, event_count=0)))
        assert orjson.loads(await store._redis.get("edgeproxy:s:e")) == escaped.to_dict()
    finally:
        await store.close()


async def test_redis_large_integers_stay_exact_and_are_written_in_full(redis_url):
    """Lua numbers are doubles: epoch ms (and anything below 2**53) must come back exact and
    be written as digits, never as 1.78e+12; beyond 2**53 the touch is refused, not rounded."""
    store = await _redis_store(redis_url, Clock(T0))
    try:
        await store._redis.flushdb()
        big = 2**53 - 1
        for t in (T0, 9_999_999_999_999, 10**15 + 1, big - 1):
            _, new, _ = await store.touch(f"d{t}", at(t))
            raw = await store._redis.get(f"edgeproxy:s:d{t}")
            assert new.session_id == t and f'"session_id":{t},'.encode() in raw and b"e+" not in raw
        carried = SessionState(big - 10, big - 10, 2**40, None, 1)
        _, new, _ = await store.touch("huge", at(big - 1, carried=carried))
        assert new == SessionState(big - 10, big - 1, 2**40 + 1, None, 1)
        assert await store.touch("adopt", at(T0, adopt_session_id=10**18 - 1)) == (None, st(T0), True)
        with pytest.raises(ValueError, match="t_ms"):
            await store.touch("d", at(2**53))
        with pytest.raises(ValueError, match="carried.event_count"):
            await store.touch("d", at(carried=replace(st(), event_count=2**60)))
    finally:
        await store.close()


async def test_redis_touch_is_one_round_trip(redis_url):
    """One command per touch, EVALSHA, once the script is loaded: no WATCH/GET/MULTI/EXEC."""
    store = await _redis_store(redis_url, Clock(T0))
    admin = Redis.from_url(redis_url)
    sent: list[str] = []
    execute = store._redis.execute_command

    async def counting(*args, **options):
        sent.append(str(args[0]).upper())
        return await execute(*args, **options)

    try:
        await store._redis.flushdb()
        await admin.script_flush()
        await store.touch("d", at())  # NOSCRIPT: redis-py loads the script once, then retries
        assert await admin.script_exists(store._touch.sha) == [True]
        await admin.config_resetstat()
        store._redis.execute_command = counting
        for i in range(50):
            await store.touch("d", at(T0 + i))
        assert sent == ["EVALSHA"] * 50
        stats = await admin.info("commandstats")  # counts the script's own commands too
        assert stats["cmdstat_evalsha"]["calls"] == 50
        assert not {"cmdstat_watch", "cmdstat_multi", "cmdstat_exec", "cmdstat_script|load"} & set(stats)
    finally:
        await admin.aclose()
        await store.close()


async def test_redis_down_is_store_unavailable():
    store = RedisSessionStore.from_url(f"redis://127.0.0.1:{free_port()}/0", timeout_ms=TIMEOUT)
    try:
        with pytest.raises(StoreUnavailable, match="Redis session store"):
            await store.touch("d", at())
    finally:
        await store.close()


async def test_redis_unreachable_ping_is_false():
    store = RedisSessionStore.from_url(f"redis://127.0.0.1:{free_port()}/0", timeout_ms=TIMEOUT)
    try:
        assert await store.ping() is False
    finally:
        await store.close()


# --- open_store ---------------------------------------------------------------------------------


def test_open_store_memory_uses_the_configured_cap():
    s = Settings()
    s.sessions.max_sessions = 7
    store = open_store(s)
    assert isinstance(store, MemorySessionStore) and store._max == 7


def test_open_store_redis_url():
    s = Settings()
    s.sessions.store = "redis://127.0.0.1:1/0"
    assert isinstance(open_store(s), RedisSessionStore)


def test_open_store_rejects_other_values_naming_the_key():
    s = Settings()
    s.sessions.store = "memcached://x"
    with pytest.raises(ValueError, match="sessions.store"):
        open_store(s)


def test_redis_replies_are_parsed_by_hiredis() -> None:
    """pyproject asks for ``redis[hiredis]``: redis-py then parses replies in C instead of
    Python, ~10% more single-event calls/s with Redis sessions (bench A/B, two alternations)."""
    import redis.asyncio.connection
    import redis.utils

    assert redis.utils.HIREDIS_AVAILABLE
    assert redis.asyncio.connection.DefaultParser.__name__ == "_AsyncHiredisParser"
