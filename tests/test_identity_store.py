"""One session-store suite, run against every backend (memory, and a real redis-server).

The Redis tests start their own redis-server on a free port in a temporary directory and
are skipped, saying why, when the binary is not installed.
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import time
from dataclasses import replace
from datetime import datetime, timezone

import orjson
import pytest

from edgeproxy.config import Settings
from edgeproxy.identity.redis_store import RedisSessionStore
from edgeproxy.identity.service import CookieIdentity, IdentityService
from edgeproxy.identity.sessions import SessionState, touch
from edgeproxy.identity.store import (
    MemorySessionStore,
    SessionStore,
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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory):
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server): Redis backend not tested")
    port = free_port()
    workdir = tmp_path_factory.mktemp("redis")
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(workdir), "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(200):  # at most ~10 s
            if proc.poll() is not None:
                pytest.fail(f"redis-server exited with code {proc.returncode}")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        break
            except OSError:
                time.sleep(0.05)
        else:
            pytest.fail("redis-server did not answer PING within 10 s")
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


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


async def test_update_returns_old_and_new(backend):
    make, _, _ = backend
    store = make()
    assert await store.get("d1") is None
    old, new = await store.update("d1", lambda s: st() if s is None else replace(s, event_count=s.event_count + 1))
    assert old is None and new == st()
    old, new = await store.update("d1", lambda s: replace(s, event_count=s.event_count + 1))
    assert old == st() and new.event_count == 2
    assert await store.get("d1") == new
    assert await store.get("d2") is None


async def test_states_round_trip_every_field(backend):
    make, _, _ = backend
    store = make()
    full = SessionState(T0, T0 + 5, 9, "user-é", T0 - 100, "analytics.js", "Mozilla/5.0")
    await store.update("dévice/1 with spaces", lambda s: full)
    assert await store.get("dévice/1 with spaces") == full


async def test_concurrent_updates_lose_nothing(backend):
    make, _, _ = backend
    store = make()

    def inc(s):
        return st() if s is None else replace(s, event_count=s.event_count + 1)

    await asyncio.gather(*(store.update("d1", inc) for _ in range(100)))
    assert (await store.get("d1")).event_count == 100


async def test_concurrent_touches_for_a_new_device_make_one_session(backend):
    make, _, _ = backend
    store = make()
    results = await asyncio.gather(
        *(store.update("d1", lambda s, t=T0 + i: touch(s, t, TIMEOUT)[0]) for i in range(50))
    )
    assert len({new.session_id for _, new in results}) == 1
    assert sum(old is None for old, _ in results) == 1


async def test_list_sessions_most_recent_first_with_query_and_limit(backend):
    make, clock, _ = backend
    store = make()
    for i, (dev, user) in enumerate([("dev-a", "Alice"), ("dev-b", None), ("other", "bob-alice"), ("dev-c", "carol")]):
        clock.ms = T0 + i
        await store.update(dev, lambda s, i=i, user=user: st(T0 + i * MIN, user=user))
    assert [d for d, _ in await store.list_sessions()] == ["dev-c", "other", "dev-b", "dev-a"]
    assert [d for d, _ in await store.list_sessions(limit=2)] == ["dev-c", "other"]
    assert [d for d, _ in await store.list_sessions(query="dev-")] == ["dev-c", "dev-b", "dev-a"]
    assert [d for d, _ in await store.list_sessions(query="ALICE")] == ["other", "dev-a"]
    assert await store.list_sessions(query="nobody") == []


async def test_expired_claims_each_idle_session_once(backend):
    make, clock, _ = backend
    store = make()
    for i in range(5):
        await store.update(f"idle-{i}", lambda s, i=i: st(T0 + i))
    clock.ms = T0 + 40 * MIN
    await store.update("active", lambda s: st(T0 + 40 * MIN))
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
        await a.update(f"idle-{i}", lambda s, i=i: st(T0 + i))
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
    await store.update("old", lambda s: st())
    clock.ms = T0 + ttl_for(TIMEOUT) - 1
    await store.update("new", lambda s: st())
    assert await store.get("old") is not None
    clock.ms = T0 + ttl_for(TIMEOUT)
    assert await store.get("old") is None
    await store.update("newer", lambda s: st())  # purges
    assert len(store) == 2


async def test_memory_expired_entry_is_not_handed_to_update():
    clock = Clock(T0)
    store = MemorySessionStore(timeout_ms=TIMEOUT, clock=clock)
    await store.update("d", lambda s: st())
    clock.ms = T0 + ttl_for(TIMEOUT) + 1
    seen = []
    await store.update("d", lambda s: seen.append(s) or st(T0 + 2 * TIMEOUT))
    assert seen == [None]


async def test_memory_cap_evicts_the_least_recently_touched():
    store = MemorySessionStore(timeout_ms=TIMEOUT, max_sessions=3, clock=Clock(T0))
    for d in ("a", "b", "c"):
        await store.update(d, lambda s: st())
    await store.update("a", lambda s: s)  # a is fresh again
    await store.update("d", lambda s: st())
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
    await store.update("replayed", lambda s: st(T0))
    assert await store.expired(clock.ms - TIMEOUT, limit=10) == []
    clock.ms += TIMEOUT + 1
    assert [d for d, _ in await store.expired(clock.ms - TIMEOUT, limit=10)] == ["replayed"]


# --- Redis backend specifics ----------------------------------------------------------------------


async def test_redis_keys_expire_with_the_time_to_live(redis_url):
    store = await _redis_store(redis_url, Clock(T0))
    try:
        await store._redis.flushdb()
        await store.update("d", lambda s: st())
        pttl = await store._redis.pttl("edgeproxy:s:d")
        assert 0 < pttl <= ttl_for(TIMEOUT)
    finally:
        await store.close()


async def test_redis_unreadable_state_reads_as_absent(redis_url):
    store = await _redis_store(redis_url, Clock(T0))
    try:
        await store._redis.flushdb()
        await store._redis.set("edgeproxy:s:d", b"{not json")
        assert await store.get("d") is None
        _, new = await store.update("d", lambda s: st() if s is None else pytest.fail("saw garbage"))
        assert new == st()
    finally:
        await store.close()


async def test_redis_optimistic_retry_sees_a_concurrent_write(redis_url):
    """Another process commits between WATCH/GET and EXEC: the update retries with its state."""
    import redis as sync_redis

    store = await _redis_store(redis_url, Clock(T0))
    other_process = sync_redis.Redis.from_url(redis_url)
    try:
        await store._redis.flushdb()
        await store.update("d", lambda s: st())
        calls: list[SessionState | None] = []

        def fn(s):
            calls.append(s)
            if len(calls) == 1:  # a write from another connection lands mid-transaction
                other_process.set("edgeproxy:s:d", orjson.dumps(replace(s, event_count=50).to_dict()))
            return replace(s, event_count=s.event_count + 1)

        old, new = await store.update("d", fn)
        assert [c.event_count for c in calls] == [1, 50]
        assert old.event_count == 50 and new.event_count == 51
        assert (await store.get("d")).event_count == 51
    finally:
        other_process.close()
        await store.close()


async def test_redis_gives_up_after_bounded_retries(redis_url, monkeypatch):
    import redis as sync_redis

    from edgeproxy.identity import redis_store

    monkeypatch.setattr(redis_store, "MAX_ATTEMPTS", 3)
    store = await _redis_store(redis_url, Clock(T0))
    other_process = sync_redis.Redis.from_url(redis_url)
    try:
        await store._redis.flushdb()

        def always_raced(s):
            other_process.set("edgeproxy:s:d", orjson.dumps(st().to_dict()))
            return st()

        with pytest.raises(redis_store.StoreConflictError, match="3 optimistic races"):
            await store.update("d", always_raced)
    finally:
        other_process.close()
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
