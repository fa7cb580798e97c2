"""The durable spool: every accepted Amplitude item is on disk before the client gets its 200.

SQLite in WAL mode, embedded, no server. GROUP COMMIT on the event loop: the calls made during
one turn of the loop (every request's append, the worker's claims and verdicts, reads) run
together in one transaction when the turn ends. Each ``await spool.append(...)`` returns only
after its rows are committed and, with the default durability, flushed to disk. Appends made
while a flush is in progress wait for it to end and are then committed together: they could
not be acknowledged before the next flush anyway, and at ~1,000 calls/s, where few calls
share a turn, a commit each was a large part of a call's CPU (measured: 10% less CPU per
call and a higher rate at the same connections). Everything else is committed at once.

Why the SQL runs on the event loop and not in a writer thread: the statements take
microseconds of CPU, and a thread has to win the GIL back after every one of them. On a busy
core that hand-off waits for the scheduler, so a transaction of a few statements took
milliseconds of wall time and every append and delivery cycle queued behind it (measured:
~7 ms per transaction for ~1 ms of CPU). What does wait on the disk, the flush, is the one
thing left to a thread (``_Syncer``): the loop keeps serving while it runs, and one flush
covers every transaction committed before it started.

Durability: ``durability = "power_loss"`` (the default, ``synchronous="FULL"``) acknowledges
an append once the WAL holding it has been ``fdatasync``ed: it survives a ``kill -9``, a
kernel panic and a power cut. SQLite itself runs with ``synchronous=NORMAL``, which in WAL
mode syncs around checkpoints only, and the syncer adds the flush after commits, so the
guarantee equals SQLite's FULL without holding the loop during the flush.
``"process_crash"`` (``synchronous="NORMAL"``) acknowledges at commit: the WAL is in the OS
page cache, which survives the process (``kill -9``, restarts) but not a power cut.
Checkpoints (copying the WAL into the database) run in a second thread of the syncer's, on
a connection of their own, so neither the loop nor the flushes wait for them.

Bounded: past ``max_bytes`` (``delivery.max_spool_size``) appends fail with
SpoolUnavailable, so the edge answers 503 + Retry-After and the client keeps its events.

The SQL itself (states, queries) is in ``spool_sql.py``, the schema and its migrations in
``spool_schema.py`` (applied on open; a spool from a newer edgeproxy is refused). Rows ``inflight`` when the
process died are made ``pending`` again by ``open()``: at-least-once delivery, with
``insert_id`` dedupe at Amplitude.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import queue
import sqlite3
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import orjson

from edgeproxy.delivery import spool_sql as sql
from edgeproxy.delivery.spool_schema import SCHEMA, SchemaTooNew, migrate
from edgeproxy.delivery.spool_sql import (
    DEFAULT_SOURCE,
    DEFAULT_TARGET,
    ClaimedItem,
    DueGroup,
    ReplayFilter,
    dead_reason,
    group_key,
    item_size,
    now_ms,
)
from edgeproxy.metrics import Metrics

log = logging.getLogger("edgeproxy.spool")

__all__ = [
    "SCHEMA", "ClaimedItem", "DeadLetter", "DueGroup", "ReplayFilter", "Spool", "SpoolItem", "SpoolUnavailable",
    "group_key", "item_size", "now_ms",
]

SPOOL_FILENAME = "spool.sqlite3"
DB_SUFFIXES = frozenset({".sqlite3", ".sqlite", ".db"})
MAX_GROUP = 1024  # operations merged into one transaction at most
CHECKPOINT_EVERY_S = 1.0  # the syncer copies the WAL into the database at most this often
# A WAL longer than this (pages) is checkpointed with RESTART: see _Syncer._checkpoint.
WAL_RESTART_PAGES = 4096
WAL_SIZE_LIMIT = 64 * 1024 * 1024  # bytes a restarted WAL file is truncated to (journal_size_limit)
BUSY_RETRY_S = 0.005  # another process holds the write lock: try again after this…
BUSY_TIMEOUT_S = 5.0  # …for at most this long, then fail the operations (SpoolUnavailable)
CHECKPOINT_WAIT_S = 1.0  # a RESTART checkpoint waits this long for the loop's transaction to end
# The hard page limit sits this far above max_bytes: appends stop at max_bytes (a clear 503),
# while the worker's updates and one in-progress append still find room.
HARD_LIMIT_HEADROOM = 16 * 1024 * 1024
# Debian's SQLite is built with SECURE_DELETE on: every deleted row and freed page is overwritten
# with zeros, so pruning delivered rows wrote each of their pages into the WAL once more. FAST
# zeroes deleted content only where that costs no extra write (within pages already written).
# Measured: pruning delivered rows 11.0 -> 9.0 µs a row; forwarding CPU 19.5 -> 18.4 µs an event
# (bench_ingest --only forwarding, 4 alternating runs each). What must not linger is
# what `edgeproxy forget` deletes: that statement runs with secure_delete ON (spool_sql.forget).
SECURE_DELETE = "FAST"
# The worker's bookkeeping in small transactions, so tracking calls are not held up behind it:
# one transaction marking 500 rows delivered and pruning 1,000 held the event loop up to 11 ms
# (measured at ~1,000 calls/s); in pieces of 250 the longest was 2.7 ms, for the same CPU
# (pieces of 100 cost ~10% more forwarding CPU). Appends run in between the pieces.
ACK_CHUNK = 250  # acknowledged rows marked delivered per transaction
PRUNE_CHUNK = 250  # old delivered rows deleted per transaction
PRUNE_STEPS_PER_SETTLE = 100  # a settle prunes at most this many steps; the next one goes on


class SpoolUnavailable(Exception):
    """The spool cannot take the write (disk full, locked, corrupt, closed): answer 503 + Retry-After."""


class _Busy(Exception):
    """Another connection holds the write lock right now (SQLITE_BUSY at BEGIN)."""


@dataclass(slots=True)
class SpoolItem:
    """One Amplitude item (event, identification or usermap entry) to deliver.

    Slotted, not frozen: one is built for every event, and a frozen dataclass pays an
    ``object.__setattr__`` per field (2.9 µs against 0.7 µs on the bench machine). Nothing
    changes one after it is built but ``encoded`` (``item_json()``), and nothing hashes one.
    """

    message_id: str
    endpoint: str
    item: dict[str, Any]
    options: dict[str, Any] | None
    device_id: str | None
    user_id: str | None
    session_id: int | None
    received_ms: int
    target: str = DEFAULT_TARGET  # who delivers it: "amplitude", or "segment" (the relay)
    source: str = DEFAULT_SOURCE
    encoded: bytes | None = None  # ``item`` as JSON, once made (item_json)

    def item_json(self) -> bytes:
        """The item's JSON, made once per item: the queue stores it and the cockpit's trail keeps it."""
        encoded = self.encoded
        if encoded is None:
            encoded = self.encoded = orjson.dumps(self.item)
        return encoded


@dataclass(slots=True)
class DeadLetter:
    """An event the mapping refused: kept with its reason, never sent."""

    message_id: str
    payload: dict[str, Any]
    reason: str
    device_id: str | None
    session_id: int | None
    received_ms: int
    source: str = DEFAULT_SOURCE


class _Room:
    """The room left under ``max_bytes``, measured now and then rather than in every transaction.

    Why: the measurement (pages in use) is a statement of its own, ~16 µs per transaction or a
    sixth of a lone append's SQL. Between measurements each append is charged more than it can
    occupy (twice its encoded bytes plus ROW_ALLOWANCE a row for index entries and page slack),
    so the estimate only ever errs towards measuring early: appends stop at ``max_bytes``
    exactly as when every insert measured first (``sql.ensure_room``). A rolled-back append
    leaves its charge spent, which errs the same way. Room given back meanwhile (delivered
    rows pruned) is seen by the next measurement.
    """

    ROW_ALLOWANCE = 512

    def __init__(self, max_bytes: int | None) -> None:
        self.max_bytes = max_bytes
        self._left = 0  # bytes that may still be charged without measuring
        self.measured = 0  # measurements made (tests count them)

    def take(self, c: sqlite3.Connection, charge: int) -> None:
        """Admit an append of ``charge`` bytes, or raise SpoolFull."""
        if not self.max_bytes:
            return
        if charge < self._left:
            self._left -= charge
            return
        self.measured += 1
        used = sql.used_bytes(c)
        if used < self.max_bytes:
            self._left = self.max_bytes - used - charge
            return
        # Full: ensure_room frees delivered rows or raises SpoolFull. Room it freed could be
        # taken back by a rollback of this transaction, so the next append measures again.
        self._left = 0
        sql.ensure_room(c, self.max_bytes)


class _Retention:
    """Keeps the delivered rows (shown by /debug) at ``retention``, pruning in small steps.

    Pruning starts once the rows pass retention plus a slack and deletes the oldest, at most
    PRUNE_CHUNK a transaction (``step``), down to retention. The number of delivered rows is
    counted once, then kept in memory: the acks add to it, the deletions take from it. Counting
    walks every delivered row's index entry (~1 µs an event when it ran after each batch).
    When the number is wrong (rows deleted for room by ``ensure_room``; a transaction that failed
    after ``acked``) a step deletes fewer rows than it asked for, or the settle fails: either
    way the number is forgotten and counted again at the next step.
    """

    def __init__(self, retention: int) -> None:
        self.retention = retention
        self.limit = sql.prune_limit(retention)
        self.delivered: int | None = None  # unknown until counted
        self.pruning = False
        self.counted = 0

    def acked(self, n: int) -> None:
        if self.delivered is not None:
            self.delivered += n

    def due(self) -> bool:
        return self.delivered is None or self.pruning or self.delivered > self.limit

    def forget(self) -> None:
        self.delivered, self.pruning = None, False

    def step(self, c: sqlite3.Connection) -> None:
        """One transaction's share: count if unknown, then delete up to PRUNE_CHUNK old rows."""
        if self.delivered is None:
            self.delivered = sql.count_delivered(c)
            self.counted += 1
        if not self.pruning and self.delivered <= self.limit:
            return
        want = min(PRUNE_CHUNK, self.delivered - self.retention)
        deleted = sql.delete_oldest_delivered(c, want) if want > 0 else 0
        if deleted < want:
            self.forget()  # fewer than counted: count again
            return
        self.delivered -= deleted
        self.pruning = self.delivered > self.retention


@dataclass(frozen=True)
class _Append:
    """One caller's encoded rows. The writer merges every append of a transaction into one
    room check and a few multi-row INSERTs (see ``Spool._execute``)."""

    rows: list[tuple[Any, ...]]
    dead_rows: list[tuple[Any, ...]]
    charge: int  # the room it is charged (see _Room)
    room: _Room

    def __call__(self, c: sqlite3.Connection) -> None:
        self.room.take(c, self.charge)
        sql.insert_items(c, self.rows, self.dead_rows)


def _encode_append(items: Sequence[SpoolItem], dead: Sequence[DeadLetter], room: _Room) -> _Append:
    """Encode on the caller's side (the event loop) so a bad item fails its own call only."""
    rows = []
    size = 0
    for it in items:
        encoded = it.item_json()
        options = orjson.dumps(it.options) if it.options else None
        rows.append((
            it.message_id, it.endpoint, group_key(it.endpoint, it.options, it.target, it.source), encoded,
            options, it.device_id, it.user_id,
            it.session_id, it.received_ms, item_size(it.endpoint, encoded), it.target, it.source,
        ))
        size += len(encoded) + (len(options) if options else 0)
    dead_rows = []
    for d in dead:
        payload = orjson.dumps(d.payload)
        dead_rows.append((d.message_id, payload, d.device_id, d.session_id, d.received_ms, d.reason, d.received_ms,
                          d.source))
        size += len(payload)
    return _Append(rows, dead_rows, 2 * size + _Room.ROW_ALLOWANCE * (len(rows) + len(dead_rows)), room)


def _append_all(c: sqlite3.Connection, appends: Sequence[_Append]) -> None:
    """Every append of one transaction at once: one room check, then the rows together."""
    appends[0].room.take(c, sum(a.charge for a in appends))
    sql.insert_items(c, [r for a in appends for r in a.rows], [r for a in appends for r in a.dead_rows])


class _Syncer:
    """The spool's two threads: one flushes the WAL to disk on request, one checkpoints it.

    ``request(seq)`` asks for a flush covering commit number ``seq``; requests that queue up
    while a flush runs are served by the next one (group flush). ``on_synced(seq, error)`` is
    called on the event loop afterwards. Checkpoints use a connection of their thread's own,
    at most every CHECKPOINT_EVERY_S and only after commits: PASSIVE, which never blocks the
    loop's writes, and RESTART when the WAL has grown long (see ``_checkpoint``).

    Why two threads: a checkpoint copies the WAL into the database and syncs it, 10-22 ms
    under ~1,000 tracking calls/s on the bench machine, once a second. When one thread did
    both, every call committed meanwhile waited for the whole checkpoint before its flush
    could start (the longest wait for a flush: 16-29 ms against an fdatasync of ~1 ms).
    """

    def __init__(self, db_path: Path, loop: asyncio.AbstractEventLoop,
                 on_synced: Callable[[int, BaseException | None], None]) -> None:
        self.dirty = False  # set by the loop after each commit; a checkpoint has work to do
        self.restarting = False  # a RESTART checkpoint wants the write lock: the loop holds back
        self._db_path = db_path
        self._loop = loop
        self._on_synced = on_synced
        self._requests: queue.SimpleQueue[int | None] = queue.SimpleQueue()
        self._stopping = threading.Event()
        # The WAL exists once the connection has opened the database in WAL mode; it keeps its
        # inode while a connection is open (SQLite restarts it in place after a checkpoint).
        self._wal_fd = os.open(f"{db_path}-wal", os.O_RDONLY | os.O_CREAT, 0o644)
        self._threads = [
            threading.Thread(target=self._run_flushes, name="edgeproxy-spool-sync", daemon=True),
            threading.Thread(target=self._run_checkpoints, name="edgeproxy-spool-checkpoint", daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    def request(self, seq: int) -> None:
        self._requests.put(seq)

    def stop(self) -> None:
        """Serve the flushes already asked for, then end both threads (blocking: call off the loop)."""
        self._requests.put(None)
        self._stopping.set()
        for thread in self._threads:
            thread.join()
        os.close(self._wal_fd)

    def _run_flushes(self) -> None:
        while True:
            seq = self._requests.get()
            stop = seq is None
            while not stop:  # every request queued meanwhile is covered by this one flush
                try:
                    more = self._requests.get_nowait()
                except queue.Empty:
                    break
                stop = more is None
                seq = max(seq or 0, more or 0)
            if seq:
                try:
                    os.fdatasync(self._wal_fd)
                    error: BaseException | None = None
                except OSError as exc:
                    error = exc
                self._loop.call_soon_threadsafe(self._on_synced, seq, error)
            if stop:
                return

    def _run_checkpoints(self) -> None:
        conn: sqlite3.Connection | None = None
        try:
            while not self._stopping.wait(CHECKPOINT_EVERY_S):
                if self.dirty:
                    self.dirty = False  # before the checkpoint: a commit made during it sets it again
                    conn = conn or sqlite3.connect(self._db_path, timeout=CHECKPOINT_WAIT_S)
                    self._checkpoint(conn)
        finally:
            if conn is not None:
                conn.close()

    def _checkpoint(self, conn: sqlite3.Connection) -> None:
        """Copy the WAL into the database; restart the WAL when it has grown long.

        PASSIVE never holds up the loop's writes, but it only copies the frames committed
        before it began, and SQLite starts the WAL over only after a checkpoint that copied
        everything: under steady writes that rarely happens, and the WAL file grew without
        bound (76 MB in 24 s of saturating batch load). Past WAL_RESTART_PAGES a RESTART
        checkpoint takes the write lock while it copies; ``restarting`` tells the loop to
        hold its transactions back meanwhile (they wait as for any foreign lock, and the
        loop keeps serving), so the checkpoint gets the lock and the next write starts the
        WAL from its beginning.
        """
        try:
            busy, frames, copied = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            if frames > WAL_RESTART_PAGES:
                self.restarting = True
                try:
                    busy, frames, copied = conn.execute("PRAGMA wal_checkpoint(RESTART)").fetchone()
                finally:
                    self.restarting = False
            if busy or copied < frames:
                self.dirty = True  # not all copied: try again next time
        except sqlite3.Error:
            self.dirty = True  # busy now: the next one copies what this one did not


class Spool:
    """The SQLite spool. All methods are coroutines; the SQL runs on the event loop, in batches."""

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

        ``synchronous``: FULL (or EXTRA) acknowledges appends once flushed to disk, NORMAL
        once committed (see the module docstring).

        ``max_bytes`` caps the data held (a disk budget): past it, appends raise
        SpoolUnavailable instead of filling the disk the rest of the host needs. None: no cap.
        """
        path = Path(path)
        is_file = path.suffix in DB_SUFFIXES and not path.is_dir()
        self.path = path if is_file else path / SPOOL_FILENAME
        self.metrics = metrics
        self._retention = _Retention(retention)
        if synchronous.upper() not in {"FULL", "NORMAL", "EXTRA"}:
            raise ValueError(f"synchronous must be FULL, NORMAL or EXTRA, got {synchronous!r}")
        self.synchronous = synchronous.upper()
        self.max_bytes = max_bytes
        self._room = _Room(max_bytes)
        self.transactions = 0  # committed transactions: fewer than appends under concurrency
        self.operations = 0  # operations committed (appends, claims, acks, reads…)
        self._conn: sqlite3.Connection | None = None
        self._syncer: _Syncer | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._jobs: list[tuple[Callable[[sqlite3.Connection], Any], asyncio.Future[Any]]] = []
        self._flush_handle: asyncio.Handle | asyncio.TimerHandle | None = None
        self._busy_since: float | None = None
        self._commits = 0  # transactions whose appends wait for a flush, numbered
        self._unsynced: collections.deque[tuple[int, list[asyncio.Future[Any]]]] = collections.deque()
        self._in_flight: dict[int, str] = {}  # row id -> group key: claimed, verdict not yet settled
        self._closed = True

    @property
    def _durable_ack(self) -> bool:
        return self.synchronous != "NORMAL"

    # ------------------------------------------------------------------ lifecycle

    async def open(self) -> None:
        """Create or open the database (migrating it), and start the flush thread."""
        self._loop = asyncio.get_running_loop()
        try:
            self._conn = await asyncio.to_thread(self._connect)
            self._syncer = _Syncer(self.path, self._loop, self._synced)
        except SchemaTooNew as exc:
            raise SpoolUnavailable(str(exc)) from None
        except (sqlite3.Error, OSError) as exc:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
            raise SpoolUnavailable(f"cannot open the spool {self.path}: {exc}") from None
        self._closed = False
        self._in_flight.clear()
        await self._submit(sql.reclaim_inflight)  # rows an older edgeproxy marked in flight on disk

    async def close(self) -> None:
        """Run what is queued, wait for its flush, then close (later calls get SpoolUnavailable)."""
        if self._closed or self._conn is None:
            return
        self._closed = True
        if self._flush_handle is not None:
            self._flush_handle.cancel()
        self._busy_since = None
        while self._jobs:
            self._flush()
            if self._jobs:  # the database is locked by another process: wait as a flush would
                await asyncio.sleep(BUSY_RETRY_S)
        waiting = [fut for _, futs in self._unsynced for fut in futs]
        if waiting:
            await asyncio.gather(*waiting, return_exceptions=True)
        conn, syncer, self._conn, self._syncer = self._conn, self._syncer, None, None
        if syncer is not None:
            await asyncio.to_thread(syncer.stop)
        await asyncio.to_thread(conn.close)

    def _connect(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # timeout=0: a write lock held by another process (the CLI's replay) must not stall the
        # event loop in SQLite's busy handler; _flush retries instead (BUSY_TIMEOUT_S in all).
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=0)
        try:
            conn.row_factory = sqlite3.Row
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if mode.lower() != "wal":
                raise sqlite3.OperationalError(f"cannot use WAL mode on {self.path} (got {mode})")
            conn.execute("PRAGMA synchronous=NORMAL")  # the flush after commit is the syncer's
            conn.execute("PRAGMA wal_autocheckpoint=0")  # so is the checkpoint
            conn.execute(f"PRAGMA journal_size_limit={WAL_SIZE_LIMIT}")  # a restarted WAL shrinks back
            conn.execute(f"PRAGMA secure_delete={SECURE_DELETE}")  # forget() scrubs; see SECURE_DELETE
            conn.execute("PRAGMA busy_timeout=5000")  # for the migration only; reset below
            migrate(conn, self.path)
            conn.execute("PRAGMA busy_timeout=0")
            if self.max_bytes:
                page_size = conn.execute("PRAGMA page_size").fetchone()[0]
                hard = self.max_bytes + min(self.max_bytes, HARD_LIMIT_HEADROOM)
                conn.execute(f"PRAGMA max_page_count={max(1, hard // page_size)}")
        except BaseException:
            conn.close()
            raise
        return conn

    # ------------------------------------------------------------------ group commit (on the loop)

    async def _submit(self, fn: Callable[[sqlite3.Connection], Any]) -> Any:
        if self._closed or self._loop is None:
            raise SpoolUnavailable("the spool is closed")
        fut: asyncio.Future[Any] = self._loop.create_future()
        self._jobs.append((fn, fut))
        if not (self._unsynced and isinstance(fn, _Append)):  # an append, while a flush runs: after it (_synced)
            self._flush_soon()
        return await fut

    def _flush_soon(self) -> None:
        """Run the queued operations after the rest of this turn of the loop (once, however many ask)."""
        if self._flush_handle is None and self._loop is not None:
            self._flush_handle = self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        """Run the queued operations in one transaction and settle their futures."""
        self._flush_handle = None
        conn, loop = self._conn, self._loop
        jobs, self._jobs = self._jobs[:MAX_GROUP], self._jobs[MAX_GROUP:]
        if not jobs or conn is None or loop is None:
            return
        try:
            if self._syncer is not None and self._syncer.restarting:
                raise _Busy("the WAL is being checkpointed")
            outcomes = self._execute(conn, jobs)
        except _Busy as exc:
            now = time.monotonic()
            self._busy_since = self._busy_since or now
            if now - self._busy_since < BUSY_TIMEOUT_S:
                self._jobs[:0] = jobs  # another process holds the write lock: try again shortly
                if self._flush_handle is None and not self._closed:
                    self._flush_handle = loop.call_later(BUSY_RETRY_S, self._flush)
                return
            outcomes = [(None, SpoolUnavailable(f"spool write failed: {exc}"))] * len(jobs)
        except Exception as exc:  # a bug, not a database error: fail these calls, never leave them waiting
            log.exception("spool transaction failed")
            outcomes = [(None, SpoolUnavailable(f"spool write failed: {exc!r}"))] * len(jobs)
        self._busy_since = None
        if self._syncer is not None:
            self._syncer.dirty = True
        durable: list[asyncio.Future[Any]] = []
        for (fn, fut), (result, exc) in zip(jobs, outcomes):
            if exc is None and self._durable_ack and isinstance(fn, _Append):
                durable.append(fut)  # acknowledged once the flush covering this commit is done
            else:
                _settle(fut, result, exc)
        if durable:
            assert self._syncer is not None
            self._commits += 1
            self._unsynced.append((self._commits, durable))
            self._syncer.request(self._commits)
        if self._jobs:
            self._flush_soon()

    def _synced(self, seq: int, error: BaseException | None) -> None:
        """The syncer flushed the WAL up to commit ``seq``: those appends are durable (or failed)."""
        while self._unsynced and self._unsynced[0][0] <= seq:
            _, futs = self._unsynced.popleft()
            for fut in futs:
                if error is None:
                    _settle(fut, None, None)
                else:
                    _settle(fut, None, SpoolUnavailable(f"spool flush to disk failed: {error}"))
        if self._jobs and not self._unsynced:
            self._flush_soon()  # the appends held for this flush

    def _execute(
        self, conn: sqlite3.Connection, jobs: list[tuple[Callable[[sqlite3.Connection], Any], asyncio.Future[Any]]]
    ) -> list[tuple[Any, BaseException | None]]:
        """Run the jobs in one transaction, COMMIT once; returns each job's (result, error).

        Appends (the hot path: one per tracking call) go first, all together; should that
        fail (e.g. the spool is full) they are retried one by one like every other
        operation: each under its own savepoint, so one bad operation never fails its
        neighbours. Raises _Busy, having done nothing, when another process holds the lock.
        """
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            if "locked" in str(exc) or "busy" in str(exc):
                raise _Busy(str(exc)) from None
            return [(None, SpoolUnavailable(f"spool write failed: {exc}"))] * len(jobs)
        if len(jobs) == 1:
            return [self._execute_alone(conn, jobs[0][0])]
        results: list[tuple[Any, BaseException | None] | None] = [None] * len(jobs)
        try:
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
            _rollback(conn)
            results = [(None, exc)] * len(jobs)
        out = []
        for outcome in results:
            result, exc = outcome if outcome is not None else (None, None)
            out.append((result, _unavailable(exc)))
        return out

    def _execute_alone(self, conn: sqlite3.Connection, fn: Callable[[sqlite3.Connection], Any]) -> tuple[Any, BaseException | None]:
        """One operation in the transaction just begun: no savepoint needed (a quiet moment's
        single tracking call), its failure rolls the whole transaction back."""
        try:
            result = fn(conn)
            conn.execute("COMMIT")
        except Exception as exc:
            _rollback(conn)
            return None, _unavailable(exc)
        self.transactions += 1
        self.operations += 1
        return result, None

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

    # ------------------------------------------------------------------ edge side

    async def append(self, items: Sequence[SpoolItem], dead: Sequence[DeadLetter] = ()) -> None:
        """Store items and refused messages; durable (committed) when this returns."""
        if not items and not dead:
            return
        try:
            op = _encode_append(items, dead, self._room)
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
        groups = await self._submit(lambda c: sql.due_groups(c, t))
        if not self._in_flight:
            return groups
        flying = collections.Counter(self._in_flight.values())  # due on disk, but already sent
        return [replace(g, count=g.count - flying[g.group_key]) for g in groups if g.count > flying[g.group_key]]

    async def next_attempt_ms(self, now: int | None = None) -> int | None:
        """When the earliest pending row that is not yet due becomes due (None: none waits)."""
        t = now_ms() if now is None else now
        return await self._submit(lambda c: sql.next_attempt_ms(c, t))

    async def claim(self, key: str, *, limit: int, max_bytes: int, now: int | None = None) -> list[ClaimedItem]:
        """Mark up to ``limit`` due rows of one group in flight, their sizes summing to ``max_bytes`` at most.

        In flight is kept in memory (see spool_sql): the rows stay pending on disk, so a claim
        reads past the group's rows already in flight and writes nothing.
        """
        t = now_ms() if now is None else now
        taken: list[ClaimedItem] = []

        def claim(c: sqlite3.Connection) -> list[ClaimedItem]:
            # In flight changes inside the transaction, so every later operation of it (a
            # /debug read, another claim) sees the same state as the rows.
            flying = sum(1 for group in self._in_flight.values() if group == key)
            rows = sql.due_rows(c, key, t, limit + flying)
            taken.extend(sql.pick(rows, limit=limit, max_bytes=max_bytes, skip=self._in_flight))
            for item in taken:
                self._in_flight[item.row_id] = key
            return taken

        try:
            return await self._submit(claim)
        except Exception:
            for item in taken:  # the transaction failed: nothing was handed out
                self._in_flight.pop(item.row_id, None)
            raise

    async def settle(
        self,
        *,
        ack: Sequence[int] = (),
        dead: Mapping[int, str | tuple[str, str]] | None = None,
        retry: Sequence[tuple[Sequence[int], int, str]] = (),
        release: Sequence[tuple[Sequence[int], int]] = (),
        response: tuple[Any, ...] | None = None,
        now: int | None = None,
    ) -> None:
        """Apply the outcome of one request.

        ``ack``: delivered. ``dead``: row id -> (reason code, text), or a bare text. ``retry``: (row ids, next attempt ms,
        error), counting an attempt. ``release``: (row ids, not before ms) back to pending
        without counting an attempt (work claimed but not sent). ``response``: (endpoint,
        status or None, items, body excerpt[, target, source]) for the upstream response log.

        One transaction holds everything but acks past the first ACK_CHUNK, which follow in
        transactions of their own (see ACK_CHUNK), and then the pruning they call for. Each
        row stays in flight until its own transaction lands, so no claim meanwhile takes it.
        A crash between them leaves the later rows pending: they are sent again (at-least-once;
        Amplitude drops the repeats by insert_id).
        """
        t = now_ms() if now is None else now
        reasons = {row: dead_reason(r) for row, r in (dead or {}).items()}
        acks = list(ack)
        first, later = acks[:ACK_CHUNK], [acks[i:i + ACK_CHUNK] for i in range(ACK_CHUNK, len(acks), ACK_CHUNK)]

        def land(rows: Sequence[Any]) -> None:
            # Settled, or the write failed: either way no longer in flight. After a failure the
            # rows are still pending on disk and are sent again (at-least-once).
            for row_id in rows:
                self._in_flight.pop(row_id, None)

        def applying(
            ack: Sequence[int], dead: Mapping[int, tuple[str, str]], retry: Sequence[tuple[Sequence[int], int, str]],
            release: Sequence[tuple[Sequence[int], int]], response: tuple[Any, ...] | None,
        ) -> Callable[[sqlite3.Connection], None]:
            def apply(c: sqlite3.Connection) -> None:
                try:
                    sql.settle(c, t, ack=ack, dead=dead, retry=retry, release=release, response=response)
                    self._retention.acked(len(ack))
                finally:
                    # Inside the transaction: later operations see rows and in flight agree.
                    land(sql.settled_rows(ack, dead, retry, release))
            return apply

        try:
            await self._submit(applying(first, reasons, retry, release, response))
            for chunk in later:
                await self._submit(applying(chunk, {}, (), (), None))
        except BaseException:
            self._retention.forget()
            raise
        finally:
            land(sql.settled_rows(acks, reasons, retry, release))  # also what never ran (the spool closed)
        if acks:
            await self._prune()

    async def _prune(self) -> None:
        """Steps of pruning, one transaction each, until the delivered rows are within retention.

        Housekeeping: the acks have landed by now, so a failed step is logged, not raised (the
        worker would take it for a failed settle and send the rows again); the next settle
        counts the rows afresh and carries on.
        """
        for _ in range(PRUNE_STEPS_PER_SETTLE):
            if not self._retention.due():
                return
            try:
                await self._submit(self._retention.step)
            except Exception as exc:
                self._retention.forget()
                log.warning("pruning delivered rows failed, to be tried again after the next ack: %s", exc)
                return

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
        flying = len(self._in_flight)  # pending on disk, in flight here
        result["in_flight"] += flying
        result["depth"] = max(0, result["depth"] - flying)
        if self.metrics is not None:
            self.metrics.spool_depth.set(result["depth"] + result["in_flight"])
        return result

    async def events_for_session(self, device_id: str, session_id: int | None = None, limit: int = 100) -> list[dict[str, Any]]:
        """A device's (or one of its sessions') items, most recent first, with delivery state."""
        return await self._submit(lambda c: sql.events_for_session(c, device_id, session_id, limit, self._in_flight))

    async def dead_letters(self, limit: int = 100) -> list[dict[str, Any]]:
        return await self._submit(lambda c: sql.dead_letters(c, limit))

    async def dead_by_reason(self) -> dict[str, int]:
        return await self._submit(sql.dead_by_reason)

    async def undelivered(self, which: str, limit: int = 20) -> list[dict[str, Any]]:
        """Rows ``in_flight`` or ``retrying``, oldest first (for /debug)."""
        return await self._submit(lambda c: sql.undelivered(c, which, limit, list(self._in_flight)))

    async def recent_responses(self, limit: int = 50) -> list[dict[str, Any]]:
        return await self._submit(lambda c: sql.recent_responses(c, limit))

    async def depth_by_target(self) -> list[dict[str, Any]]:
        return await self._submit(sql.depth_by_target)

    async def replay_dead_letters(self, selection: ReplayFilter | None = None) -> int:
        """Put dead letters that have an item (and match ``selection``) back to pending; returns how many."""
        return await self._submit(lambda c: sql.replay(c, selection))

    async def forget(self, device_ids: Sequence[str], user_id: str | None) -> dict[str, int]:
        """Delete a person's rows in every state (``edgeproxy forget``); counts by state."""
        return await self._submit(lambda c: sql.forget(c, list(device_ids), user_id))

    async def user_devices(self, user_id: str) -> list[str]:
        return await self._submit(lambda c: sql.user_devices(c, user_id))


def _rollback(conn: sqlite3.Connection) -> None:
    """End a failed transaction (SQLite may already have rolled it back itself)."""
    try:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
    except sqlite3.Error:
        pass


def _unavailable(exc: BaseException | None) -> BaseException | None:
    """A database error as the spool's own (the edge answers 503); any other error as it is."""
    return SpoolUnavailable(f"spool write failed: {exc}") if isinstance(exc, sqlite3.Error) else exc


def _settle(fut: asyncio.Future[Any], result: Any, exc: BaseException | None) -> None:
    if fut.done():  # the awaiting task was cancelled; the write happened (or not) regardless
        return
    if exc is not None:
        fut.set_exception(exc)
    else:
        fut.set_result(result)
