"""Speed, measured: edgeproxy's ingest, latency, pass-through, session memory and forwarding CPU.

Every HTTP figure is a ratio to two references measured in the same run on the same machine,
so it survives a noisy, shared or slow host: nginx answering 204 to the same POST (the
physical reference: accept a connection, read the request, answer) and a bare aiohttp
handler on uvloop that only reads the body (the framework reference).

What runs (all on loopback; servers under test pinned to core 0 with ``taskset``, the load
generator ``wrk -t1`` and the stand-ins for the outside world on core 1):

- ``ingest``: ``POST /_e/v1/t``, one ~1.2 KB analytics.js track call per request, a returning
  visitor (the Cookie header carries the cookies edgeproxy set on a first request); memory
  sessions, SQLite spool with group commit, delivery ON to a local Amplitude responder (nginx
  answering ``200 {"code":200,"events_ingested":…}`` at /2/httpapi);
- with ``ingest``, a third reference: edgeproxy's own tracking handler with a queue that keeps
  nothing (``_handler_only.py``: parse, cookies, session touch, mapping, response; no spool,
  no flush, no delivery), so each run tells how much of a call is that work and how much the
  durable spool and the delivery around it;
- ``new``: the same with no cookie and a new anonymousId and messageId per request (wrk Lua),
  so every request starts a session;
- ``batch``: ``POST /_e/v1/b`` with 20 events per request, reported in events/s;
- ``redis``: the returning visitor with ``[sessions] store`` on a local redis-server;
- ``crash``: the returning visitor with ``[delivery] durability = "process_crash"`` (the 200
  at commit instead of after the WAL's fdatasync), which shows how much of the latency is the
  disk flush rather than the CPU;
- ``website``: GET of a 100 KB HTML page through edgeproxy (``[origin] url``) versus straight
  from the origin (nginx static file), and through a bare aiohttp streaming proxy (the
  framework reference for this figure: what any aiohttp proxy pays before doing anything);
- ``memory``: bytes per 100,000 live sessions, MemorySessionStore (tracemalloc) and Redis
  (``INFO memory`` used_memory), written through the stores' ``touch()``;
- ``forwarding``: CPU time of the delivery path per event (spool → worker → local responder),
  to Amplitude and as the relay to Segment, the median of FORWARD_RUNS alternating runs each;
- ``browser``: browser-shaped traffic in events per edgeproxy CPU-second, from accepting the
  call to delivering its events (the edgeproxy process's CPU time from before a round until
  delivery caught up after it): analytics.js's default, one ``/v1/t`` request per event,
  against ``[cdn] browser_batching``, one ``/v1/b`` request per 10 events of a visitor;
- ``compiled``: the handler alone with the hot path's mypyc build (``edgeproxy/compiled.py``)
  against the same with ``EDGEPROXY_PURE_PYTHON=1``: what the compiled build pays, served;
  and in-process, steadier: the compiled modules' own work, and the whole handler awaited
  without sockets (``_handler_calls.py``), single-event calls and batches of 20;
- ``trail``: what the cockpit's event trail costs: edgeproxy as it runs (durable spool,
  delivery) with ``[debug] trail_size`` 1,000 (the default) against ``trail_size = 0``, and
  the bytes a full trail holds (tracemalloc, the real handler in-process, with against
  without). Not against the handler alone: there the queue keeps nothing, so the item's JSON,
  which the spool makes anyway and the trail shares, would be counted as the trail's.

Method: a warm-up per server, then rounds interleaved across servers (round 1 of every server,
then round 2 in the reverse order …, so drift in the machine's load hits all alike), the median per figure. Each
round reports the rate at saturation (32 connections) and p50/p99 latency at saturation and
at ~1,000 req/s (wrk has no rate option: each connection waits a random 0–20 ms between
requests, so the connections arrive independently rather than in bursts, and a 1 s probe per
server sizes the pool, 10 connections or more, so a slower server is not measured at a lower
rate; the achieved rate is printed). Any non-2xx answer or socket error aborts the run: a benchmark of 503s is worthless.
After each edgeproxy round the harness waits until delivery caught up, so a backlog never
steals the next server's CPU.

Run (``make bench`` runs it with the defaults, about 7 minutes):

    .venv/bin/python bench/bench_ingest.py [--quick] [--rounds 3] [--seconds 5] [--warmup 2]
        [--connections 32] [--only ingest|new|batch|redis|crash|website|trail|browser|compiled|memory|forwarding] [--json FILE]

It prints a Markdown table (benchmark | result | ratio / target | met?) for README.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the helper modules next to this file

import _servers as srv  # noqa: E402
import _wrk as wrk  # noqa: E402
from _inproc_runs import measure_forwarding, measure_hot_path, measure_memory, measure_trail_memory, med  # noqa: E402
from _scenarios import BROWSER_BATCH, Target, build_targets  # noqa: E402
from _table import markdown, table_rows  # noqa: E402
from _servers import START, Processes, Server, log  # noqa: E402

SCENARIOS = ("ingest", "new", "batch", "redis", "crash", "website", "trail", "browser", "compiled", "memory",
             "forwarding")
SINGLE_EVENT = ("ingest", "new", "redis", "crash")  # the /v1/t rows, each also compared with the handler alone
HTTP_SCENARIOS = {"ingest", "new", "batch", "redis", "crash", "website", "trail", "browser", "compiled"}
SESSIONS = 100_000
FORWARD_EVENTS = 20_000
# Forwarding is measured this many times per target, the targets alternating, and the median
# reported: one run swung 5 to 10 µs an event with this machine's noise (2026-12-07).
FORWARD_RUNS = 5
HANDLER_CALLS = 5_000  # distinct single-event calls through the handler in-process (batches: a fifth)
HANDLER_RUNS = 3  # per build, the builds alternating
TRAIL_EVENTS = 3_000  # through the handler for the trail's memory: the 1,000-entry ring full thrice
DRAIN_TIMEOUT_S = 90.0
MODERATE_RATE = 1000.0  # req/s
MAX_MODERATE_CONNECTIONS = 30


# ---------------------------------------------------------------------------- rounds

def drain(edge: Server, problems: list[str]) -> None:
    """Wait until edgeproxy delivered every accepted event, so no backlog runs into the next round.

    A backlog that does not clear means delivery cannot keep up with ingest: reported as a
    problem, not fatal (the ingest figure itself is still what clients see).
    """
    deadline = time.monotonic() + DRAIN_TIMEOUT_S
    while True:
        edge.check_alive()
        m = srv.metrics(edge)
        backlog = m.get("edgeproxy_events_accepted_total", 0) - m.get("edgeproxy_delivered_items_total", 0) \
            - m.get("edgeproxy_dead_letters_total", 0)
        if backlog <= 0:
            return
        if time.monotonic() > deadline:
            problems.append(f"{edge.name}: {backlog:.0f} events still undelivered {DRAIN_TIMEOUT_S:.0f} s after a round")
            return
        time.sleep(0.1)


def measure(target: Target, *, seconds: float, connections: int, moderate: bool, problems: list[str]) -> wrk.WrkResult:
    script = target.moderate if moderate else target.saturation
    assert script is not None
    conns = target.mod_connections if moderate else connections
    cpu0 = srv.cpu_seconds(target.edge.proc.pid) if target.edge is not None else 0.0
    result = wrk.run(target.url, script, seconds=seconds, connections=conns,
                     label=f"{target.label} ({'~1,000 req/s' if moderate else 'saturation'})")
    if target.edge is not None:
        # Below 100 % at saturation, edgeproxy waits (fsync, Redis) rather than computes.
        target.cpu_busy.append((srv.cpu_seconds(target.edge.proc.pid) - cpu0) / max(seconds, 1))
    if target.edge is not None:
        target.edge.check_alive()
        drain(target.edge, problems)
        target.cpu_to_drained.append(srv.cpu_seconds(target.edge.proc.pid) - cpu0)
        target.events.append(result.requests * target.events_per_request)
    return result


def calibrate(target: Target, problems: list[str]) -> None:
    """Connections for ~1,000 req/s: each connection sends one request per (delay + latency).

    With a fixed 10 connections a server with 5 ms latency would be measured at 670 req/s,
    not at the rate the target names; one short run finds its latency and scales the pool.
    """
    for _ in range(2):  # a second probe: more connections also raise the latency a little
        probe = measure(target, seconds=1, connections=0, moderate=True, problems=problems)
        if probe.rps >= 0.95 * MODERATE_RATE:
            return
        scaled = round(target.mod_connections * MODERATE_RATE / max(probe.rps, 1.0))
        target.mod_connections = max(wrk.MODERATE_CONNECTIONS, min(MAX_MODERATE_CONNECTIONS, scaled))


def run_rounds(targets: Sequence[Target], args: argparse.Namespace, problems: list[str]) -> None:
    """Warm-up, then saturation rounds and moderate-rate rounds, interleaved across targets."""
    for t in targets:
        log(f"warm-up {t.label}")
        measure(t, seconds=args.warmup, connections=args.connections, moderate=False, problems=problems)
        if t.moderate is not None:
            calibrate(t, problems)
    for moderate in (False, True):
        for r in range(args.rounds):
            # The order reverses every round: whichever server runs first after another's round
            # was seen to lose a few per cent, which reversing cancels out in the medians.
            for t in (targets if r % 2 == 0 else list(reversed(targets))):
                if moderate and t.moderate is None:
                    continue
                res = measure(t, seconds=args.seconds, connections=args.connections, moderate=moderate, problems=problems)
                (t.mod if moderate else t.sat).append(res)
                conns = t.mod_connections if moderate else args.connections
                cpu = f"  edgeproxy CPU {t.cpu_busy[-1]:4.0%}" if t.edge is not None else ""
                log(f"{'~1k/s' if moderate else 'sat  '} round {r + 1}/{args.rounds} {t.label:<34} c={conns:<3}"
                    f"{res.rps * t.events_per_request:>9,.0f}/s  p50 {res.p50_us / 1000:6.2f} ms  "
                    f"p99 {res.p99_us / 1000:6.2f} ms{cpu}")


# ---------------------------------------------------------------------------- results

def per_round(a: Sequence[wrk.WrkResult], b: Sequence[wrk.WrkResult], fn: Callable[[wrk.WrkResult, wrk.WrkResult], float]) -> float:
    """Median over rounds of ``fn(a_round, b_round)``: ratios taken within a round share its noise."""
    return med([fn(x, y) for x, y in zip(a, b)])


def summarize(targets: Sequence[Target]) -> dict[str, Any]:
    """Medians of every raw figure, then ratios and differences to the references per round."""
    by = {t.key: t for t in targets}
    out: dict[str, Any] = {}
    for t in targets:
        out[t.key] = {
            "label": t.label,
            "events_per_s": med([r.rps * t.events_per_request for r in t.sat]),
            "requests_per_s": med([r.rps for r in t.sat]),
            "sat_p50_ms": med([r.p50_us / 1000 for r in t.sat]),
            "sat_p99_ms": med([r.p99_us / 1000 for r in t.sat]),
        }
        if t.cpu_busy:
            out[t.key]["edgeproxy_cpu_busy_all_runs"] = [round(c, 3) for c in t.cpu_busy]
        if t.cpu_to_drained and len(t.cpu_to_drained) > len(t.sat):  # the warm-up's run is not counted
            cpu, events = sum(t.cpu_to_drained[-len(t.sat):]), sum(t.events[-len(t.sat):])
            out[t.key]["events_per_cpu_s"] = events / cpu if cpu > 0 else float("nan")
        if t.mod:
            out[t.key].update(moderate_rps=med([r.rps for r in t.mod]), mod_p50_ms=med([r.p50_us / 1000 for r in t.mod]),
                              mod_p99_ms=med([r.p99_us / 1000 for r in t.mod]))
        for ref in ("nginx", "bare"):
            if ref in by and t.key not in ("nginx", ref):
                out[t.key][f"x_{ref}"] = per_round(t.sat, by[ref].sat, lambda a, b: a.rps * t.events_per_request / b.rps)
        if "handler" in by and t.key in SINGLE_EVENT:
            out[t.key]["x_handler"] = per_round(t.sat, by["handler"].sat, lambda a, b: a.rps / b.rps)
        if "nginx" in by and t.mod and t.key not in ("nginx", "origin", "bareproxy", "website"):
            out[t.key]["added_p50_ms"] = per_round(t.mod, by["nginx"].mod, lambda a, b: (a.p50_us - b.p50_us) / 1000)
            out[t.key]["added_p99_ms"] = per_round(t.mod, by["nginx"].mod, lambda a, b: (a.p99_us - b.p99_us) / 1000)
    if "pure" in by and "handler" in by:
        out["pure"]["x_compiled"] = per_round(by["handler"].sat, by["pure"].sat, lambda a, b: a.rps / b.rps)
    if "notrail" in by and "trail" in by:
        h, q = by["trail"], by["notrail"]
        out["notrail"]["x_trail_on"] = per_round(h.sat, q.sat, lambda a, b: a.rps / b.rps)
        if h.mod and q.mod:
            out["notrail"]["trail_added_p50_ms"] = per_round(h.mod, q.mod, lambda a, b: (a.p50_us - b.p50_us) / 1000)
    if "website" in by and "origin" in by:
        w, o = by["website"], by["origin"]
        out["website"]["x_origin"] = per_round(w.sat, o.sat, lambda a, b: a.rps / b.rps)
        out["website"]["added_p50_ms"] = per_round(w.mod, o.mod, lambda a, b: (a.p50_us - b.p50_us) / 1000)
        out["website"]["added_p99_ms"] = per_round(w.mod, o.mod, lambda a, b: (a.p99_us - b.p99_us) / 1000)
        if "bareproxy" in by:
            b = by["bareproxy"]
            out["bareproxy"]["x_origin"] = per_round(b.sat, o.sat, lambda x, y: x.rps / y.rps)
            out["bareproxy"]["added_p50_ms"] = per_round(b.mod, o.mod, lambda x, y: (x.p50_us - y.p50_us) / 1000)
            out["website"]["x_bareproxy"] = per_round(w.sat, b.sat, lambda x, y: x.rps / y.rps)
            out["website"]["over_bareproxy_p50_ms"] = per_round(w.mod, b.mod, lambda x, y: (x.p50_us - y.p50_us) / 1000)
    return out


# ---------------------------------------------------------------------------- main

def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 round of 2 s, 1 s warm-up, smaller in-process runs")
    parser.add_argument("--rounds", type=int, default=3, help="measured rounds per server (median reported)")
    parser.add_argument("--seconds", type=float, default=5.0, help="length of one round")
    parser.add_argument("--warmup", type=float, default=2.0, help="warm-up per server before the rounds")
    parser.add_argument("--connections", type=int, default=32, help="wrk connections at saturation")
    parser.add_argument("--only", action="append", choices=SCENARIOS, metavar="NAME",
                        help=f"run only this scenario (repeatable): {', '.join(SCENARIOS)}")
    parser.add_argument("--json", type=Path, help="also write the results (and the table) to this file")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.seconds, args.warmup = 1, 2.0, 1.0
    args.sessions = SESSIONS // 5 if args.quick else SESSIONS
    args.forward_events = FORWARD_EVENTS // 4 if args.quick else FORWARD_EVENTS
    args.forward_runs = 1 if args.quick else FORWARD_RUNS
    args.handler_calls = HANDLER_CALLS // 5 if args.quick else HANDLER_CALLS
    args.handler_runs = 1 if args.quick else HANDLER_RUNS
    return args


def run(args: argparse.Namespace) -> dict[str, Any]:
    only = set(args.only or SCENARIOS)
    for tool in ("wrk", "nginx", "redis-server"):
        srv.find_tool(tool)
    problems: list[str] = []
    results: dict[str, Any] = {"settings": {"rounds": args.rounds, "seconds": args.seconds, "warmup": args.warmup,
                                            "connections": args.connections, "scenarios": sorted(only)}}
    with tempfile.TemporaryDirectory(prefix="edgeproxy-bench-") as tmp:
        Path(tmp).chmod(0o755)  # nginx started as root serves files as `nobody`
        procs = Processes(Path(tmp))
        try:
            # Every edgeproxy gets a live Amplitude stand-in, even for the website (its cookie request is an event).
            needs_responder = bool(only & HTTP_SCENARIOS) or "forwarding" in only
            responder = srv.start_amplitude_responder(procs) if needs_responder else None
            if only & HTTP_SCENARIOS:
                targets = build_targets(procs, only, Path(tmp), responder)
                edges = {t.edge.name: t.edge for t in targets if t.edge is not None}
                rss_start = {name: srv.rss_mib(e.proc.pid) for name, e in edges.items()}
                run_rounds(targets, args, problems)
                results["http"] = summarize(targets)
                results["edgeproxy_rss_mib"] = {name: {"start": rss_start[name], "end": srv.rss_mib(e.proc.pid)}
                                                for name, e in edges.items()}
                results["edgeproxy_metrics"] = {name: check_edge(e, problems) for name, e in edges.items()}
                # The in-process figures below run on the servers' core: nothing else may run
                # there meanwhile (an idle edgeproxy still wakes for its timers, ~0.6 % of a core).
                procs.stop([s for s in procs.servers if s is not responder])
            if "compiled" in only:
                results["hot_path"] = measure_hot_path(args.handler_calls, args.handler_runs)
            if "trail" in only:
                results["trail_memory"] = measure_trail_memory(TRAIL_EVENTS // 3 if args.quick else TRAIL_EVENTS)
            if "memory" in only:
                results["memory"] = measure_memory(procs, args.sessions, per=SESSIONS)
            if "forwarding" in only:
                assert responder is not None
                results.update(measure_forwarding(responder, args.forward_events, args.forward_runs))
        finally:
            procs.close()
    results["problems"] = problems
    return results


def check_edge(edge: Server, problems: list[str]) -> dict[str, float]:
    """edgeproxy's own account of the run: rejected events and failed deliveries are problems."""
    m = srv.metrics(edge)
    keep = {k: v for k, v in m.items() if "{" not in k and k.endswith("_total")}
    for name in ("edgeproxy_events_rejected_total", "edgeproxy_dead_letters_total", "edgeproxy_mapping_refused_total"):
        if m.get(name):
            problems.append(f"{edge.name}: {name} = {m[name]:.0f}")
    for key, value in m.items():
        if key.startswith("edgeproxy_deliveries_total{") and 'outcome="ok"' not in key and value:
            problems.append(f"{edge.name}: {key} = {value:.0f}")
    return keep


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    results = run(args)
    rows = table_rows(results, sessions=SESSIONS, browser_batch=BROWSER_BATCH)
    table = markdown(rows)
    elapsed = time.monotonic() - START
    results["table"] = table
    results["rows"] = [dict(zip(("benchmark", "result", "ratio_target", "met"), r)) for r in rows]
    results["runtime_s"] = elapsed
    print()
    print(f"edgeproxy speed, {args.rounds} × {args.seconds:g} s per figure (medians), server on core {srv.SUT_CORE}, "
          f"wrk -t1 on core {srv.LOAD_CORE}; {elapsed:.0f} s in all")
    print()
    print(table)
    if "edgeproxy_rss_mib" in results:
        print()
        print("edgeproxy RSS, started → after the run: " + ", ".join(
            f"{k} {v['start']:.0f} → {v['end']:.0f} MiB" for k, v in results["edgeproxy_rss_mib"].items()))
    if results["problems"]:
        print()
        print("problems seen in edgeproxy:")
        for p in results["problems"]:
            print(f"  - {p}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=lambda o: asdict(o)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
