"""Group commit on the event loop: the spool's operations of one turn in one transaction.

The calls made during one turn of the loop (every request's append, the worker's claims and
verdicts, reads) run together in one transaction when the turn ends. Appends are
acknowledged once the WAL holding them is flushed (``durable``; the Syncer's thread flushes)
or at commit; appends made while a flush is in progress wait for it and are then committed
together: they could not be acknowledged before the next flush anyway (measured: 10% less
CPU per call at ~1,000 calls/s than a commit each). Everything else is committed at once.
A write lock held by another process (the CLI's replay) is waited out by retrying, never in
SQLite's busy handler, which would stall the loop.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import sqlite3
import time
from pathlib import Path
from typing import Any, Callable

from edgeproxy.delivery.records import SpoolUnavailable
from edgeproxy.delivery.spool_budget import Append, append_all
from edgeproxy.delivery.spool_sync import Syncer

log = logging.getLogger("edgeproxy.spool")

MAX_GROUP = 1024  # operations merged into one transaction at most
BUSY_RETRY_S = 0.005  # another process holds the write lock: try again after this…
BUSY_TIMEOUT_S = 5.0  # …for at most this long, then fail the operations (SpoolUnavailable)

Job = tuple[Callable[[sqlite3.Connection], Any], asyncio.Future[Any]]


class _Busy(Exception):
    """Another connection holds the write lock right now (SQLITE_BUSY at BEGIN)."""


class GroupCommit:
    """The spool's one connection and the queue of operations waiting for the next transaction."""

    def __init__(self, conn: sqlite3.Connection, loop: asyncio.AbstractEventLoop, db_path: Path, *, durable: bool,
                 on_begin: Callable[[sqlite3.Connection], None] | None = None,
                 on_commit: Callable[[], None] | None = None, on_rollback: Callable[[], None] | None = None) -> None:
        """``durable``: appends are acknowledged once flushed to disk, else at commit. Starts the
        Syncer's threads (checkpoints run either way); ``close`` ends them. ``on_rollback`` is
        told whenever work is rolled back (state kept in memory may no longer match the file),
        ``on_begin`` at the start of each transaction, ``on_commit`` after each commit."""
        self._on_begin = on_begin or (lambda c: None)
        self._on_rollback = on_rollback or (lambda: None)
        self._on_commit = on_commit or (lambda: None)
        self.transactions = 0  # committed transactions: fewer than appends under concurrency
        self._conn = conn
        self._loop = loop
        self._durable_ack = durable
        self._jobs: list[Job] = []
        self._flush_handle: asyncio.Handle | asyncio.TimerHandle | None = None
        self._busy_since: float | None = None
        self._commits = 0  # transactions whose appends wait for a flush, numbered
        self._unsynced: collections.deque[tuple[int, list[asyncio.Future[Any]]]] = collections.deque()
        self._closed = False
        self._syncer: Syncer | None = Syncer(db_path, loop, self._synced)

    async def close(self) -> None:
        """Refuse new operations, run the queued ones, wait for their flush, end the threads."""
        self._closed = True
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        self._busy_since = None
        while self._jobs:
            self._flush()
            if self._jobs:  # the database is locked by another process: wait as a flush would
                await asyncio.sleep(BUSY_RETRY_S)
        waiting = [fut for _, futs in self._unsynced for fut in futs]
        if waiting:
            await asyncio.gather(*waiting, return_exceptions=True)
        syncer, self._syncer = self._syncer, None
        if syncer is not None:
            await asyncio.to_thread(syncer.stop)

    async def submit(self, fn: Callable[[sqlite3.Connection], Any]) -> Any:
        if self._closed:
            raise SpoolUnavailable("the spool is closed")
        fut: asyncio.Future[Any] = self._loop.create_future()
        self._jobs.append((fn, fut))
        if not (self._unsynced and isinstance(fn, Append)):  # an append, while a flush runs: after it (_synced)
            self._flush_soon()
        return await fut

    def _flush_soon(self) -> None:
        """Run the queued operations after the rest of this turn of the loop (once, however many ask)."""
        if self._flush_handle is None:
            self._flush_handle = self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        """Run the queued operations in one transaction and settle their futures."""
        self._flush_handle = None
        conn, loop = self._conn, self._loop
        jobs, self._jobs = self._jobs[:MAX_GROUP], self._jobs[MAX_GROUP:]
        if not jobs:
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
        for (fn, fut), (result, error) in zip(jobs, outcomes):
            if error is None and self._durable_ack and isinstance(fn, Append):
                durable.append(fut)  # acknowledged once the flush covering this commit is done
            else:
                _settle(fut, result, error)
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
        try:
            self._on_begin(conn)
        except Exception as exc:
            _rollback(conn)
            return [(None, _unavailable(exc))] * len(jobs)
        if len(jobs) == 1:
            return [self._execute_alone(conn, jobs[0][0])]
        results: list[tuple[Any, BaseException | None] | None] = [None] * len(jobs)
        try:
            appends = [(i, fn) for i, (fn, _) in enumerate(jobs) if isinstance(fn, Append)]
            if len(appends) > 1 and self._run_one(conn, lambda c: append_all(c, [fn for _, fn in appends]))[1] is None:
                for i, _ in appends:
                    results[i] = (None, None)
            for i, (fn, _) in enumerate(jobs):
                if results[i] is None:
                    results[i] = self._run_one(conn, fn)
            conn.execute("COMMIT")
            self.transactions += 1
            self._on_commit()
        except Exception as exc:
            _rollback(conn)
            self._on_rollback()
            results = [(None, exc)] * len(jobs)
        out = []
        for outcome in results:
            result, error = outcome if outcome is not None else (None, None)
            out.append((result, _unavailable(error)))
        return out

    def _execute_alone(self, conn: sqlite3.Connection, fn: Callable[[sqlite3.Connection], Any]) -> tuple[Any, BaseException | None]:
        """One operation in the transaction just begun: no savepoint needed (a quiet moment's
        single tracking call), its failure rolls the whole transaction back."""
        try:
            result = fn(conn)
            conn.execute("COMMIT")
        except Exception as exc:
            _rollback(conn)
            self._on_rollback()
            return None, _unavailable(exc)
        self.transactions += 1
        self._on_commit()
        return result, None

    def _run_one(self, conn: sqlite3.Connection, fn: Callable[[sqlite3.Connection], Any]) -> tuple[Any, BaseException | None]:
        """``fn`` under a savepoint: its failure is rolled back and returned, not raised…"""
        conn.execute("SAVEPOINT op")
        try:
            result = fn(conn)
        except Exception as exc:
            self._on_rollback()
            if not conn.in_transaction:
                raise  # …unless SQLite rolled the whole transaction back (disk full, I/O error)
            conn.execute("ROLLBACK TO op")
            conn.execute("RELEASE op")
            return None, exc
        conn.execute("RELEASE op")
        return result, None


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
