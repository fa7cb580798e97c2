"""Redis streams as the delivery queue, for several edgeproxy processes sharing one Redis.

Same semantics as the SQLite spool (``queue.DeliveryQueue``); what differs is where state lives:

``<prefix>q:groups``        set of group keys (endpoint + options) seen so far
``<prefix>q:<group key>``   stream, consumer group ``delivery``: items waiting or in flight
``<prefix>q:delayed``       sorted set of ``<group key>\\n<record>`` by due time (retries, 429 pauses)
``<prefix>q:dead``          stream of dead letters with their reasons (code and text)
``<prefix>q:delivered``     stream capped at ``retention``: delivered items, for /debug
``<prefix>q:responses``     stream capped at 1000: Amplitude's answers, for /debug

Why this shape: every process's worker reads the same streams through one consumer group, so
an item is handed to one worker at a time, and an item a worker holds stays in that worker's
pending list (PEL) until its verdict lands. A process that dies (kill -9) leaves its PEL
behind; any other worker takes it over with XAUTOCLAIM once it has been idle ``claim_idle``
and puts it back in the stream: at-least-once, deduplicated by ``insert_id`` at Amplitude.

Every verdict moves an entry out of the stream in one Lua script (``redis_lua.SETTLE``): XACK,
and only if that acknowledged it, XDEL plus the move (to delivered, dead, delayed or back to
the stream). So a late verdict from a worker whose entry was already taken over is a no-op,
and an entry is never both delivered and requeued. Acknowledged entries are deleted, so a
stream holds exactly the items not yet delivered: depth is XLEN minus the PEL.

The read side (/debug's views, replay, the CLI) is in ``redis_queue_views``; the entries and
what each verdict makes of them in ``redis_records``; the scripts in ``redis_lua``. The
scripts derive key names from the prefix: one Redis (or a primary with replicas), not Redis
Cluster, like the session store.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import time
from typing import Any, Mapping, Sequence

import orjson
from redis.asyncio import BlockingConnectionPool, Redis
from redis.exceptions import RedisError, ResponseError

from edgeproxy import redis_replies as reply
from edgeproxy.delivery import redis_lua as lua
from edgeproxy.delivery import redis_queue_forget
from edgeproxy.delivery import redis_queue_views as views
from edgeproxy.delivery.records import (
    DEFAULT_SOURCE,
    DEFAULT_TARGET,
    RESPONSE_LOG_KEEP,
    ClaimedItem,
    DeadLetter,
    DueGroup,
    SpoolItem,
    SpoolUnavailable,
    group_key,
    now_ms,
    settled_rows,
)
from edgeproxy.delivery.redis_records import Row, claimed_item, encode_record, encode_refusal, settle_ops
from edgeproxy.delivery.spool_admin import ReplayFilter
from edgeproxy.metrics import Metrics

log = logging.getLogger("edgeproxy.delivery")

GROUP = lua.GROUP
PROMOTE_CHUNK = 1000
RECOVER_CHUNK = 500


class RedisQueue:
    """The delivery queue on Redis streams. One instance per process; its worker is one consumer."""

    def __init__(self, redis: Redis, *, prefix: str = "edgeproxy:", metrics: Metrics | None = None,
                 retention: int = 10_000, claim_idle: float = 60.0, min_replicas: int = 0,
                 consumer: str | None = None, where: str = "redis") -> None:
        self.redis = redis
        self.prefix = prefix + "q:"
        self.metrics = metrics
        self.retention = max(1, retention)
        self.claim_idle_ms = max(1, int(claim_idle * 1000))
        self.min_replicas = min_replicas
        self.consumer = consumer or f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"
        self.path = where  # what start-up logs show (no password)
        self.groups_key = self.prefix + "groups"
        self.delayed_key = self.prefix + "delayed"
        self.dead_key = self.prefix + "dead"
        self.delivered_key = self.prefix + "delivered"
        self.responses_key = self.prefix + "responses"
        self._inflight: dict[Row, dict[str, Any]] = {}  # what this worker holds: row -> record
        self._known_groups: set[str] = set()  # streams whose consumer group this process has ensured
        self._last_recover = 0.0
        self._closed = True
        self._settle = redis.register_script(lua.SETTLE)
        self._promote = redis.register_script(lua.PROMOTE)
        self._replay = redis.register_script(lua.REPLAY)

    @classmethod
    def from_url(cls, url: str, **kwargs: Any) -> RedisQueue:
        # A bounded pool: under a burst, appends queue for a connection rather than opening
        # thousands; bounded timeouts turn a dead Redis into 503s, not hung requests.
        pool = BlockingConnectionPool.from_url(url, max_connections=64, timeout=5.0,
                                               socket_timeout=5.0, socket_connect_timeout=2.0)
        from urllib.parse import urlsplit

        parts = urlsplit(url)
        where = f"redis {parts.hostname or parts.path}{':' + str(parts.port) if parts.port else ''}"
        return cls(Redis(connection_pool=pool), where=where, **kwargs)

    def stream(self, key: str) -> str:
        return self.prefix + key

    # ------------------------------------------------------------------ lifecycle

    async def open(self) -> None:
        try:
            await self.redis.ping()
        except (RedisError, OSError) as exc:
            raise SpoolUnavailable(f"cannot reach the Redis delivery queue ({self.path}): {exc}") from None
        self._closed = False

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        await self.redis.aclose()

    async def ping(self) -> bool:
        if self._closed:
            return False
        try:
            return bool(await self.redis.ping())
        except (RedisError, OSError):
            return False

    def _check_open(self) -> None:
        if self._closed:
            raise SpoolUnavailable("the delivery queue is closed")

    # ------------------------------------------------------------------ edge side

    async def append(self, items: Sequence[SpoolItem], dead: Sequence[DeadLetter] = ()) -> None:
        """XADD every item in one MULTI/EXEC; returns once Redis has them (and, with
        ``min_replicas``, once that many replicas do): only then does the client get its 200."""
        if not items and not dead:
            return
        self._check_open()
        try:
            records = []
            for it in items:
                key = group_key(it.endpoint, it.options, it.target, it.source)
                records.append((key, encode_record(it, key)))
            refusals = [encode_refusal(d) for d in dead]
        except (TypeError, orjson.JSONEncodeError) as exc:
            raise ValueError(f"spool item is not JSON-serialisable: {exc}") from None
        try:
            async with self.redis.pipeline(transaction=True) as pipe:
                for key, data in records:
                    pipe.xadd(self.stream(key), {"d": data})
                if records:
                    pipe.sadd(self.groups_key, *{key for key, _ in records})
                for data in refusals:
                    pipe.xadd(self.dead_key, {"d": data})
                await pipe.execute()
                if self.min_replicas:
                    acked = await self.redis.execute_command("WAIT", self.min_replicas, 1000)
                    if int(acked) < self.min_replicas:
                        raise SpoolUnavailable(f"only {acked} of {self.min_replicas} Redis replicas confirmed the write")
        except (RedisError, OSError) as exc:
            raise SpoolUnavailable(f"Redis delivery queue: {exc}") from None

    # ------------------------------------------------------------------ worker side

    async def _ensure_group(self, key: str) -> None:
        if key in self._known_groups:
            return
        try:
            await self.redis.xgroup_create(self.stream(key), GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self._known_groups.add(key)

    async def group_keys(self) -> list[str]:
        """Every group key seen so far (each has its stream), sorted."""
        return sorted(reply.text(k) for k in reply.members(await self.redis.smembers(self.groups_key)))

    async def _group_keys(self) -> list[str]:
        keys = await self.group_keys()
        for key in keys:
            await self._ensure_group(key)
        return keys

    async def due_groups(self, now: int | None = None) -> list[DueGroup]:
        """Moves due retries back into their streams, takes over a dead worker's items, then
        reports each stream's undelivered count and its oldest item's ``received_ms``."""
        t = now_ms() if now is None else now
        self._check_open()
        try:
            for _ in range(100):  # bounded: at most 100k promotions per cycle
                if await self._promote(keys=[self.delayed_key], args=[t, PROMOTE_CHUNK, self.prefix]) < PROMOTE_CHUNK:
                    break
            keys = await self._group_keys()
            if time.monotonic() - self._last_recover >= min(5.0, self.claim_idle_ms / 2000):
                self._last_recover = time.monotonic()
                for key in keys:
                    await self._recover(key)
            return await self._undelivered(keys)
        except ResponseError as exc:
            if "NOGROUP" in str(exc):  # the stream was deleted under us (FLUSHDB): recreate next time
                self._known_groups.clear()
                return []
            raise SpoolUnavailable(f"Redis delivery queue: {exc}") from None
        except (RedisError, OSError) as exc:
            raise SpoolUnavailable(f"Redis delivery queue: {exc}") from None

    async def _undelivered(self, keys: list[str]) -> list[DueGroup]:
        async with self.redis.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.xlen(self.stream(key))
                pipe.xinfo_groups(self.stream(key))
            answers = await pipe.execute()
        waiting: list[tuple[str, int, str]] = []
        for i, key in enumerate(keys):
            length, infos = answers[2 * i], answers[2 * i + 1]
            info = next((g for g in infos if reply.text(g["name"]) == GROUP), None)
            if info is None:
                continue
            count = int(length) - int(info["pending"])
            if count > 0:
                waiting.append((key, count, reply.text(info["last-delivered-id"])))
        if not waiting:
            return []
        async with self.redis.pipeline(transaction=False) as pipe:
            for key, _, last in waiting:
                pipe.xrange(self.stream(key), min=f"({last}", max="+", count=1)
            firsts = await pipe.execute()
        groups = []
        for (key, count, _), first in zip(waiting, firsts):
            if not first:
                continue
            rec = orjson.loads(first[0][1][b"d"])
            groups.append(DueGroup(key, rec["endpoint"], rec["options"], count, rec["received_ms"],
                                   rec.get("target", DEFAULT_TARGET), rec.get("source", DEFAULT_SOURCE)))
        return groups

    async def _recover(self, key: str) -> None:
        """XAUTOCLAIM entries idle past ``claim_idle`` in any consumer's PEL and requeue them."""
        stream, start, recovered = self.stream(key), "0-0", 0
        for _ in range(20):  # bounded per cycle; the rest waits for the next one
            answer = await self.redis.xautoclaim(stream, GROUP, self.consumer, self.claim_idle_ms,
                                                  start_id=start, count=RECOVER_CHUNK)
            start, entries = reply.text(answer[0]), answer[1]
            ops: list[Any] = []
            for entry_id, fields in entries:
                row = (stream, reply.text(entry_id))
                if row in self._inflight or not fields:
                    continue  # our own slow batch: it stays ours
                ops += ["requeue", stream, row[1], 0, fields[b"d"]]
            if ops:
                recovered += await self._run_settle(ops)
            if start == "0-0":
                break
        if recovered:
            log.warning("took over %d item(s) left in flight by a stopped edgeproxy process (%s)", recovered, key)

    async def next_attempt_ms(self, now: int | None = None) -> int | None:
        t = now_ms() if now is None else now
        try:
            first = await self.redis.zrangebyscore(self.delayed_key, f"({t}", "+inf", start=0, num=1, withscores=True)
        except (RedisError, OSError) as exc:
            raise SpoolUnavailable(f"Redis delivery queue: {exc}") from None
        return int(first[0][1]) if first else None

    async def claim(self, key: str, *, limit: int, max_bytes: int, now: int | None = None) -> list[ClaimedItem]:
        """XREADGROUP up to ``limit`` new entries; those past the byte budget go straight back."""
        stream = self.stream(key)
        try:
            await self._ensure_group(key)
            answer = await self.redis.xreadgroup(GROUP, self.consumer, {stream: ">"}, count=limit)
        except (RedisError, OSError) as exc:
            raise SpoolUnavailable(f"Redis delivery queue: {exc}") from None
        taken: list[ClaimedItem] = []
        back: list[Any] = []
        total = 0
        for entry_id, fields in reply.read_one(answer):
            row, raw = (stream, reply.text(entry_id)), fields[b"d"]
            rec = orjson.loads(raw)
            if back or (taken and total + rec["size"] + 1 > max_bytes):
                back += ["requeue", stream, row[1], 0, raw]
                continue
            total += rec["size"] + 1
            self._inflight[row] = rec
            taken.append(claimed_item(row, rec))
        if back:
            await self._run_settle(back)
        return taken

    async def _run_settle(self, ops: list[Any]) -> int:
        try:
            return int(await self._settle(keys=[self.delayed_key, self.dead_key, self.delivered_key],
                                          args=[GROUP, self.retention, *ops]))
        except (RedisError, OSError) as exc:
            raise SpoolUnavailable(f"Redis delivery queue: {exc}") from None

    async def settle(
        self,
        *,
        ack: Sequence[Any] = (),
        dead: Mapping[Any, str | tuple[str, str]] | None = None,
        retry: Sequence[tuple[Sequence[Any], int, str]] = (),
        release: Sequence[tuple[Sequence[Any], int]] = (),
        response: tuple[Any, ...] | None = None,
        now: int | None = None,
    ) -> None:
        """Apply one request's verdict in one script run (see the module docstring).

        ``dead``: row -> (reason code, text), or a bare text (code "other")."""
        t = now_ms() if now is None else now
        ops = settle_ops(self._inflight, t, ack=ack, dead=dead or {}, retry=retry, release=release)
        if ops:
            await self._run_settle(ops)
        for row in settled_rows(ack, dead or {}, retry, release):
            self._inflight.pop(row, None)
        if response is not None:
            endpoint, status, n, body, target, source = (*response, DEFAULT_TARGET, DEFAULT_SOURCE)[:6]
            entry = orjson.dumps({"time_ms": t, "endpoint": endpoint, "status": status, "items": n, "body": body,
                                  "target": target, "source": source})
            try:
                await self.redis.xadd(self.responses_key, {"d": entry}, maxlen=RESPONSE_LOG_KEEP, approximate=False)
            except (RedisError, OSError) as exc:
                raise SpoolUnavailable(f"Redis delivery queue: {exc}") from None

    async def ack(self, row_ids: Sequence[Any]) -> None:
        await self.settle(ack=row_ids)

    async def retry(self, row_ids: Sequence[Any], next_attempt_ms: int, error: str) -> None:
        await self.settle(retry=[(row_ids, next_attempt_ms, error)])

    async def dead_letter(self, reasons: Mapping[Any, str | tuple[str, str]]) -> None:
        await self.settle(dead=reasons)

    async def release(self, row_ids: Sequence[Any], not_before_ms: int = 0) -> None:
        await self.settle(release=[(row_ids, not_before_ms)])

    # ------------------------------------------------------------------ read side

    async def stats(self) -> dict[str, Any]:
        """Same keys as the SQLite spool (``redis_queue_views.stats``); sets the depth gauge."""
        result = await views.stats(self)
        if self.metrics is not None:
            self.metrics.spool_depth.set(result["depth"] + result["in_flight"])
        return result

    async def events_for_session(self, device_id: str, session_id: int | None = None, limit: int = 100) -> list[dict[str, Any]]:
        return await views.events_for_session(self, device_id, session_id, limit)

    async def dead_letters(self, limit: int = 100) -> list[dict[str, Any]]:
        return await views.dead_letters(self, limit)

    async def dead_by_reason(self) -> dict[str, int]:
        return await views.dead_by_reason(self)

    async def undelivered(self, which: str, limit: int = 20) -> list[dict[str, Any]]:
        """Items ``in_flight`` (in any worker's pending list) or ``retrying`` (waiting for a due time)."""
        return await views.undelivered(self, which, limit)

    async def recent_responses(self, limit: int = 50) -> list[dict[str, Any]]:
        return await views.recent_responses(self, limit)

    async def depth_by_target(self) -> list[dict[str, Any]]:
        return await views.depth_by_target(self)

    async def replay_dead_letters(self, selection: ReplayFilter | None = None) -> int:
        """Dead letters that have an item (and match ``selection``) back into their stream; returns how many."""
        return await views.replay_dead_letters(self, selection)

    async def forget(self, device_ids: Sequence[str], user_id: str | None) -> dict[str, int]:
        return await redis_queue_forget.forget(self, device_ids, user_id, GROUP)

    async def user_devices(self, user_id: str) -> list[str]:
        return await redis_queue_forget.user_devices(self, user_id)
