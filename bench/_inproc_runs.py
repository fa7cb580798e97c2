"""The bench's in-process figures: each measurement of ``_inproc.py`` run in a fresh process on
the server core, repeated and summarised as its table rows need.

Apart from ``bench_ingest.py`` (the HTTP rounds, their summary and the run's order) so each
file keeps one concern; these need no load generator, only the Amplitude stand-in for
forwarding and a Redis for the Redis store's memory.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any, Sequence

import _servers as srv
from _servers import BenchError, Processes, Server, log


def med(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def inproc(what: str, *extra: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run one measurement of ``_inproc.py`` in a fresh process on the server core."""
    argv = srv.pinned([sys.executable, str(Path(__file__).with_name("_inproc.py")), what, *extra], srv.SUT_CORE)
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=600, env=env)
    if proc.returncode != 0:
        raise BenchError(f"bench: {what} failed:\n{proc.stdout}\n{proc.stderr}")
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


def measure_memory(procs: Processes, sessions: int, *, per: int) -> dict[str, Any]:
    """Session memory written through each store (the memory store, Redis, a hostile client's
    worst case), scaled to ``per`` sessions."""
    log(f"memory: MemorySessionStore, {sessions:,} sessions")
    store = inproc("memory-store", "--sessions", str(sessions))
    redis = srv.start_redis(procs, "redis-memory")
    log(f"memory: RedisSessionStore, {sessions:,} sessions")
    red = inproc("memory-redis", "--url", f"redis://127.0.0.1:{redis.port}/0", "--sessions", str(sessions))
    worst_n = min(sessions, 20_000)
    log(f"memory: worst-case strings through the identity service, {worst_n:,} sessions")
    worst = inproc("memory-worst", "--sessions", str(worst_n))
    scale = per / sessions
    return {"memory_store_mib": store["bytes"] * scale / 2**20, "redis_mib": red["bytes"] * scale / 2**20,
            "sessions_written": sessions, "redis_updates_per_s": red["updates_per_s"],
            "worst_bytes_per_session": worst["bytes"] / worst_n}


def measure_hot_path(calls: int, runs: int) -> dict[str, Any]:
    log("compiled: normalize + session touch + mapping per event, compiled and pure Python")
    base = {k: v for k, v in os.environ.items() if k != "EDGEPROXY_PURE_PYTHON"}
    pure_env = {**base, "EDGEPROXY_PURE_PYTHON": "1"}
    built, pure = inproc("hot-path", env=base), inproc("hot-path", env=pure_env)
    out = {"compiled_us": built["us_per_event"], "pure_us": pure["us_per_event"], "status": built["status"],
           "relay_compiled_us": built["relay_body_us"], "relay_pure_us": pure["relay_body_us"],
           "cookies_built_us": built["cookies_us"], "cookies_pure_us": pure["cookies_us"]}
    # The whole handler, awaited in-process: steadier than its HTTP rows, so the build's effect
    # on a call can be read (builds alternating, the median of ``runs`` each).
    for shape, extra in (("single", ()), ("batch", ("--batch",))):
        n = str(calls if shape == "single" else max(1, calls // 5))
        log(f"compiled: the handler awaited in-process, {n} distinct {shape} calls, compiled and pure Python, x{runs}")
        per: dict[str, list[float]] = {"compiled": [], "pure": []}
        for _ in range(runs):
            for build, env in (("compiled", base), ("pure", pure_env)):
                per[build].append(inproc("handler-calls", "--calls", n, *extra, env=env)["us_per_event"])
        out[f"calls_{shape}"] = {build: med(values) for build, values in per.items()}
    return out


def measure_trail_memory(events: int) -> dict[str, Any]:
    log(f"trail: bytes held after {events:,} events through the handler, trail_size 1,000 and 0")
    on, off = (inproc("trail-memory", "--events", str(events), "--trail-size", str(n)) for n in (1000, 0))
    entries = min(events, 1000)
    held = on["bytes"] - off["bytes"]
    return {"entries": entries, "bytes": held, "mib": held / 2**20, "bytes_per_entry": held / entries}


def measure_forwarding(responder: Server, events: int, runs: int) -> dict[str, dict[str, Any]]:
    """``runs`` fresh runs per target (Amplitude, the relay), alternating; each target's median
    run is reported, with the spread of all of them."""
    out: dict[str, list[dict[str, Any]]] = {"forwarding": [], "relay": []}
    for i in range(runs):
        for key, target in (("forwarding", "amplitude"), ("relay", "segment")):
            log(f"forwarding {i + 1}/{runs}: {events:,} events spool → worker → local responder, as {target} items")
            f = inproc("forwarding", "--endpoint-url", responder.url(), "--events", str(events), "--target", target)
            out[key].append({"cpu_us_per_event": f["cpu_s"] / f["events"] * 1e6, "events": f["events"],
                             "requests": f["requests"], "wall_s": f["wall_s"],
                             "event_loop_us_per_event": f["event_loop_cpu_s"] / f["events"] * 1e6,
                             "other_threads_us_per_event": f["other_threads_cpu_s"] / f["events"] * 1e6})
    result = {}
    for key, all_runs in out.items():
        ranked = sorted(all_runs, key=lambda r: r["cpu_us_per_event"])
        result[key] = {**ranked[(len(ranked) - 1) // 2], "runs_us": [r["cpu_us_per_event"] for r in all_runs]}
    return result
