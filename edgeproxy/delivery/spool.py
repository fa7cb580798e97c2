"""The durable spool: every accepted Amplitude item is on disk before the client gets its 200.

SQLite in WAL mode, embedded, no server. This module is the queue's API (append, claim,
settle, the /debug reads); the parts each have a module: ``spool_file`` (the file's path,
the connection's PRAGMAs), ``spool_commit`` (GROUP COMMIT on the event loop: one turn's
operations in one transaction; each ``await spool.append(...)`` returns only after its rows
are committed and, with the default durability, flushed to disk), ``spool_sync`` (the flush
and checkpoint threads), ``spool_budget`` (the room budget, the encoded append, retention),
``spool_stream`` (the append-only stream new items go to: segment tables written once, a
durable cursor per group), ``spool_sql`` (the side table, for rows that failed once and dead
letters), ``spool_view`` (the reads over both), ``spool_schema`` (the schema and its
migrations), ``records`` (what is queued).

Why the SQL runs on the event loop and not in a writer thread: the statements take
microseconds of CPU, and a thread has to win the GIL back after every one of them. On a busy
core that hand-off waits for the scheduler, so a transaction of a few statements took
milliseconds of wall time and every append and delivery cycle queued behind it (measured:
~7 ms per transaction for ~1 ms of CPU). What does wait on the disk, the flush, is the one
thing left to a thread (``spool_sync.Syncer``): the loop keeps serving while it runs, and one flush
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

The schema is migrated on open (a spool from a newer edgeproxy is refused). What was in flight
when the process died is due again after ``open()`` (the stream's cursor never moved past it;
old ``inflight`` rows of the side table are made pending): at-least-once delivery, with
``insert_id`` dedupe at Amplitude and messageId dedupe at Segment. The stream's state is read
from the file at the first operation (a count per segment: 25 ms for a backlog of 200,000
rows) and again whenever another process has written the stream.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import sqlite3
from dataclasses import replace
from pathlib import Path
from typing import Any, Awaitable, Callable, Mapping, Sequence

import orjson

from edgeproxy.delivery import spool_admin as admin
from edgeproxy.delivery import spool_sql as sql
from edgeproxy.delivery import spool_view as view
from edgeproxy.delivery.records import (
    ClaimedItem,
    DeadLetter,
    DueGroup,
    SpoolItem,
    SpoolUnavailable,
    dead_reason,
    group_key,
    item_size,
    now_ms,
    settled_rows,
)
from edgeproxy.delivery.spool_admin import ReplayFilter
from edgeproxy.delivery.spool_budget import PRUNE_STEPS_PER_SETTLE, Retention, Room, encode_append
from edgeproxy.delivery.spool_commit import GroupCommit
from edgeproxy.delivery.spool_file import connect, spool_path
from edgeproxy.delivery.spool_parts import Either, merge_due_groups, pick_claim, split_verdict
from edgeproxy.delivery.spool_schema import SCHEMA, SchemaTooNew
from edgeproxy.delivery.spool_stream import Stream
from edgeproxy.metrics import Metrics

log = logging.getLogger("edgeproxy.spool")

__all__ = [
    "SCHEMA", "ClaimedItem", "DeadLetter", "DueGroup", "ReplayFilter", "Spool", "SpoolItem", "SpoolUnavailable",
    "group_key", "item_size", "now_ms",
]

# The worker's bookkeeping in small transactions, so tracking calls are not held up behind it:
# one transaction marking 500 rows delivered and pruning 1,000 held the event loop up to 11 ms
# (measured at ~1,000 calls/s); in pieces of 250 the longest was 2.7 ms, for the same CPU
# (pieces of 100 cost ~10% more forwarding CPU). Appends run in between the pieces.
ACK_CHUNK = 250  # acknowledged rows marked delivered per transaction
# Rows read per claim transaction. Reading a row costs 2.5-5 µs (its item's bytes; more in a
# busy server, its pages colder), so a slice holds the loop ~0.5 ms (200-row slices were
# measured at a median of 0.98 ms under ~850 calls/s); each slice more costs a transaction
# (~40 µs, 0.4 µs an event).
CLAIM_SLICE = 100


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
        self.path = spool_path(path)
        self.metrics = metrics
        self._retention = Retention(retention)
        if synchronous.upper() not in {"FULL", "NORMAL", "EXTRA"}:
            raise ValueError(f"synchronous must be FULL, NORMAL or EXTRA, got {synchronous!r}")
        self.synchronous = synchronous.upper()
        self.max_bytes = max_bytes
        self._stream = Stream(retention)  # a new one at each open()
        self._room = Room(max_bytes, lambda c: self._stream.free_room(c))
        self._conn: sqlite3.Connection | None = None
        self._commit: GroupCommit | None = None
        # The side table's row id -> group key: claimed, verdict not yet settled (the stream's
        # rows in flight are its own ``flying``).
        self._in_flight: dict[int, str] = {}
        self._transactions = 0  # of the GroupCommits closed before (a reopened spool counts on)

    @property
    def transactions(self) -> int:
        """Committed transactions: fewer than appends under concurrency."""
        return self._transactions + (self._commit.transactions if self._commit is not None else 0)

    # ------------------------------------------------------------------ lifecycle

    async def open(self) -> None:
        """Create or open the database (migrating it), and start the flush thread."""
        loop = asyncio.get_running_loop()
        try:
            self._conn = await asyncio.to_thread(connect, self.path, self.max_bytes)
            self._stream = Stream(self._retention.retention)  # loaded from the file at its first operation
            self._commit = GroupCommit(self._conn, loop, self.path, durable=self.synchronous != "NORMAL",
                                       on_begin=self._stream.begin, on_commit=self._stream.committed,
                                       on_rollback=self._stream.rolled_back)
        except SchemaTooNew as exc:
            raise SpoolUnavailable(str(exc)) from None
        except (sqlite3.Error, OSError) as exc:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
            raise SpoolUnavailable(f"cannot open the spool {self.path}: {exc}") from None
        self._in_flight.clear()
        await self._submit(sql.reclaim_inflight)  # rows an older edgeproxy marked in flight on disk

    async def close(self) -> None:
        """Run what is queued, wait for its flush, then close (later calls get SpoolUnavailable)."""
        commit, conn, self._commit, self._conn = self._commit, self._conn, None, None
        if commit is None or conn is None:
            return
        await commit.close()
        self._transactions += commit.transactions
        await asyncio.to_thread(conn.close)

    def _submit(self, fn: Callable[[sqlite3.Connection], Any]) -> Awaitable[Any]:
        """``fn`` in the next group-committed transaction (spool_commit)."""
        commit = self._commit
        if commit is None:
            raise SpoolUnavailable("the spool is closed")
        return commit.submit(fn)

    # ------------------------------------------------------------------ edge side

    async def append(self, items: Sequence[SpoolItem], dead: Sequence[DeadLetter] = ()) -> None:
        """Store items and refused messages; durable (committed) when this returns."""
        if not items and not dead:
            return
        try:
            op = encode_append(items, dead, self._room, self._stream)
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
        groups = await self._submit(lambda c: self._due_groups(c, t))
        if not self._in_flight and not self._stream.flying:
            return groups
        flying = collections.Counter(self._in_flight.values())  # due on disk, but already sent
        flying.update(self._stream.flying.values())
        return [replace(g, count=g.count - flying[g.group_key]) for g in groups if g.count > flying[g.group_key]]

    def _due_groups(self, c: sqlite3.Connection, t: int) -> list[DueGroup]:
        """The side table's due groups and the stream's (always due), one entry per group."""
        return merge_due_groups(sql.due_groups(c, t), self._stream.due_groups(c, sql.DUE_COUNT_CAP))

    async def next_attempt_ms(self, now: int | None = None) -> int | None:
        """When the earliest pending row that is not yet due becomes due (None: none waits)."""
        t = now_ms() if now is None else now
        return await self._submit(lambda c: sql.next_attempt_ms(c, t))

    async def claim(self, key: str, *, limit: int, max_bytes: int, now: int | None = None) -> list[ClaimedItem]:
        """Mark up to ``limit`` due rows of one group in flight, their sizes summing to ``max_bytes`` at most.

        In flight is kept in memory (see spool_sql): the rows stay pending on disk, so a claim
        reads past the group's rows already in flight and writes nothing. A claim is read in
        slices of CLAIM_SLICE rows, each a transaction of its own, so tracking calls are served
        in between (reading 500 rows in one held the loop ~1.5-4 ms).
        """
        t = now_ms() if now is None else now
        taken: list[ClaimedItem] = []
        used = 0

        def claim(c: sqlite3.Connection, want: int, room: int, started: bool) -> list[ClaimedItem]:
            # In flight changes inside the transaction, so every later operation of it (a
            # /debug read, another claim) sees the same state as the rows.
            # The side table's due rows include its rows in flight (pending on disk): read past them.
            side = sql.due_rows(c, key, t, want + len(self._in_flight))
            stream = self._stream.due_rows(c, key, want)
            picked, streamed, sided = pick_claim(side, stream, limit=want, max_bytes=room, started=started,
                                                 in_flight=self._in_flight, ahead=self._stream.skip(key))
            taken.extend(picked)
            self._stream.claimed(key, streamed)
            self._in_flight.update(dict.fromkeys(sided, key))
            return picked

        try:
            while len(taken) < limit:
                want = min(CLAIM_SLICE, limit - len(taken))
                piece = await self._submit(lambda c: claim(c, want, max_bytes - used, bool(taken)))
                used += sum(item.size + 1 for item in piece)
                if len(piece) < want:
                    break
            return taken
        except Exception:
            for item in taken:  # a transaction failed: nothing was handed out
                self._in_flight.pop(item.row_id, None)
                self._stream.flying.pop(item.row_id, None)
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
        # The stream's acks move a cursor (one row however many): all in the first transaction.
        # The side table's mark a row each: ACK_CHUNK per transaction.
        streamed = [i for i in acks if i in self._stream.flying]
        side = [i for i in acks if i not in self._stream.flying] if streamed else acks
        first = streamed + side[:ACK_CHUNK]
        later = [side[i:i + ACK_CHUNK] for i in range(ACK_CHUNK, len(side), ACK_CHUNK)]

        def land(rows: Sequence[Any]) -> None:
            # Settled, or the write failed: either way no longer in flight. After a failure the
            # rows are still pending on disk and are sent again (at-least-once).
            for flying in (self._in_flight, self._stream.flying):
                if flying:  # often one of them is empty: no pass over the rows for it
                    for row_id in rows:
                        flying.pop(row_id, None)

        def applying(
            ack: Sequence[int], dead: Mapping[int, tuple[str, str]], retry: Sequence[tuple[Sequence[int], int, str]],
            release: Sequence[tuple[Sequence[int], int]], response: tuple[Any, ...] | None,
        ) -> Callable[[sqlite3.Connection], None]:
            def apply(c: sqlite3.Connection) -> None:
                try:
                    side_ack, side_release = self._settle_stream(c, t, ack, dead, retry, release)
                    sql.settle(c, t, ack=side_ack, dead=dead, retry=retry, release=side_release, response=response)
                    self._retention.acked(len(side_ack))
                finally:
                    # Inside the transaction: later operations see rows and in flight agree.
                    land(settled_rows(ack, dead, retry, release))
            return apply

        try:
            await self._submit(applying(first, reasons, retry, release, response))
            for chunk in later:
                await self._submit(applying(chunk, {}, (), (), None))
        except BaseException:
            self._retention.forget()
            land(settled_rows(acks, reasons, retry, release))  # also what never ran (the spool closed)
            raise
        if acks:
            await self._prune()

    def _settle_stream(
        self, c: sqlite3.Connection, t: int, ack: Sequence[int], dead: Mapping[int, tuple[str, str]],
        retry: Sequence[tuple[Sequence[int], int, str]], release: Sequence[tuple[Sequence[int], int]],
    ) -> tuple[list[int], list[tuple[list[int], int]]]:
        """The stream's rows of a verdict settle there (the failed ones move to the side table,
        where ``sql.settle`` marks them); returns the acks and releases left for the side table."""
        if not self._stream.flying:
            return list(ack), [(list(ids), ms) for ids, ms in release]
        split = split_verdict(self._stream.flying, t, ack, dead, retry, release)
        self._stream.settle(c, t, ack=split.stream_ack, failed=split.failed, release=split.stays)
        return split.side_ack, split.side_release

    async def _prune(self) -> None:
        """Steps of pruning, one transaction each: the stream's settled segments past retention,
        then the side table's delivered rows past it.

        Housekeeping: the acks have landed by now, so a failed step is logged, not raised (the
        worker would take it for a failed settle and send the rows again); the next settle
        carries on.
        """
        for _ in range(PRUNE_STEPS_PER_SETTLE):
            if not self._stream.may_prune():
                break
            try:
                if not await self._submit(self._stream.prune_step):
                    break
            except Exception as exc:
                log.warning("emptying a delivered segment failed, to be tried again after the next ack: %s", exc)
                return
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
        result = await self._submit(lambda c: view.stats(c, self._stream.fresh(c), t, self._stream.acked_ahead()))
        flying = len(self._in_flight) + len(self._stream.flying)  # pending on disk, in flight here
        result["in_flight"] += flying
        result["depth"] = max(0, result["depth"] - flying)
        if self.metrics is not None:
            self.metrics.spool_depth.set(result["depth"] + result["in_flight"])
        return result

    async def events_for_session(self, device_id: str, session_id: int | None = None, limit: int = 100) -> list[dict[str, Any]]:
        """A device's (or one of its sessions') items, most recent first, with delivery state."""
        return await self._submit(lambda c: view.events_for_session(
            c, self._stream.fresh(c), device_id, session_id, limit, Either(self._in_flight, self._stream.flying),
            self._stream.ahead))

    async def dead_letters(self, limit: int = 100) -> list[dict[str, Any]]:
        return await self._submit(lambda c: admin.dead_letters(c, limit))

    async def dead_by_reason(self) -> dict[str, int]:
        return await self._submit(admin.dead_by_reason)

    async def undelivered(self, which: str, limit: int = 20) -> list[dict[str, Any]]:
        """Rows ``in_flight`` or ``retrying``, oldest first (for /debug)."""
        return await self._submit(lambda c: view.undelivered(c, self._stream.fresh(c), which, limit,
                                                             [*self._in_flight, *self._stream.flying]))

    async def recent_responses(self, limit: int = 50) -> list[dict[str, Any]]:
        return await self._submit(lambda c: admin.recent_responses(c, limit))

    async def depth_by_target(self) -> list[dict[str, Any]]:
        return await self._submit(lambda c: view.depth_by_target(c, self._stream.fresh(c)))

    async def replay_dead_letters(self, selection: ReplayFilter | None = None) -> int:
        """Put dead letters that have an item (and match ``selection``) back to pending; returns how many."""
        return await self._submit(lambda c: admin.replay(c, selection))

    async def forget(self, device_ids: Sequence[str], user_id: str | None) -> dict[str, int]:
        """Delete a person's rows in every state (``edgeproxy forget``); counts by state."""
        def forget(c: sqlite3.Connection) -> dict[str, int]:
            counts = view.forget(c, self._stream.fresh(c), list(device_ids), user_id)
            self._stream.stale = True  # rows left the stream's segments: count them again
            return counts
        return await self._submit(forget)

    async def user_devices(self, user_id: str) -> list[str]:
        return await self._submit(lambda c: view.user_devices(c, self._stream.fresh(c), user_id))
