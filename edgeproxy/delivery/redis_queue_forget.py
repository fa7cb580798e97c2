"""``edgeproxy forget`` on the Redis queue: a person's entries out of every structure.

There is no per-device index (every event would pay for one), so this scans: each group
stream, the delayed set, the delivered and dead streams. Forgetting is rare and operator
driven; the scan reads in chunks and deletes as it goes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

import orjson
from redis.exceptions import RedisError, ResponseError

from edgeproxy import redis_replies as reply
from edgeproxy.delivery.records import SpoolUnavailable

if TYPE_CHECKING:
    from edgeproxy.delivery.redis_queue import RedisQueue

CHUNK = 1000
DELETIONS = "deletions"


def _matches(rec: dict[str, Any], devices: set[str], user_id: str | None) -> bool:
    if rec.get("target") == DELETIONS:
        return False
    return rec.get("device_id") in devices or (user_id is not None and rec.get("user_id") == user_id)


async def _scan_stream(q: RedisQueue, stream: str, devices: set[str], user_id: str | None,
                       group: str | None) -> int:
    removed, start = 0, "-"
    while True:
        entries = reply.entries(await q.redis.xrange(stream, min=start, max="+", count=CHUNK))
        if not entries:
            return removed
        doomed = [reply.text(eid) for eid, fields in entries if _matches(orjson.loads(fields[b"d"]), devices, user_id)]
        if doomed:
            if group is not None:
                try:
                    await q.redis.xack(stream, group, *doomed)  # a worker holding one settles nothing
                except ResponseError:
                    pass
            removed += await q.redis.xdel(stream, *doomed)
        last = reply.text(entries[-1][0])
        ms, seq = last.split("-")
        start = f"{ms}-{int(seq) + 1}"


async def forget(q: RedisQueue, device_ids: Sequence[str], user_id: str | None, group: str) -> dict[str, int]:
    devices = set(device_ids)
    counts: dict[str, int] = {}
    try:
        pending = 0
        for key in await q.group_keys():
            pending += await _scan_stream(q, q.stream(key), devices, user_id, group)
        members = [m for m in reply.members(await q.redis.zrange(q.delayed_key, 0, -1))
                   if _matches(orjson.loads(m.split(b"\n", 1)[1]), devices, user_id)]
        if members:
            pending += await q.redis.zrem(q.delayed_key, *members)
        counts["pending"] = pending
        counts["delivered"] = await _scan_stream(q, q.delivered_key, devices, user_id, None)
        counts["dead"] = await _scan_stream(q, q.dead_key, devices, user_id, None)
    except (RedisError, OSError) as exc:
        raise SpoolUnavailable(f"Redis delivery queue: {exc}") from None
    return {state: n for state, n in counts.items() if n}


async def user_devices(q: RedisQueue, user_id: str) -> list[str]:
    found: dict[str, None] = {}

    def keep(raw: bytes) -> None:
        rec = orjson.loads(raw)
        if rec.get("user_id") == user_id and rec.get("device_id"):
            found[rec["device_id"]] = None

    try:
        for key in await q.group_keys():
            for _, fields in reply.entries(await q.redis.xrange(q.stream(key))):
                keep(fields[b"d"])
        for member in reply.members(await q.redis.zrange(q.delayed_key, 0, -1)):
            keep(member.split(b"\n", 1)[1])
        for name in (q.delivered_key, q.dead_key):
            for _, fields in reply.entries(await q.redis.xrange(name)):
                keep(fields[b"d"])
    except (RedisError, OSError) as exc:
        raise SpoolUnavailable(f"Redis delivery queue: {exc}") from None
    return list(found)
