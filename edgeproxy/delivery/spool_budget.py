"""What an append costs the spool, and what it keeps: the room budget, the encoded append,
and the retention of delivered rows (pruned in small steps).

Why together: each is the spool's accounting of bytes or rows between transactions, kept in
memory so the hot path does not measure the database on every call.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import orjson

from edgeproxy.delivery import spool_sql as sql
from edgeproxy.delivery.records import DeadLetter, SpoolItem, group_key, item_size
from edgeproxy.delivery.spool_stream import Stream

PRUNE_CHUNK = 250  # old delivered rows deleted per transaction (see spool.ACK_CHUNK)
PRUNE_STEPS_PER_SETTLE = 100  # a settle prunes at most this many steps; the next one goes on


class Room:
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

    def __init__(self, max_bytes: int | None, free: Callable[[sqlite3.Connection], None] | None = None) -> None:
        """``free``: gives room back when full (the stream's settled segments), before refusing."""
        self.max_bytes = max_bytes
        self.free = free
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
        sql.ensure_room(c, self.max_bytes, self.free)


class Retention:
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
class Append:
    """One caller's encoded rows. The writer merges every append of a transaction into one
    room check and a few multi-row INSERTs (see ``GroupCommit._execute``)."""

    rows: list[tuple[Any, ...]]
    dead_rows: list[tuple[Any, ...]]
    charge: int  # the room it is charged (see Room)
    room: Room
    stream: Stream

    def __call__(self, c: sqlite3.Connection) -> None:
        self.room.take(c, self.charge)
        _insert(c, self.stream, self.rows, self.dead_rows)


def _insert(c: sqlite3.Connection, stream: Stream, rows: Sequence[tuple[Any, ...]],
            dead_rows: Sequence[tuple[Any, ...]]) -> None:
    """Items into the stream; refused messages (never sent) into the side table, in one id space."""
    if rows:
        stream.insert(c, rows)
    if dead_rows:
        sql.insert_items(c, stream.take_ids(c, len(dead_rows)), (), dead_rows)


def encode_append(items: Sequence[SpoolItem], dead: Sequence[DeadLetter], room: Room, stream: Stream) -> Append:
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
    return Append(rows, dead_rows, 2 * size + Room.ROW_ALLOWANCE * (len(rows) + len(dead_rows)), room, stream)


def append_all(c: sqlite3.Connection, appends: Sequence[Append]) -> None:
    """Every append of one transaction at once: one room check, then the rows together."""
    appends[0].room.take(c, sum(a.charge for a in appends))
    _insert(c, appends[0].stream, [r for a in appends for r in a.rows], [r for a in appends for r in a.dead_rows])
