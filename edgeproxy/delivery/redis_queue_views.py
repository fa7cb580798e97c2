"""The Redis queue's read side: /debug's views, dead-letter replay, and the CLI commands.

Apart from ``redis_queue`` because none of it is on the hot path: these read (or, for replay,
move) entries on an operator's request, and may scan, where the queue itself never does.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import orjson
from redis.exceptions import RedisError, ResponseError

from edgeproxy.delivery.redis_lua import GROUP
from edgeproxy.delivery.spool import SpoolUnavailable

if TYPE_CHECKING:
    from edgeproxy.delivery.redis_queue import RedisQueue

DEBUG_SCAN = 5000  # entries per structure /debug reads when it looks for one device's events


def _s(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _id_key(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


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
        if state == "pending" and rec.get("next_attempt_ms"):
            out["next_attempt_ms"] = rec["next_attempt_ms"]
        if rec.get("payload") is not None:
            out["payload"] = rec["payload"]
        found.append(((rec.get("received_ms") or 0, *order), out))

    try:
        for key in sorted(_s(k) for k in await q.redis.smembers(q.groups_key)):
            stream = q.stream(key)
            held = {_s(p["message_id"]) for p in await _pending_ids(q, stream)}
            for entry_id, fields in await q.redis.xrevrange(stream, count=DEBUG_SCAN):
                eid = _s(entry_id)
                keep(orjson.loads(fields[b"d"]), "inflight" if eid in held else "pending", _id_key(eid))
        for member, _ in await q.redis.zrange(q.delayed_key, 0, DEBUG_SCAN - 1, withscores=True):
            keep(orjson.loads(member.split(b"\n", 1)[1]), "pending", (0, 0))
        for name, state in ((q.delivered_key, "delivered"), (q.dead_key, "dead")):
            for entry_id, fields in await q.redis.xrevrange(name, count=DEBUG_SCAN):
                keep(orjson.loads(fields[b"d"]), state, _id_key(_s(entry_id)))
    except (RedisError, OSError) as exc:
        raise SpoolUnavailable(f"Redis delivery queue: {exc}") from None
    found.sort(key=lambda pair: pair[0], reverse=True)
    return [out for _, out in found[:limit]]


async def _pending_ids(q: RedisQueue, stream: str) -> list[dict[str, Any]]:
    try:
        return await q.redis.xpending_range(stream, GROUP, min="-", max="+", count=DEBUG_SCAN)
    except ResponseError:  # no consumer group yet
        return []


async def dead_letters(q: RedisQueue, limit: int = 100) -> list[dict[str, Any]]:
    try:
        entries = await q.redis.xrevrange(q.dead_key, count=limit)
    except (RedisError, OSError) as exc:
        raise SpoolUnavailable(f"Redis delivery queue: {exc}") from None
    out = []
    for _, fields in entries:
        rec = orjson.loads(fields[b"d"])
        out.append({
            "message_id": rec["message_id"], "endpoint": rec.get("endpoint"), "item": rec.get("item"),
            "payload": rec.get("payload"), "reason": rec.get("last_error"), "device_id": rec.get("device_id"),
            "session_id": rec.get("session_id"), "attempts": rec.get("attempts", 0),
            "received_ms": rec.get("received_ms"), "dead_ms": rec.get("dead_ms"),
            "replayable": rec.get("item") is not None,
        })
    return out


async def recent_responses(q: RedisQueue, limit: int = 50) -> list[dict[str, Any]]:
    try:
        entries = await q.redis.xrevrange(q.responses_key, count=limit)
    except (RedisError, OSError) as exc:
        raise SpoolUnavailable(f"Redis delivery queue: {exc}") from None
    return [orjson.loads(fields[b"d"]) for _, fields in entries]


async def replay_dead_letters(q: RedisQueue, limit: int | None = None) -> int:
    """Dead letters that have an item back into their stream (attempts reset); returns how many.

    Each is moved by a script that deletes it from the dead-letter stream first, so two
    operators replaying at once never send one twice."""
    replayed, start = 0, "-"
    try:
        while limit is None or replayed < limit:
            entries = await q.redis.xrange(q.dead_key, min=start, max="+", count=500)
            if not entries:
                break
            start = "(" + _s(entries[-1][0])
            args: list[Any] = []
            for entry_id, fields in entries:
                rec = orjson.loads(fields[b"d"])
                if rec.get("item") is None or (limit is not None and replayed + len(args) // 3 >= limit):
                    continue
                again = {**rec, "attempts": 0, "last_error": f"replayed: {rec.get('last_error') or ''}",
                         "dead_ms": None, "next_attempt_ms": None}
                args += [_s(entry_id), rec["group_key"], orjson.dumps(again)]
            if args:
                replayed += int(await q._replay(keys=[q.dead_key, q.groups_key], args=[q.prefix, *args]))
            if len(entries) < 500:
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
        out["dead_letters"] = await q.dead_letters(limit)
        out["recent_responses"] = await q.recent_responses(limit)
        return out

    return asyncio.run(_with_queue(url, report))


def queue_replay(url: str, limit: int | None = None) -> int:
    """``edgeproxy replay`` against Redis: a running worker (any process) sends them."""
    return asyncio.run(_with_queue(url, lambda q: q.replay_dead_letters(limit)))
