"""The Redis queue's read side: /debug's views, dead-letter replay, and the CLI commands.

Apart from ``redis_queue`` because none of it is on the hot path: these read (or, for replay,
move) entries on an operator's request, and may scan, where the queue itself never does.
Counting dead letters by reason and filtering a replay scan the dead-letter stream whole
(in chunks): exact, at a cost paid only when an operator asks, like the SQLite spool's
GROUP BY over its dead rows, rather than a counter every dead letter would have to keep
in step.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any, AsyncIterator

import orjson
from redis.exceptions import RedisError, ResponseError

from edgeproxy import redis_replies as reply
from edgeproxy.delivery.redis_lua import GROUP
from edgeproxy.delivery.records import DEFAULT_SOURCE, DEFAULT_TARGET, OTHER_REASON, SpoolUnavailable, now_ms
from edgeproxy.delivery.spool_admin import ReplayFilter

if TYPE_CHECKING:
    from edgeproxy.delivery.redis_queue import RedisQueue

DEBUG_SCAN = 5000  # entries per structure /debug reads when it looks for one device's events
DEAD_CHUNK = 500  # dead letters read per round trip when scanning the dead-letter stream
UNDELIVERED = ("in_flight", "retrying")


def _id_key(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


async def stats(q: RedisQueue) -> dict[str, Any]:
    """Same keys as the SQLite spool. ``retrying`` counts items waiting for a retry or a
    429 pause; ``delivered`` is the kept log (capped at ``retention``, like SQLite's)."""
    t = now_ms()
    try:
        keys = await q.group_keys()
        async with q.redis.pipeline(transaction=False) as pipe:
            pipe.zcard(q.delayed_key)
            pipe.xlen(q.delivered_key)
            pipe.xlen(q.dead_key)
            for key in keys:
                pipe.xlen(q.stream(key))
                pipe.xpending(q.stream(key), GROUP)
                pipe.xrange(q.stream(key), count=1)
            answers = await pipe.execute(raise_on_error=False)
    except (RedisError, OSError) as exc:
        raise SpoolUnavailable(f"Redis delivery queue: {exc}") from None
    delayed, delivered, dead = (int(a) if not isinstance(a, Exception) else 0 for a in answers[:3])
    depth, in_flight = delayed, 0
    oldest: int | None = None
    for i in range(len(keys)):
        length, pending, first = answers[3 + 3 * i: 6 + 3 * i]
        in_pel = 0 if isinstance(pending, Exception) else int(pending["pending"])
        in_flight += in_pel
        depth += int(length) - in_pel
        if first and not isinstance(first, Exception):
            received = orjson.loads(first[0][1][b"d"])["received_ms"]
            oldest = received if oldest is None else min(oldest, received)
    return {"depth": depth, "in_flight": in_flight, "retrying": delayed, "delivered": delivered, "dead": dead,
            "oldest_age_s": max(0.0, (t - oldest) / 1000) if oldest is not None else 0.0}


async def events_for_session(q: RedisQueue, device_id: str, session_id: int | None = None, limit: int = 100) -> list[dict[str, Any]]:
    """A device's items, most recent first, with delivery state. For /debug only: it scans
    the last ``DEBUG_SCAN`` entries of each structure rather than keeping a per-device index
    that every event would pay for."""
    found: list[tuple[tuple[int, int, int], dict[str, Any]]] = []

    def keep(rec: dict[str, Any], state: str, order: tuple[int, int]) -> None:
        if rec.get("device_id") != device_id or (session_id is not None and rec.get("session_id") != session_id):
            return
        out = {k: rec.get(k) for k in ("message_id", "endpoint", "item", "attempts", "last_error", "received_ms")}
        out["state"], out["delivered_ms"] = state, rec.get("delivered_ms")
        out["target"], out["source"] = _target(rec)
        if state == "pending" and rec.get("next_attempt_ms"):
            out["next_attempt_ms"] = rec["next_attempt_ms"]
        if rec.get("payload") is not None:
            out["payload"] = rec["payload"]
        found.append(((rec.get("received_ms") or 0, *order), out))

    try:
        for key in await q.group_keys():
            stream = q.stream(key)
            held = {reply.text(p["message_id"]) for p in await _pending_ids(q, stream)}
            for entry_id, fields in reply.entries(await q.redis.xrevrange(stream, count=DEBUG_SCAN)):
                eid = reply.text(entry_id)
                keep(orjson.loads(fields[b"d"]), "inflight" if eid in held else "pending", _id_key(eid))
        for member, _ in reply.scored(await q.redis.zrange(q.delayed_key, 0, DEBUG_SCAN - 1, withscores=True)):
            keep(orjson.loads(member.split(b"\n", 1)[1]), "pending", (0, 0))
        for name, state in ((q.delivered_key, "delivered"), (q.dead_key, "dead")):
            for entry_id, fields in reply.entries(await q.redis.xrevrange(name, count=DEBUG_SCAN)):
                keep(orjson.loads(fields[b"d"]), state, _id_key(reply.text(entry_id)))
    except (RedisError, OSError) as exc:
        raise SpoolUnavailable(f"Redis delivery queue: {exc}") from None
    found.sort(key=lambda pair: pair[0], reverse=True)
    return [out for _, out in found[:limit]]


async def _pending_ids(q: RedisQueue, stream: str, count: int = DEBUG_SCAN) -> list[dict[str, Any]]:
    """The stream's pending list (entries some worker holds), oldest first."""
    try:
        return reply.pending(await q.redis.xpending_range(stream, GROUP, min="-", max="+", count=count))
    except ResponseError:  # no consumer group yet
        return []


def _target(rec: dict[str, Any]) -> tuple[str, str]:
    """(target, source): records written before targets existed are the default Amplitude's."""
    return rec.get("target") or DEFAULT_TARGET, rec.get("source") or DEFAULT_SOURCE


def _reason_code(rec: dict[str, Any]) -> str:
    """A dead letter's reason code; records written before codes existed count as "other"."""
    return rec.get("dead_code") or OTHER_REASON


async def dead_letters(q: RedisQueue, limit: int = 100) -> list[dict[str, Any]]:
    """The most recent dead letters first, with the reason's code and text (as the SQLite spool's)."""
    try:
        entries = reply.entries(await q.redis.xrevrange(q.dead_key, count=limit))
    except (RedisError, OSError) as exc:
        raise SpoolUnavailable(f"Redis delivery queue: {exc}") from None
    out = []
    for _, fields in entries:
        rec = orjson.loads(fields[b"d"])
        out.append({
            "message_id": rec["message_id"], "endpoint": rec.get("endpoint"), "item": rec.get("item"),
            "payload": rec.get("payload"), "reason": rec.get("last_error"), "reason_code": _reason_code(rec),
            "device_id": rec.get("device_id"), "session_id": rec.get("session_id"), "attempts": rec.get("attempts", 0),
            "received_ms": rec.get("received_ms"), "dead_ms": rec.get("dead_ms"),
            "replayable": rec.get("item") is not None, "target": _target(rec)[0], "source": _target(rec)[1],
        })
    return out


async def _scan_dead(q: RedisQueue) -> AsyncIterator[list[tuple[str, dict[str, Any]]]]:
    """The dead-letter stream oldest first, a chunk of (entry id, record) per round trip.

    Resumes after the last id it saw, so entries a concurrent replay deletes are simply not
    met again, and ones dead-lettered meanwhile are met at the end."""
    start = "-"
    while True:
        entries = reply.entries(await q.redis.xrange(q.dead_key, min=start, max="+", count=DEAD_CHUNK))
        if not entries:
            return
        start = "(" + reply.text(entries[-1][0])
        yield [(reply.text(entry_id), orjson.loads(fields[b"d"])) for entry_id, fields in entries]
        if len(entries) < DEAD_CHUNK:
            return


async def dead_by_reason(q: RedisQueue) -> dict[str, int]:
    """Dead letters counted by reason code, most frequent first (ties by code), like the SQLite spool."""
    counts: dict[str, int] = {}
    try:
        async for chunk in _scan_dead(q):
            for _, rec in chunk:
                code = _reason_code(rec)
                counts[code] = counts.get(code, 0) + 1
    except (RedisError, OSError) as exc:
        raise SpoolUnavailable(f"Redis delivery queue: {exc}") from None
    return dict(sorted(counts.items(), key=lambda pair: (-pair[1], pair[0])))


def _undelivered_row(rec: dict[str, Any], state: str) -> dict[str, Any]:
    """The fields /debug's in-flight and retrying tables show, as the SQLite spool's rows carry them."""
    out = {k: rec.get(k) for k in ("message_id", "endpoint", "item", "attempts", "last_error", "received_ms", "device_id")}
    out["state"], out["delivered_ms"] = state, None
    out["target"], out["source"] = _target(rec)
    return out


async def undelivered(q: RedisQueue, which: str, limit: int = 20) -> list[dict[str, Any]]:
    """``in_flight``: entries in any worker's pending list, oldest first, with the consumer
    holding each. ``retrying``: the delayed set (retries waiting out their backoff and items
    held by a 429 pause), soonest due first, with ``next_attempt_ms``: the items ``stats()``
    counts as retrying."""
    if which not in UNDELIVERED:
        raise ValueError(f"which must be 'in_flight' or 'retrying', got {which!r}")
    if limit < 1:
        return []
    try:
        if which == "retrying":
            out = []
            for member, score in reply.scored(await q.redis.zrange(q.delayed_key, 0, limit - 1, withscores=True)):
                row = _undelivered_row(orjson.loads(member.split(b"\n", 1)[1]), "pending")
                row["next_attempt_ms"] = int(score)
                out.append(row)
            return out
        return await _in_flight(q, limit)
    except (RedisError, OSError) as exc:
        raise SpoolUnavailable(f"Redis delivery queue: {exc}") from None


async def _in_flight(q: RedisQueue, limit: int) -> list[dict[str, Any]]:
    held: list[tuple[tuple[int, int], str, str, str]] = []  # (order, stream, entry id, consumer)
    for key in await q.group_keys():
        stream = q.stream(key)
        for p in await _pending_ids(q, stream, count=limit):
            eid = reply.text(p["message_id"])
            held.append((_id_key(eid), stream, eid, reply.text(p["consumer"])))
    held = sorted(held)[:limit]
    if not held:
        return []
    async with q.redis.pipeline(transaction=False) as pipe:
        for _, stream, eid, _ in held:
            pipe.xrange(stream, min=eid, max=eid, count=1)
        entries = await pipe.execute()
    out = []
    for (_, _, _, consumer), found in zip(held, entries):
        if found:  # else settled between the two reads
            row = _undelivered_row(orjson.loads(found[0][1][b"d"]), "inflight")
            row["consumer"] = consumer
            out.append(row)
    return out


async def recent_responses(q: RedisQueue, limit: int = 50) -> list[dict[str, Any]]:
    try:
        entries = reply.entries(await q.redis.xrevrange(q.responses_key, count=limit))
    except (RedisError, OSError) as exc:
        raise SpoolUnavailable(f"Redis delivery queue: {exc}") from None
    out = []
    for _, fields in entries:
        rec = orjson.loads(fields[b"d"])
        rec["target"], rec["source"] = _target(rec)
        out.append(rec)
    return out


async def depth_by_target(q: RedisQueue) -> list[dict[str, Any]]:
    """Undelivered items per (target, source) from each stream's first record (a stream is
    one group: one target and source) and the delayed set, dead letters from a scan."""
    counts: dict[tuple[str, str], dict[str, int]] = {}

    def add(pair: tuple[str, str], state: str, n: int) -> None:
        counts.setdefault(pair, {"pending": 0, "dead": 0})[state] += n

    try:
        for key in await q.group_keys():
            first = reply.entries(await q.redis.xrange(q.stream(key), count=1))
            if first:
                add(_target(orjson.loads(first[0][1][b"d"])), "pending", int(await q.redis.xlen(q.stream(key))))
        for member, _ in reply.scored(await q.redis.zrange(q.delayed_key, 0, -1, withscores=True)):
            add(_target(orjson.loads(member.split(b"\n", 1)[1])), "pending", 1)
        async for chunk in _scan_dead(q):
            for _, rec in chunk:
                add(_target(rec), "dead", 1)
    except (RedisError, OSError) as exc:
        raise SpoolUnavailable(f"Redis delivery queue: {exc}") from None
    return [{"target": t, "source": src, **n} for (t, src), n in sorted(counts.items())]


def replay_matches(rec: dict[str, Any], selection: ReplayFilter) -> bool:
    """Whether ``replay`` puts this dead letter back: it has an item (a mapping refusal has
    nothing to send) and meets every criterion given, as ``ReplayFilter.where`` does in SQL."""
    if rec.get("item") is None:
        return False
    if selection.reasons and _reason_code(rec) not in selection.reasons:
        return False
    if selection.endpoint is not None and rec.get("endpoint") != selection.endpoint:
        return False
    target, source = _target(rec)
    if (selection.target is not None and target != selection.target) or \
            (selection.source is not None and source != selection.source):
        return False
    return not selection.message_ids or rec.get("message_id") in selection.message_ids


async def replay_dead_letters(q: RedisQueue, selection: ReplayFilter | None = None) -> int:
    """Dead letters matching ``selection`` back into their stream (attempts reset), oldest
    first up to its ``limit``; returns how many.

    Each is moved by a script that deletes it from the dead-letter stream first, so two
    operators replaying at once never send one twice."""
    selection = selection or ReplayFilter()
    limit = selection.limit
    replayed = 0
    try:
        async for chunk in _scan_dead(q):
            args: list[Any] = []
            for entry_id, rec in chunk:
                if limit is not None and replayed + len(args) // 3 >= limit:
                    break
                if not replay_matches(rec, selection):
                    continue
                again = {**rec, "attempts": 0, "last_error": f"replayed: {rec.get('last_error') or ''}",
                         "dead_ms": None, "dead_code": None, "next_attempt_ms": None}
                args += [entry_id, rec["group_key"], orjson.dumps(again)]
            if args:
                replayed += int(await q._replay(keys=[q.dead_key, q.groups_key], args=[q.prefix, *args]))
            if limit is not None and replayed >= limit:
                break
    except (RedisError, OSError) as exc:
        raise SpoolUnavailable(f"Redis delivery queue: {exc}") from None
    return replayed


# ---------------------------------------------------------------- the CLI (`edgeproxy spool`, `replay`)


async def _with_queue(url: str, fn: Any) -> Any:
    from edgeproxy.delivery.redis_queue import RedisQueue

    queue = RedisQueue.from_url(url)
    await queue.open()
    try:
        return await fn(queue)
    finally:
        await queue.close()


def queue_report(url: str, *, limit: int = 20) -> dict[str, Any]:
    """``edgeproxy spool`` against Redis: the same report as for the SQLite spool."""
    async def report(q: Any) -> dict[str, Any]:
        out = await q.stats()
        out["by_target"] = await q.depth_by_target()
        out["dead_by_reason"] = await q.dead_by_reason()
        out["dead_letters"] = await q.dead_letters(limit)
        out["recent_responses"] = await q.recent_responses(limit)
        return out

    return asyncio.run(_with_queue(url, report))


def queue_replay(url: str, selection: ReplayFilter | None = None) -> int:
    """``edgeproxy replay`` against Redis: a running worker (any process) sends them."""
    return asyncio.run(_with_queue(url, lambda q: q.replay_dead_letters(selection)))
