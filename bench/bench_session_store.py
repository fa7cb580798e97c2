"""Microseconds per session touch: aiocache's memory backend versus edgeproxy's store.

Why this exists: aiocache's SimpleMemoryCache schedules one event-loop timer per key when
a ttl is given (and cancels the previous one on every set), which was reported at ~37 µs
per set. A session touch is a read-modify-write on every tracking event, so the choice of
backend is measured, not guessed.

Each variant performs the same work per event: read the device's state, apply
``sessions.touch``, write it back with the session time to live, over ``--devices``
distinct devices (so timers and entries accumulate as they would in production).

    .venv/bin/python bench/bench_session_store.py [--updates 200000] [--devices 50000]
        [--uvloop] [--redis redis://127.0.0.1:6379/0]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout, uninstalled

from aiocache import SimpleMemoryCache  # noqa: E402

from edgeproxy.identity.sessions import touch  # noqa: E402
from edgeproxy.identity.store import MemorySessionStore, TouchRequest, ttl_for  # noqa: E402

TIMEOUT_MS = 30 * 60 * 1000
T0 = 1_780_000_000_000


async def bench_aiocache(updates: int, devices: int) -> float:
    cache = SimpleMemoryCache()
    ttl_s = ttl_for(TIMEOUT_MS) / 1000
    start = time.perf_counter()
    for i in range(updates):
        key = f"device-{i % devices}"
        state = await cache.get(key)
        new, _ = touch(state, T0 + i, TIMEOUT_MS)
        await cache.set(key, new, ttl=ttl_s)
    elapsed = time.perf_counter() - start
    await cache.clear()
    return elapsed / updates * 1e6


async def bench_aiocache_set_only(updates: int, devices: int) -> float:
    cache = SimpleMemoryCache()
    ttl_s = ttl_for(TIMEOUT_MS) / 1000
    start = time.perf_counter()
    for i in range(updates):
        await cache.set(f"device-{i % devices}", i, ttl=ttl_s)
    elapsed = time.perf_counter() - start
    await cache.clear()
    return elapsed / updates * 1e6


async def bench_store(store, updates: int, devices: int) -> float:
    start = time.perf_counter()
    for i in range(updates):
        await store.touch(f"device-{i % devices}", TouchRequest(T0 + i, TIMEOUT_MS))
    return (time.perf_counter() - start) / updates * 1e6


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--updates", type=int, default=200_000)
    parser.add_argument("--devices", type=int, default=50_000)
    parser.add_argument("--rounds", type=int, default=3, help="best of N rounds")
    parser.add_argument("--redis", default="", help="also measure RedisSessionStore at this URL (flushes nothing; uses its own prefix)")
    args = parser.parse_args()

    variants = {
        "aiocache SimpleMemoryCache get+touch+set(ttl)": lambda: bench_aiocache(args.updates, args.devices),
        "aiocache SimpleMemoryCache set(ttl) only": lambda: bench_aiocache_set_only(args.updates, args.devices),
        "edgeproxy MemorySessionStore.touch": lambda: bench_store(
            MemorySessionStore(timeout_ms=TIMEOUT_MS), args.updates, args.devices
        ),
    }
    if args.redis:
        from edgeproxy.identity.redis_store import RedisSessionStore

        async def redis_variant() -> float:
            store = RedisSessionStore.from_url(args.redis, timeout_ms=TIMEOUT_MS, prefix="edgeproxy-bench:")
            try:
                n = min(args.updates, 20_000)
                return await bench_store(store, n, min(args.devices, n))
            finally:
                await store.close()

        variants["edgeproxy RedisSessionStore.touch (one EVALSHA)"] = redis_variant

    print(f"{args.updates} updates over {args.devices} devices, best of {args.rounds} rounds")
    results = {}
    for name, run in variants.items():
        best = float("inf")
        for _ in range(args.rounds):
            gc.collect()
            best = min(best, await run())
        results[name] = best
        print(f"  {name:<58} {best:8.2f} µs/touch")
    ours = results["edgeproxy MemorySessionStore.touch"]
    theirs = results["aiocache SimpleMemoryCache get+touch+set(ttl)"]
    print(f"  aiocache / edgeproxy memory store: {theirs / ours:.1f}x")


if __name__ == "__main__":
    if "--uvloop" in sys.argv:
        sys.argv.remove("--uvloop")
        import uvloop

        uvloop.install()
    asyncio.run(main())
