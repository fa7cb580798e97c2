"""The durable spool: every accepted Amplitude item is on disk before the client gets its 200.

SQLite in WAL mode, embedded, no server. One dedicated writer thread owns the only
read-write connection and runs GROUP COMMIT: whatever calls are queued while a transaction
commits are gathered into the next transaction, so under load one fsync covers many
appends. Each ``await spool.append(...)`` returns only after its own rows are committed.

Durability choice: ``PRAGMA synchronous=FULL`` in WAL mode. WAL + NORMAL already survives a
``kill -9`` of the process (the WAL is in the OS page cache), but not a power loss or a
kernel panic; FULL fsyncs the WAL at every commit and survives those too. Group commit is
what makes FULL affordable: the fsync is paid per transaction, not per append. An operator
trades power-loss safety for latency with ``[delivery] durability = "process_crash"``
(``synchronous="NORMAL"``): each tracking call then skips a disk flush (~0.3–1.5 ms here).

Bounded: past ``max_bytes`` (``delivery.max_spool_size``) appends fail with
SpoolUnavailable, so the edge answers 503 + Retry-After and the client keeps its events.

The SQL itself (states, queries) is in ``spool_sql.py``, the schema and its migrations in
``spool_schema.py`` (applied on open; a spool from a newer edgeproxy is refused). Rows ``inflight`` when the
process died are made ``pending`` again by ``open()``: at-least-once delivery, with
``insert_id`` dedupe at Amplitude.
"""

from __future__ import annotations

import asyncio
import queue
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import orjson

from edgeproxy.delivery import spool_sql as sql
from edgeproxy.delivery.spool_schema import SCHEMA, SchemaTooNew, migrate
from edgeproxy.delivery.spool_sql import (
    ClaimedItem,
    DueGroup,
    ReplayFilter,
    dead_reason,
    group_key,
    item_size,
    now_ms,
)
from edgeproxy.metrics import Metrics

__all__ = [
    "SCHEMA", "ClaimedItem", "DeadLetter", "DueGroup", "ReplayFilter", "Spool", "SpoolItem", "SpoolUnavailable",
    "group_key", "item_size", "now_ms",
]

SPOOL_FILENAME = "spool.sqlite3"
DB_SUFFIXES = frozenset({".sqlite3", ".sqlite", ".db"})
MAX_GROUP = 1024  # operations merged into one transaction at most
# The hard page limit sits this far above max_bytes: appends stop at max_bytes (a clear 503),
# while the worker's updates and one in-progress append still find room.
HARD_LIMIT_HEADROOM = 16 * 1024 * 1024


class SpoolUnavailable(Exception):
    """The spool cannot take the write (disk full, locked, corrupt, closed): answer 503 + Retry-After."""


@dataclass(frozen=True)
class SpoolItem:
    """One Amplitude item (event, identification or usermap entry) to deliver."""

    message_id: str
    endpoint: str
    item: dict[str, Any]
    options: dict[str, Any] | None
    device_id: str | None
    user_id: str | None
    session_id: int | None
    received_ms: int


@dataclass(frozen=True)
class DeadLetter:
    """An event the mapping refused: kept with its reason, never sent."""

    message_id: str
    payload: dict[str, Any]
    reason: str
    device_id: str | None
    session_id: int | None
    received_ms: int


@dataclass(frozen=True)
class _Append:
    """One caller's encoded rows. The writer merges every append of a transaction into one
    room check and a few multi-row INSERTs (see ``Spool._execute``)."""

    rows: list[tuple[Any, ...]]
    dead_rows: list[tuple[Any, ...]]
    max_bytes: int | None

    def __call__(self, c: sqlite3.Connection) -> None:
        sql.ensure_room(c, self.max_bytes)
        sql.insert_items(c, self.rows, self.dead_rows)


def _encode_append(items: Sequence[SpoolItem], dead: Sequence[DeadLetter], max_bytes: int | None = None) -> _Append:
    """Encode on the caller's side (the event loop) so a bad item fails its own call only."""
    rows = []
    for it in items:
        encoded = orjson.dumps(it.item)
        rows.append((
            it.message_id, it.endpoint, group_key(it.endpoint, it.options), encoded,
            orjson.dumps(it.options) if it.options else None, it.device_id, it.user_id,
            it.session_id, it.received_ms, item_size(it.endpoint, encoded),
        ))
    dead_rows = [
        (d.message_id, orjson.dumps(d.payload), d.device_id, d.session_id, d.received_ms, d.reason, d.received_ms)
        for d in dead
    ]
    return _Append(rows, dead_rows, max_bytes)


def _append_all(c: sqlite3.Connection, appends: Sequence[_Append]) -> None:
    """Every append of one transaction at once: one room check, then the rows together."""
    sql.ensure_room(c, appends[0].max_bytes)
    sql.insert_items(c, [r for a in appends for r in a.rows], [r for a in appends for r in a.dead_rows])


class Spool:
    """The SQLite spool. All methods are coroutines; the I/O runs in the writer thread."""

    def __init__(
        self,
        path: Path,
        *,
        metrics: Metrics | None = None,
        retention: int = 10_000,
        synchronous: str = "FULL",
        max_bytes: int | None = None,
    ) -> None:
        """``path`` is the database file (``<data_dir>/spool.sqlite3``: a name ending in
        .sqlite3, .sqlite or .db) or else the data directory to hold it.

        ``max_bytes`` caps the data held (a disk budget): past it, appends raise
        SpoolUnavailable instead of filling the disk the rest of the host needs. None: no cap.
        """
        path = Path(path)
        is_file = path.suffix in DB_SUFFIXES and not path.is_dir()
        self.path = path if is_file else path / SPOOL_FILENAME
        self.metrics = metrics
        self.retention = retention
        if synchronous.upper() not in {"FULL", "NORMAL", "EXTRA"}:
            raise ValueError(f"synchronous must be FULL, NORMAL or EXTRA, got {synchronous!r}")
        self.synchronous = synchronous.upper()
        self.max_bytes = max_bytes
        self.transactions = 0  # committed transactions: fewer than appends under concurrency
        self.operations = 0  # operations committed (appends, claims, acks, reads…)
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = True

    # ------------------------------------------------------------------ lifecycle

    async def open(self) -> None:
        """Create or open the database, then make rows left in flight by a crash pending again."""
        self._loop = asyncio.get_running_loop()
        ready: asyncio.Future[None] = self._loop.create_future()
        self._thread = threading.Thread(target=self._run, args=(ready,), name="edgeproxy-spool", daemon=True)
        self._thread.start()
        await ready
        self._closed = False
        await self._submit(sql.reclaim_inflight)

    async def close(self) -> None:
        if self._closed or self._thread is None:
            return
        self._closed = True
        self._queue.put(None)
        await asyncio.to_thread(self._thread.join)
        self._thread = None

    def _connect(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=5.0)
        conn.row_factory = sqlite3.Row
        mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if mode.lower() != "wal":
            raise sqlite3.OperationalError(f"cannot use WAL mode on {self.path} (got {mode})")
        conn.execute(f"PRAGMA synchronous={self.synchronous}")
        migrate(conn, self.path)
        if self.max_bytes:
            page_size = conn.execute("PRAGMA page_size").fetchone()[0]
            hard = self.max_bytes + min(self.max_bytes, HARD_LIMIT_HEADROOM)
            conn.execute(f"PRAGMA max_page_count={max(1, hard // page_size)}")
        return conn

    # ------------------------------------------------------------------ writer thread

    def _run(self, ready: asyncio.Future[None]) -> None:
        loop = self._loop
        assert loop is not None
        try:
            conn = self._connect()
        except SchemaTooNew as exc:
            loop.call_soon_threadsafe(_settle, ready, None, SpoolUnavailable(str(exc)))
            return
        except (sqlite3.Error, OSError) as exc:
            err = SpoolUnavailable(f"cannot open the spool {self.path}: {exc}")
            loop.call_soon_threadsafe(_settle, ready, None, err)
            return
        loop.call_soon_threadsafe(_settle, ready, None, None)
        try:
            while True:
                job = self._queue.get()
                if job is None:
                    break
                jobs = [job]
                stop = False
                while len(jobs) < MAX_GROUP:
                    try:
                        more = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if more is None:
                        stop = True
                        break
                    jobs.append(more)
                self._execute(conn, jobs)
                if stop:
                    break
        finally:
            conn.close()
            # Anything queued after close() was requested fails rather than hanging forever.
            while True:
                try:
                    job = self._queue.get_nowait()
                except queue.Empty:
                    break
                if job is not None:
                    loop.call_soon_threadsafe(_settle, job[1], None, SpoolUnavailable("the spool is closed"))

    def _execute(self, conn: sqlite3.Connection, jobs: list[tuple[Callable[[sqlite3.Connection], Any], asyncio.Future[Any]]]) -> None:
        """Run the jobs in one transaction, then COMMIT once.

        Appends (the hot path: one per tracking call) go first, all together; should that
        fail (e.g. the spool is full) they are retried one by one like every other
        operation: each under its own savepoint, so one bad operation never fails its
        neighbours.
        """
        loop = self._loop
        assert loop is not None
        results: list[tuple[Any, BaseException | None] | None] = [None] * len(jobs)
        try:
            conn.execute("BEGIN IMMEDIATE")
            appends = [i for i, (fn, _) in enumerate(jobs) if isinstance(fn, _Append)]
            if len(appends) > 1 and self._run_one(conn, lambda c: _append_all(c, [jobs[i][0] for i in appends]))[1] is None:
                for i in appends:
                    results[i] = (None, None)
            for i, (fn, _) in enumerate(jobs):
                if results[i] is None:
                    results[i] = self._run_one(conn, fn)
            conn.execute("COMMIT")
            self.transactions += 1
            self.operations += len(jobs)
        except Exception as exc:
            try:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass
            results = [(None, exc)] * len(jobs)
        outcomes = []
        for (_, fut), outcome in zip(jobs, results):
            result, exc = outcome if outcome is not None else (None, None)
            if isinstance(exc, sqlite3.Error):
                exc = SpoolUnavailable(f"spool write failed: {exc}")
            outcomes.append((fut, result, exc))
        loop.call_soon_threadsafe(_settle_all, outcomes)  # one loop wake-up per transaction

    @staticmethod
    def _run_one(conn: sqlite3.Connection, fn: Callable[[sqlite3.Connection], Any]) -> tuple[Any, BaseException | None]:
        """``fn`` under a savepoint: its failure is rolled back and returned, not raised…"""
        conn.execute("SAVEPOINT op")
        try:
            result = fn(conn)
        except Exception as exc:
            if not conn.in_transaction:
                raise  # …unless SQLite rolled the whole transaction back (disk full, I/O error)
            conn.execute("ROLLBACK TO op")
            conn.execute("RELEASE op")
            return None, exc
        conn.execute("RELEASE op")
        return result, None

    async def _submit(self, fn: Callable[[sqlite3.Connection], Any]) -> Any:
        if self._closed or self._loop is None:
            raise SpoolUnavailable("the spool is closed")
        fut: asyncio.Future[Any] = self._loop.create_future()
        self._queue.put((fn, fut))
        return await fut

    # ------------------------------------------------------------------ edge side

    async def append(self, items: Sequence[SpoolItem], dead: Sequence[DeadLetter] = ()) -> None:
        """Store items and refused messages; durable (committed) when this returns."""
        if not items and not dead:
            return
        try:
            op = _encode_append(items, dead, self.max_bytes)
        except (TypeError, orjson.JSONEncodeError) as exc:
            raise ValueError(f"spool item is not JSON-serialisable: {exc}") from None
        await self._submit(op)

    async def ping(self) -> bool:
        try:
            return await self._submit(lambda c: c.execute("SELECT 1").fetchone()[0] == 1)
        except SpoolUnavailable:
            return False

    # ------------------------------------------------------------------ worker side

    async def due_groups(self, now: int | None = None) -> list[DueGroup]:
        """Groups with pending rows due at ``now``: their count and oldest ``received_ms``."""
        t = now_ms() if now is None else now
        return await self._submit(lambda c: sql.due_groups(c, t))

    async def next_attempt_ms(self, now: int | None = None) -> int | None:
        """When the earliest pending row that is not yet due becomes due (None: none waits)."""
        t = now_ms() if now is None else now
        return await self._submit(lambda c: sql.next_attempt_ms(c, t))

    async def claim(self, key: str, *, limit: int, max_bytes: int, now: int | None = None) -> list[ClaimedItem]:
        """Mark up to ``limit`` due rows of one group in flight, their sizes summing to ``max_bytes`` at most."""
        t = now_ms() if now is None else now
        return await self._submit(lambda c: sql.claim(c, key, t, limit, max_bytes))

    async def settle(
        self,
        *,
        ack: Sequence[int] = (),
        dead: Mapping[int, str | tuple[str, str]] | None = None,
        retry: Sequence[tuple[Sequence[int], int, str]] = (),
        release: Sequence[tuple[Sequence[int], int]] = (),
        response: tuple[str, int | None, int, str] | None = None,
        now: int | None = None,
    ) -> None:
        """Apply the outcome of one request in one transaction.

        ``ack``: delivered. ``dead``: row id -> (reason code, text), or a bare text. ``retry``: (row ids, next attempt ms,
        error), counting an attempt. ``release``: (row ids, not before ms) back to pending
        without counting an attempt (work claimed but not sent). ``response``: (endpoint,
        status or None, items, body excerpt) for the upstream response log.
        """
        t = now_ms() if now is None else now
        reasons = {row: dead_reason(r) for row, r in (dead or {}).items()}
        await self._submit(lambda c: sql.settle(
            c, t, ack=ack, dead=reasons, retry=retry, release=release, response=response, retention=self.retention
        ))

    async def ack(self, row_ids: Sequence[int]) -> None:
        await self.settle(ack=row_ids)

    async def retry(self, row_ids: Sequence[int], next_attempt_ms: int, error: str) -> None:
        await self.settle(retry=[(row_ids, next_attempt_ms, error)])

    async def dead_letter(self, reasons: Mapping[int, str | tuple[str, str]]) -> None:
        await self.settle(dead=reasons)

    async def release(self, row_ids: Sequence[int], not_before_ms: int = 0) -> None:
        await self.settle(release=[(row_ids, not_before_ms)])

    # ------------------------------------------------------------------ read side

    async def stats(self) -> dict[str, Any]:
        """depth (pending), in_flight, retrying, delivered, dead, oldest_age_s; sets the depth gauge."""
        t = now_ms()
        result = await self._submit(lambda c: sql.stats(c, t))
        if self.metrics is not None:
            self.metrics.spool_depth.set(result["depth"] + result["in_flight"])
        return result

    async def events_for_session(self, device_id: str, session_id: int | None = None, limit: int = 100) -> list[dict[str, Any]]:
        """A device's (or one of its sessions') items, most recent first, with delivery state."""
        return await self._submit(lambda c: sql.events_for_session(c, device_id, session_id, limit))

    async def dead_letters(self, limit: int = 100) -> list[dict[str, Any]]:
        return await self._submit(lambda c: sql.dead_letters(c, limit))

    async def dead_by_reason(self) -> dict[str, int]:
        return await self._submit(sql.dead_by_reason)

    async def undelivered(self, which: str, limit: int = 20) -> list[dict[str, Any]]:
        """Rows ``in_flight`` or ``retrying``, oldest first (for /debug)."""
        return await self._submit(lambda c: sql.undelivered(c, which, limit))

    async def recent_responses(self, limit: int = 50) -> list[dict[str, Any]]:
        return await self._submit(lambda c: sql.recent_responses(c, limit))

    async def replay_dead_letters(self, selection: ReplayFilter | None = None) -> int:
        """Put dead letters that have an item (and match ``selection``) back to pending; returns how many."""
        return await self._submit(lambda c: sql.replay(c, selection))


def _settle(fut: asyncio.Future[Any], result: Any, exc: BaseException | None) -> None:
    if fut.done():  # the awaiting task was cancelled; the write happened (or not) regardless
        return
    if exc is not None:
        fut.set_exception(exc)
    else:
        fut.set_result(result)


def _settle_all(outcomes: list[tuple[asyncio.Future[Any], Any, BaseException | None]]) -> None:
    for fut, result, exc in outcomes:
        _settle(fut, result, exc)
