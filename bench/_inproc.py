"""Measurements that need no HTTP load: session memory and the delivery path's CPU per event.

Each runs in a fresh process (``python bench/_inproc.py NAME …`` prints one JSON object), so
the orchestrating benchmark's own allocations and threads never leak into the figure, and
pinned to the server core like the servers under test.

- ``memory-store``: tracemalloc's traced bytes of a MemorySessionStore holding N live
  sessions, built through its public ``touch()`` (or ``update()``) with ``sessions.touch`` as the edge does.
  Each session has its own device id (a UUID); user agents come from a pool of 50 distinct
  strings, shared as the identity service shares equal strings (``IdentityService._shared``).
- ``memory-worst``: the same, but every event goes through ``segment.normalize`` and the
  identity service with the largest strings they accept (1,024-character ids, 30 KB user
  agent and library name, each unique): the bound on what a hostile client can make a
  session cost.
- ``memory-redis``: Redis ``INFO memory`` used_memory after minus before N sessions written
  through RedisSessionStore's ``touch()`` (or ``update()``): state key plus index entry.
- ``forwarding``: fill a fresh SQLite spool with N mapped analytics.js track events
  (Spool.append, not timed), then run DeliveryWorker against the local 200 responder until
  every event is acknowledged; CPU = time.process_time() of the whole process (event loop
  with the spool's SQL and the HTTP client, the spool's flush thread) divided by N. Like
  ``serve``, with uvloop and the collector tuned by ``edgeproxy.cli.prepare_gc``.
  In the steady state of a server that has run a while: before the N, ``retention`` events
  (kept for /debug, 10,000 by default) are delivered untimed, so every measured event also
  pays for pruning one old delivered row, as it does in a long-running process.
  ``--target segment`` measures the relay instead: the same messages as Segment relay items
  (``pipeline.relay_record``), delivered as ``/v1/batch`` requests to the same local responder.
- ``hot-path``: µs per event of the compiled modules' work alone (``segment.normalize`` of an
  analytics.js track call, ``sessions.touch`` of a returning visitor's session, then the
  default mapping of the message, whose actions and conversions are compiled; and apart, the
  relay's request body per message, ``segment_api.request_body``, and a returning visitor's
  cookies for one call, ``identity.cookies``, not compiled: read, the session's signed, written), best of
  5 runs of 20,000; run once compiled and once with ``EDGEPROXY_PURE_PYTHON=1``.
- ``handler-calls``: µs of CPU per call of the real tracking handler awaited in-process with
  N distinct prepared requests (``_handler_calls.py``; ``--batch`` for ``/v1/b`` of 20).
- ``trail-memory``: tracemalloc's traced bytes after N analytics.js track calls of 1,000
  visitors through the real tracking handler (``_handler_only.py``'s app, in-process over
  loopback) with ``[debug] trail_size`` as given: run with 1,000 and with 0, the difference is
  what the cockpit's full event trail holds (the messages and spool items it keeps alive).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import sqlite3
import sys
import tempfile
import threading
import time
import tracemalloc
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout, uninstalled

from _wrk import USER_AGENT  # noqa: E402  (the bench directory is the script's: first on sys.path)

TIMEOUT_MS = 30 * 60 * 1000
LIBRARY = "analytics.js"
CONCURRENCY = 64  # concurrent Redis updates in flight (like requests in flight on a busy edge)


AGENTS = [USER_AGENT.replace("131.0.0.0", f"{100 + i}.0.0.0") for i in range(50)]  # a site sees a few dozen


def _install_uvloop() -> None:
    try:
        import uvloop

        uvloop.install()  # as `edgeproxy serve` does
    except ImportError:  # pragma: no cover
        pass


async def write_session(store: Any, device_id: str, t_ms: int) -> None:
    """One event for ``device_id`` through the store's public API, as the identity service calls it.

    Both API generations are supported: ``touch(device_id, TouchRequest)`` (declarative, one
    Redis round trip) and the older ``update(device_id, fn)`` with ``sessions.touch``.
    """
    agent = AGENTS[t_ms % len(AGENTS)]
    if hasattr(store, "touch"):
        from edgeproxy.identity.store import TouchRequest

        await store.touch(device_id, TouchRequest(t_ms=t_ms, timeout_ms=TIMEOUT_MS, library=LIBRARY, user_agent=agent))
    else:
        from edgeproxy.identity.sessions import touch

        await store.update(device_id, lambda state: touch(state, t_ms, TIMEOUT_MS, library=LIBRARY, user_agent=agent)[0])


async def memory_store(sessions: int) -> dict[str, Any]:
    from edgeproxy.identity.store import MemorySessionStore

    ids = [str(uuid.uuid4()) for _ in range(sessions)]  # the ids exist before: a request carries them
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    store = MemorySessionStore(timeout_ms=TIMEOUT_MS, max_sessions=sessions * 2)
    t0 = int(time.time() * 1000)
    for i, device_id in enumerate(ids):
        await write_session(store, device_id, t0 + i)
    gc.collect()
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    # The device id strings are part of what the store holds (the request that brought them is gone).
    ids_bytes = sum(sys.getsizeof(i) for i in ids)
    assert len(store) == sessions
    return {"sessions": sessions, "bytes": after - before + ids_bytes}


async def memory_worst(sessions: int) -> dict[str, Any]:
    """Bytes per session when every client sends the largest strings edgeproxy accepts: each
    event through normalize and the identity service (which bound what the store keeps), with
    a unique 1,024-character device id and user id, a 30 KB user agent and library name."""
    from datetime import datetime, timezone

    from edgeproxy import segment
    from edgeproxy.config import Settings
    from edgeproxy.identity.service import IdentityService, CookieIdentity
    from edgeproxy.identity.store import MemorySessionStore

    settings = Settings()
    settings.sessions.stamp_non_web = True  # a library name of 30 KB is not analytics.js: a server session
    store = MemorySessionStore(timeout_ms=TIMEOUT_MS, max_sessions=sessions * 2)
    service = IdentityService(settings, store, ["k" * 32])
    now = datetime.now(timezone.utc)
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for i in range(sessions):
        tag = f"{i:010d}"
        raw = {"type": "track", "event": "x", "anonymousId": tag + "a" * (segment.MAX_ID_LENGTH - 10),
               "userId": tag + "u" * (segment.MAX_ID_LENGTH - 10),
               "context": {"library": {"name": tag + "l" * 30_000}, "userAgent": tag + "m" * 30_000}}
        msg = segment.normalize(raw, path_type=None, received=now)
        await service.process(msg, CookieIdentity(), int(now.timestamp() * 1000))
        del raw, msg
    gc.collect()
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    assert len(store) == sessions
    return {"sessions": sessions, "bytes": after - before}


async def _redis_used_memory(redis: Any) -> int:
    info = await redis.info("memory")
    return int(info["used_memory"])


async def memory_redis(url: str, sessions: int) -> dict[str, Any]:
    from redis.asyncio import Redis

    from edgeproxy.identity.redis_store import RedisSessionStore

    redis = Redis.from_url(url)
    store = RedisSessionStore(redis, timeout_ms=TIMEOUT_MS, prefix="bench:")
    await redis.flushdb()
    before = await _redis_used_memory(redis)
    t0 = int(time.time() * 1000)
    started = time.perf_counter()
    queue = iter(range(sessions))

    async def writer() -> None:
        for i in queue:
            await write_session(store, str(uuid.uuid4()), t0 + i)

    await asyncio.gather(*(writer() for _ in range(CONCURRENCY)))
    elapsed = time.perf_counter() - started
    after = await _redis_used_memory(redis)
    keys = await redis.dbsize()
    await redis.flushdb()
    await redis.aclose()
    return {"sessions": sessions, "bytes": after - before, "keys": keys, "updates_per_s": sessions / elapsed}


def _messages(n: int) -> list[dict[str, Any]]:
    """``n`` analytics.js track calls of 1,000 visitors, each with its own message id."""
    from _wrk import track_event  # the same event the HTTP benchmark posts

    t = time.time()
    visitors = [str(uuid.uuid4()) for _ in range(min(n, 1000))]
    return [track_event(visitors[i % len(visitors)], f"ajs-next-{uuid.uuid4()}", t + i / 1000, seq=i) for i in range(n)]


def _trail_app(events: int, trail_size: int) -> tuple[Any, Any, list[bytes]]:
    """The real tracking handler (``_handler_only.py``'s app) with ``trail_size``, and bodies."""
    import orjson
    from _handler_only import CountingQueue, build_app

    from edgeproxy.config import Settings

    settings = Settings()
    settings.debug.trail_size = trail_size
    settings.delivery.data_dir = Path(tempfile.mkdtemp(prefix="edgeproxy-trail-"))
    settings.amplitude.api_key = "bench-dummy-api-key"
    settings.server.ip_rate_limit = 0  # all of it comes from one address, as in the HTTP benchmark
    queue = CountingQueue()
    return build_app(settings, queue), queue, [orjson.dumps(m) for m in _messages(events)]


async def _post_all(client: Any, bodies: list[bytes]) -> None:
    for body in bodies:
        async with client.post("/_e/v1/t", data=body, headers={"Content-Type": "text/plain"}) as response:
            assert response.status == 200, await response.text()


async def trail_memory(events: int, trail_size: int) -> dict[str, Any]:
    from aiohttp.test_utils import TestClient, TestServer

    app, queue, bodies = _trail_app(events, trail_size)
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    async with TestClient(TestServer(app)) as client:
        await _post_all(client, bodies)
        gc.collect()
        after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    assert queue.items == events
    return {"events": events, "trail_size": trail_size, "bytes": after - before}


def thread_cpu_s() -> dict[int, float]:
    """CPU seconds of each thread of this process (Linux /proc), by native thread id."""
    tick = os.sysconf("SC_CLK_TCK")
    out: dict[int, float] = {}
    for task in Path("/proc/self/task").iterdir():
        try:
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out[int(task.name)] = (int(fields[11]) + int(fields[12])) / tick  # utime + stime
    return out


def _checkpoint(path: Path) -> None:
    conn = sqlite3.connect(path, timeout=10)
    try:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
    finally:
        conn.close()


async def forwarding(endpoint_url: str, events: int, target: str = "amplitude") -> dict[str, Any]:
    """``target`` "amplitude": mapped events to Amplitude's HTTP API; "segment": the relay of the
    same messages to Segment's tracking API (``[segment] relay_url``), as ``/v1/batch`` requests."""
    from datetime import datetime, timezone

    from edgeproxy import segment
    from edgeproxy.config import Settings
    from edgeproxy.delivery import DeliveryWorker, Spool
    from edgeproxy.delivery.spool import now_ms
    from edgeproxy.mapping import Mapper
    from edgeproxy.metrics import Metrics
    from edgeproxy.pipeline import relay_record, spool_records

    settings = Settings()
    settings.amplitude.api_key = "bench-dummy-api-key"
    settings.server.ip_rate_limit = 0  # all of it comes from one address, as in the HTTP benchmark
    settings.amplitude.endpoint_url = endpoint_url
    if target == "segment":
        settings.segment.relay_url = endpoint_url
    mapper = Mapper(settings.amplitude.as_mapping_config(), strict_settings=False)
    with tempfile.TemporaryDirectory(prefix="edgeproxy-bench-fwd-") as tmp:
        metrics = Metrics()
        spool = Spool(Path(tmp), metrics=metrics, retention=settings.delivery.retention)
        await spool.open()
        worker = DeliveryWorker(spool, settings, metrics)
        try:
            received = now_ms()
            history = settings.delivery.retention
            pending = []
            now = datetime.now(timezone.utc)
            for raw in _messages(history + events):
                # As ingest hands them on: normalized (a relayed message then keeps the client's
                # timestamp and sentAt, which the relay moves on at send time).
                msg = segment.normalize(raw, path_type="track", received=now)
                if target == "segment":
                    items, dead = [relay_record(msg, write_key="bench-write-key", device_id=msg["anonymousId"],
                                                session_id=received, received_ms=received)], []
                else:
                    items, dead = spool_records(mapper, msg, device_id=msg["anonymousId"], session_id=received,
                                                received_ms=received)
                assert items and not dead, dead
                pending.extend(items)
            for start in range(0, len(pending), 100):  # ~ what group commit merges under load
                await spool.append(pending[start:start + 100])
            # The delivered history a running server keeps for /debug, delivered untimed.
            [group] = await spool.due_groups()
            for done in range(0, history, 500):
                claimed = await spool.claim(group.group_key, limit=min(500, history - done), max_bytes=10**7)
                await spool.ack([c.row_id for c in claimed])
            pending = pending[history:]
            # The fill's pages are copied from the WAL into the database now, untimed: that is the
            # appends' cost (measured by the ingest rows), not forwarding's.
            await asyncio.to_thread(_checkpoint, spool.path)
            gc.collect()
            # One sample read per poll (a walk of the whole registry would add its own CPU to the figure).
            labels = {"target": target, "source": "default", "endpoint": pending[0].endpoint}
            delivered = lambda: metrics.registry.get_sample_value(  # noqa: E731
                "edgeproxy_delivered_items_total", labels) or 0.0
            threads0 = thread_cpu_s()
            cpu0, wall0 = time.process_time(), time.perf_counter()
            await worker.start()
            deadline = time.monotonic() + 120
            while delivered() < len(pending):
                if time.monotonic() > deadline:
                    raise SystemExit(f"forwarding: only {delivered():.0f} of {len(pending)} delivered after 120 s")
                await asyncio.sleep(0.01)
            cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
            threads1 = thread_cpu_s()
            # Where the CPU went: the event loop (worker, SQLite, HTTP client) or other threads
            # (the spool's WAL flushes and checkpoints).
            split = {tid: threads1[tid] - threads0.get(tid, 0.0) for tid in threads1}
            loop_s = split.get(threading.main_thread().native_id, 0.0)
            others_s = sum(v for tid, v in split.items() if tid != threading.main_thread().native_id)
            requests = worker.requests_sent
        finally:
            await worker.stop(grace=5)
            await spool.close()
    return {"events": len(pending), "cpu_s": cpu, "wall_s": wall, "requests": requests,
            "event_loop_cpu_s": loop_s, "other_threads_cpu_s": others_s}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    m = sub.add_parser("memory-store")
    m.add_argument("--sessions", type=int, default=100_000)
    w = sub.add_parser("memory-worst")
    w.add_argument("--sessions", type=int, default=20_000)
    r = sub.add_parser("memory-redis")
    r.add_argument("--url", required=True)
    r.add_argument("--sessions", type=int, default=100_000)
    f = sub.add_parser("forwarding")
    f.add_argument("--endpoint-url", required=True)
    f.add_argument("--events", type=int, default=20_000)
    f.add_argument("--target", choices=("amplitude", "segment"), default="amplitude")
    hp = sub.add_parser("hot-path")
    hp.add_argument("--events", type=int, default=20_000)
    hc = sub.add_parser("handler-calls")
    hc.add_argument("--calls", type=int, default=5_000)
    hc.add_argument("--batch", action="store_true", help="/v1/b of 20 events instead of /v1/t")
    t = sub.add_parser("trail-memory")
    t.add_argument("--events", type=int, default=3_000)
    t.add_argument("--trail-size", type=int, default=1_000)
    args = parser.parse_args()
    _install_uvloop()
    if args.what == "memory-store":
        result = asyncio.run(memory_store(args.sessions))
    elif args.what == "memory-worst":
        result = asyncio.run(memory_worst(args.sessions))
    elif args.what == "memory-redis":
        result = asyncio.run(memory_redis(args.url, args.sessions))
    elif args.what == "hot-path":
        from _hot_path import hot_path

        result = hot_path(args.events)
    elif args.what == "trail-memory":
        result = asyncio.run(trail_memory(args.events, args.trail_size))
    elif args.what == "handler-calls":
        from _handler_calls import handler_calls
        from edgeproxy.cli import prepare_gc

        prepare_gc()  # as `edgeproxy serve` runs it
        result = asyncio.run(handler_calls(args.calls, args.batch))
    else:
        from edgeproxy.cli import prepare_gc

        prepare_gc()  # the collector tuned as `edgeproxy serve` runs it
        result = asyncio.run(forwarding(args.endpoint_url, args.events, args.target))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
