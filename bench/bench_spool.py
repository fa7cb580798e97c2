"""Spool appends per second: group commit vs one commit per append, in the same run.

The reference is the obvious implementation: one INSERT and one COMMIT per append, on the
same schema and pragmas (WAL, the same ``synchronous``), called in a tight synchronous loop
(its best case: no event loop, no thread hop). The spool is measured the way the edge uses
it: many concurrent requests each awaiting its own durable ``append`` of one item, plus a
sequential run (one append at a time) which shows the cost of the hand-off to the flush
thread when there is nothing to group. Figures are ratios to the reference, so they compare
across machines.

The commit window: the spool sets no timer. The appends made during one turn of the event
loop share a transaction, and while the WAL is being flushed (fsync) further commits queue
for the next flush, which covers them all. So the window adapts to the disk: about one
flush's duration, reported here as ``commit_ms`` (the reference's time per commit), with the
latency an append waits for its 200 (``append_latency_ms``: p50/p99/max) and how many
appends share a transaction.

    .venv/bin/python bench/bench_spool.py [--appends 5000] [--concurrency 200] [--synchronous FULL]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import orjson  # noqa: E402

from edgeproxy.delivery.spool_stream import Stream  # noqa: E402
from edgeproxy.delivery.records import SpoolItem  # noqa: E402
from edgeproxy.delivery.spool import SCHEMA, Spool, group_key, item_size, now_ms  # noqa: E402


def make_item(i: int) -> SpoolItem:
    event = {
        "event_type": "Viewed Home", "device_id": f"device-{i % 500:05d}", "insert_id": f"msg-{i}",
        "session_id": 1_700_000_000_000, "time": 1_700_000_000_000 + i,
        "event_properties": {"path": "/", "title": "Home", "url": "https://www.example.com/"},
        "platform": "Web", "os_name": "Mac OS X", "library": "segment",
    }
    return SpoolItem(f"msg-{i}", "httpapi", event, None, event["device_id"], None, event["session_id"], now_ms())


def reference_one_commit_per_append(path: Path, n: int, synchronous: str) -> float:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(f"PRAGMA synchronous={synchronous}")
    conn.executescript(SCHEMA)
    items = [make_item(i) for i in range(n)]
    stream = Stream(retention=10_000)
    start = time.perf_counter()
    for it in items:
        encoded = orjson.dumps(it.item)
        conn.execute("BEGIN IMMEDIATE")
        stream.insert(conn, [(  # the spool's own statements, as encode_append lays a row out
            it.message_id, it.endpoint, group_key(it.endpoint, None), encoded, None, it.device_id, None,
            it.session_id, it.received_ms, item_size(it.endpoint, encoded), it.target, it.source)])
        conn.execute("COMMIT")
    elapsed = time.perf_counter() - start
    conn.close()
    return n / elapsed


def percentiles(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    pick = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))]  # noqa: E731
    return {"p50": round(pick(0.50) * 1000, 2), "p99": round(pick(0.99) * 1000, 2), "max": round(ordered[-1] * 1000, 2)}


async def spool_appends(path: Path, n: int, concurrency: int, synchronous: str,
                        latencies: list[float] | None = None) -> tuple[float, int]:
    spool = Spool(path, synchronous=synchronous)
    await spool.open()
    items = [make_item(i) for i in range(n)]
    per_task = n // concurrency

    async def producer(k: int) -> None:
        for it in items[k * per_task : (k + 1) * per_task]:
            t0 = time.perf_counter()
            await spool.append([it])
            if latencies is not None:
                latencies.append(time.perf_counter() - t0)

    before = spool.transactions
    start = time.perf_counter()
    await asyncio.gather(*(producer(k) for k in range(concurrency)))
    elapsed = time.perf_counter() - start
    transactions = spool.transactions - before
    await spool.close()
    return per_task * concurrency / elapsed, transactions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--appends", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=200)
    parser.add_argument("--synchronous", default="FULL", choices=["FULL", "NORMAL"])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        reference = reference_one_commit_per_append(root / "ref.sqlite3", args.appends, args.synchronous)
        grouped_latency: list[float] = []
        sequential_latency: list[float] = []
        grouped, transactions = asyncio.run(spool_appends(root / "g.sqlite3", args.appends, args.concurrency,
                                                          args.synchronous, grouped_latency))
        sequential, _ = asyncio.run(spool_appends(root / "s.sqlite3", min(args.appends, 2000), 1, args.synchronous,
                                                  sequential_latency))
    print(json.dumps({
        "synchronous": args.synchronous,
        "appends": args.appends,
        "concurrency": args.concurrency,
        "reference_one_commit_per_append_per_s": round(reference),
        "spool_group_commit_per_s": round(grouped),
        "spool_group_commit_transactions": transactions,
        "appends_per_transaction": round(args.appends / max(1, transactions), 1),
        "commit_ms": round(1000 / reference, 3),
        "append_latency_ms_concurrent": percentiles(grouped_latency),
        "append_latency_ms_sequential": percentiles(sequential_latency),
        "spool_sequential_per_s": round(sequential),
        "ratio_group_commit_to_reference": round(grouped / reference, 2),
        "ratio_sequential_to_reference": round(sequential / reference, 2),
    }, indent=2))


if __name__ == "__main__":
    main()
