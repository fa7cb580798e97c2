"""The spool's append-only stream: items written once into segment tables, delivered by cursor.

Why: with one row per item that changed state (pending -> delivered) and was deleted again
through every index when pruned, SQLite's bookkeeping was ~75 % of the CPU spent forwarding an
event (claim 2 µs, delivered mark 1.7 µs, prune 9 µs a row, most of it the device index's
random pages). Here an item is inserted once into the open segment (``stream_<slot>``, a
table with its own indexes); delivery is a durable cursor per group (``stream_acks``: one row
per advance, "every row of the group up to ``through_id`` is settled", with the time, which
is the rows' delivered_ms); and a segment whose rows are all settled is emptied whole when
retention allows (``DELETE`` without ``WHERE``: SQLite frees the pages of the table and its
indexes without visiting rows). Emptied slots are reused, so tables are created rarely.

Rows that fail (a retry, a dead letter) leave the stream: they are moved, id and item, into
the side table ``items`` (``spool_sql``), whose per-row states and indexes suit the few. What
the stream keeps in memory: rows in flight and rows acknowledged past the cursor (a later
half of a split batch answered first); both are lost in a crash, so those rows are sent again
(at-least-once; Amplitude and Segment drop repeats by insert_id / messageId). Anything that
rolls a transaction back marks the state stale, and the next operation reloads it from disk.
"""

from __future__ import annotations

import bisect
import sqlite3
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

ITEM_COLUMNS = ("id, message_id, endpoint, group_key, item, options, device_id, user_id, session_id, received_ms, size,"
                " target, source")
ROWS_PER_INSERT = 64  # 64 rows x 13 values stays under SQLite's historical 999-variable limit
MAX_SEGMENT_ROWS = 1_000  # emptying a segment holds the loop ~0.9 µs a row (2.2 ms measured at 2,500)
MIN_SEGMENT_ROWS = 64


def segment_rows(retention: int) -> int:
    """Rows per segment: a quarter of retention (at most MAX_SEGMENT_ROWS), so between
    ``retention`` and 1.25x of it stay."""
    return max(MIN_SEGMENT_ROWS, min(MAX_SEGMENT_ROWS, retention // 4))


def _table(slot: int) -> str:
    return f"stream_{int(slot)}"


def _create(c: sqlite3.Connection, slot: int) -> None:
    t = _table(slot)
    c.execute(f"""CREATE TABLE IF NOT EXISTS {t} (
        id INTEGER PRIMARY KEY, message_id TEXT NOT NULL, endpoint TEXT, group_key TEXT NOT NULL, item BLOB NOT NULL,
        options BLOB, device_id TEXT, user_id TEXT, session_id INTEGER, received_ms INTEGER NOT NULL,
        size INTEGER NOT NULL, target TEXT NOT NULL, source TEXT NOT NULL)""")
    c.execute(f"CREATE INDEX IF NOT EXISTS {t}_group ON {t}(group_key, id)")
    c.execute(f"CREATE INDEX IF NOT EXISTS {t}_device ON {t}(device_id, session_id, id)")


@dataclass
class Segment:
    slot: int
    first_id: int
    rows: int = 0  # rows in it now (moved and forgotten rows are deleted from it)
    delivered: int = 0  # of them, rows at or below their group's cursor
    last_id: int = 0  # its highest id (0: none yet)

    @property
    def table(self) -> str:
        return _table(self.slot)

    @property
    def settled(self) -> bool:
        return self.delivered >= self.rows


def _groups(c: sqlite3.Connection, table: str) -> list[str]:
    """The distinct group keys of a segment, one index seek each (groups are few, rows many)."""
    out = []
    key = c.execute(f"SELECT MIN(group_key) FROM {table}").fetchone()[0]
    while key is not None:
        out.append(key)
        key = c.execute(f"SELECT MIN(group_key) FROM {table} WHERE group_key > ?", (key,)).fetchone()[0]
    return out


def cursor_ms(c: sqlite3.Connection, key: str, row_id: int) -> int | None:
    """When the group's cursor first passed ``row_id``: that row's delivered_ms."""
    row = c.execute("SELECT time_ms FROM stream_acks WHERE group_key=? AND through_id >= ? ORDER BY through_id"
                    " LIMIT 1", (key, row_id)).fetchone()
    return row[0] if row else None


@dataclass
class StreamState:
    """What the disk says: the live segments in id order, each group's cursor, the next id."""

    segments: list[Segment] = field(default_factory=list)
    free_slots: list[int] = field(default_factory=list)
    cursor: dict[str, int] = field(default_factory=dict)
    groups: set[str] = field(default_factory=set)
    next_id: int = 1

    @classmethod
    def load(cls, c: sqlite3.Connection) -> StreamState:
        """Read it from the file (the serving spool at open and after a rollback; the CLI)."""
        s = cls()
        s.cursor = {k: v for k, v in c.execute("SELECT group_key, MAX(through_id) FROM stream_acks GROUP BY group_key")}
        for slot, first in c.execute("SELECT slot, first_id FROM stream_segments ORDER BY first_id, slot").fetchall():
            if first is None:
                s.free_slots.append(slot)
                continue
            seg = Segment(slot, first)
            seg.rows, last = c.execute(f"SELECT COUNT(*), MAX(id) FROM {seg.table}").fetchone()
            seg.last_id = last or 0
            for key in _groups(c, seg.table):
                s.groups.add(key)
                seg.delivered += c.execute(f"SELECT COUNT(*) FROM {seg.table} WHERE group_key=? AND id <= ?",
                                           (key, s.cursor.get(key, 0))).fetchone()[0]
            s.segments.append(seg)
        seq = c.execute("SELECT seq FROM sqlite_sequence WHERE name='items'").fetchone()
        top = max([seq[0] if seq else 0, c.execute("SELECT MAX(id) FROM items").fetchone()[0] or 0,
                   *(seg.last_id for seg in s.segments), *s.cursor.values()])
        s.next_id = top + 1
        return s

    def segment_of(self, row_id: int) -> Segment | None:
        i = bisect.bisect_right([seg.first_id for seg in self.segments], row_id) - 1
        return self.segments[i] if i >= 0 else None

    def after(self, key: str) -> Iterable[Segment]:
        """The segments that may hold rows of ``key`` past its cursor."""
        cursor = self.cursor.get(key, 0)
        return (seg for seg in self.segments if seg.last_id > cursor)

    def state_of(self, key: str, row_id: int) -> str:
        return "delivered" if row_id <= self.cursor.get(key, 0) else "pending"

    def pending(self) -> int:
        return sum(seg.rows - seg.delivered for seg in self.segments)

    def delivered(self) -> int:
        return sum(seg.delivered for seg in self.segments)


class Stream:
    """The serving process's stream: the disk state plus what is in flight in memory.

    Every method runs inside the caller's transaction (spool_commit's group commit)."""

    def __init__(self, retention: int) -> None:
        self.retention = retention
        self.segment_rows = segment_rows(retention)
        self.state = StreamState()
        self.stale = True  # load at the first operation
        self.flying: dict[int, str] = {}  # row id -> group: claimed from the stream, verdict not yet settled
        self.ahead: dict[str, dict[int, int]] = {}  # group -> {row id: acked ms} acknowledged past the cursor
        self.released: dict[str, set[int]] = {}  # group -> rows claimed, then given back unsent
        self.frontier: dict[str, int] = {}  # group -> highest row id claimed from the stream
        self.dropped = 0  # segments emptied (tests count them)
        self.changed = False  # changed in the transaction now open: a rollback makes the state stale
        self._epoch = -1  # stream_meta.epoch as this process set it when it loaded the state
        self._data_version: int | None = None

    def committed(self) -> None:
        self.changed = False

    def rolled_back(self) -> None:
        if self.changed:
            self.stale = True

    def begin(self, c: sqlite3.Connection) -> None:
        """At the start of each write transaction: has another process changed the stream?

        ``PRAGMA data_version`` moves when another connection commits (a CLI's ``forget``, but
        also every checkpoint); the epoch moves only when another process's Stream loaded the
        state, which it does before it changes anything. One pragma a transaction, one read
        after another connection wrote."""
        version = c.execute("PRAGMA data_version").fetchone()[0]
        if version != self._data_version:
            self._data_version = version
            if not self.stale and c.execute("SELECT epoch FROM stream_meta").fetchone()[0] != self._epoch:
                self.stale = True

    def fresh(self, c: sqlite3.Connection) -> StreamState:
        """The state, reloaded from disk if a rollback may have undone part of it or another
        process changed it. Runs inside a write transaction: the epoch it bumps says so to others."""
        if self.stale:
            c.execute("UPDATE stream_meta SET epoch = epoch + 1")
            self._epoch = c.execute("SELECT epoch FROM stream_meta").fetchone()[0]
            self._data_version = c.execute("PRAGMA data_version").fetchone()[0]
            self.changed = True  # the epoch write: rolled back, it must be made again
            self.state = StreamState.load(c)
            self.ahead.clear()  # acknowledged past a cursor that never landed: sent again
            self.released.clear()
            self.frontier = dict(self.state.cursor)
            self.stale = False
        return self.state

    # ------------------------------------------------------------------ append

    def take_ids(self, c: sqlite3.Connection, n: int) -> int:
        """``n`` consecutive ids for rows of the side table (dead letters): one id space for both."""
        s = self.fresh(c)
        self.changed = True
        first, s.next_id = s.next_id, s.next_id + n
        return first

    def _open_segment(self, c: sqlite3.Connection) -> Segment:
        s = self.state
        if s.segments and s.next_id - s.segments[-1].first_id < self.segment_rows:
            return s.segments[-1]
        if s.free_slots:
            slot = s.free_slots.pop(0)
            c.execute("UPDATE stream_segments SET first_id=? WHERE slot=?", (s.next_id, slot))
        else:
            slot = 1 + (c.execute("SELECT MAX(slot) FROM stream_segments").fetchone()[0] or 0)
            c.execute("INSERT INTO stream_segments (slot, first_id) VALUES (?, ?)", (slot, s.next_id))
        _create(c, slot)  # also for a reused slot: a file may have lost a table to an older tool
        seg = Segment(slot, s.next_id)
        s.segments.append(seg)
        return seg

    def insert(self, c: sqlite3.Connection, rows: Sequence[tuple[Any, ...]]) -> None:
        """Rows as ``spool_budget.encode_append`` lays them out, many per statement."""
        s = self.fresh(c)
        self.changed = True
        for i in range(0, len(rows), ROWS_PER_INSERT):
            chunk = rows[i:i + ROWS_PER_INSERT]
            seg = self._open_segment(c)
            first = s.next_id
            values = ",".join(["(?,?,?,?,?,?,?,?,?,?,?,?,?)"] * len(chunk))
            c.execute(f"INSERT INTO {seg.table} ({ITEM_COLUMNS}) VALUES {values}",
                      [v for n, row in enumerate(chunk) for v in (first + n, *row)])
            s.next_id += len(chunk)
            seg.rows += len(chunk)
            seg.last_id = s.next_id - 1
            for row in chunk:
                s.groups.add(row[2])

    # ------------------------------------------------------------------ claim

    def acked_ahead(self) -> int:
        """Rows acknowledged past their cursor, in memory: delivered, though the file says pending."""
        return sum(len(a) for a in self.ahead.values())

    def skip(self, key: str) -> set[int]:
        """Rows a claim must pass over: acknowledged ahead of the cursor (``due_rows`` does not
        return them; a safeguard for the rows that come from the side table)."""
        return set(self.ahead.get(key, ()))

    def due_rows(self, c: sqlite3.Connection, key: str, limit: int) -> list[tuple[Any, ...]]:
        """The group's next ``limit`` claimable rows in id order, as ``spool_sql.pick`` takes them
        (ClaimedItem's fields; ``attempts`` 0: a row that failed has left the stream).

        Read from the frontier on, plus the rows given back behind it: every other row between
        the cursor and the frontier is in flight or acknowledged. (Reading from the cursor and
        skipping those read each batch's rows again for every later slice of a claim.)"""
        s = self.fresh(c)
        frontier = max(self.frontier.get(key, 0), s.cursor.get(key, 0))
        rows: list[tuple[Any, ...]] = []
        cur = c.cursor()
        cur.row_factory = None
        columns = "id, message_id, endpoint, CAST(item AS BLOB), options, device_id, user_id, 0, size, received_ms"
        behind = sorted(self.released.get(key, ()))[:limit]
        for seg in s.segments if behind else ():
            mine = [i for i in behind if seg.first_id <= i <= seg.last_id]
            if mine:
                rows += cur.execute(f"SELECT {columns} FROM {seg.table} WHERE id IN ({','.join('?' * len(mine))})"
                                    " ORDER BY id", mine).fetchall()
        for seg in s.segments:
            if len(rows) >= limit:
                break
            if seg.last_id > frontier:
                rows += cur.execute(f"SELECT {columns} FROM {seg.table} WHERE group_key=? AND id > ? ORDER BY id LIMIT ?",
                                    (key, frontier, limit - len(rows))).fetchall()
        return rows

    def claimed(self, key: str, row_ids: Sequence[int]) -> None:
        """Rows of ``key`` handed out (in id order): in flight, and the frontier moves on."""
        if not row_ids:
            return
        self.flying.update(dict.fromkeys(row_ids, key))
        released = self.released.get(key)
        if released:
            released.difference_update(row_ids)
        if row_ids[-1] > self.frontier.get(key, 0):
            self.frontier[key] = row_ids[-1]

    def due_groups(self, c: sqlite3.Connection, cap: int) -> dict[str, tuple[int, tuple[Any, ...]]]:
        """Group -> (rows past its cursor up to ``cap``, less those acked ahead; the first such
        row's endpoint, options, received_ms, target, source)."""
        s = self.fresh(c)
        out = {}
        for key in sorted(s.groups):
            cursor, n, first = s.cursor.get(key, 0), 0, None
            for seg in s.after(key):
                if first is None:
                    first = c.execute(f"SELECT endpoint, options, received_ms, target, source FROM {seg.table}"
                                      " WHERE group_key=? AND id > ? ORDER BY id LIMIT 1", (key, cursor)).fetchone()
                n += c.execute(f"SELECT COUNT(*) FROM (SELECT 1 FROM {seg.table} WHERE group_key=? AND id > ? LIMIT ?)",
                               (key, cursor, cap - n)).fetchone()[0]
                if n >= cap:
                    break
            n -= len(self.ahead.get(key, ()))
            if n > 0 and first is not None:
                out[key] = (n, tuple(first))
        return out

    # ------------------------------------------------------------------ settle

    def settle(self, c: sqlite3.Connection, t: int, *, ack: Iterable[int], failed: Iterable[int],
               release: Iterable[int]) -> None:
        """The stream's share of a verdict (rows of other ids are the side table's): ``ack``
        delivered; ``failed`` (retried or dead) moved to the side table, where the caller's
        statements then mark them; ``release`` pending again. Then the cursors move on."""
        s = self.fresh(c)
        self.changed = True
        touched = set()
        ack = list(ack)
        keys = [self.flying.pop(row_id) for row_id in ack]
        if keys and keys.count(keys[0]) == len(keys):  # the usual case: one request, one group
            self.ahead.setdefault(keys[0], {}).update(dict.fromkeys(ack, t))
            touched.add(keys[0])
        else:
            for row_id, key in zip(ack, keys):
                self.ahead.setdefault(key, {})[row_id] = t
                touched.add(key)
        moving: dict[int, list[int]] = {}
        for row_id in failed:
            touched.add(self.flying.pop(row_id))
            seg = s.segment_of(row_id)
            assert seg is not None
            moving.setdefault(seg.slot, []).append(row_id)
        for seg in s.segments:
            if seg.slot in moving:
                self._move(c, seg, moving[seg.slot])
        for row_id in release:
            key = self.flying.pop(row_id)
            self.released.setdefault(key, set()).add(row_id)
        for key in touched:
            self._advance(c, key, t)

    @staticmethod
    def _move(c: sqlite3.Connection, seg: Segment, ids: Sequence[int]) -> None:
        marks = ",".join("?" * len(ids))
        c.execute("INSERT INTO items (id, message_id, endpoint, group_key, options, device_id, user_id, session_id,"
                  " received_ms, size, target, source, state) SELECT id, message_id, endpoint, group_key, options,"
                  " device_id, user_id, session_id, received_ms, size, target, source, 'pending'"
                  f" FROM {seg.table} WHERE id IN ({marks})", ids)
        c.execute(f"INSERT INTO item_bodies (id, item) SELECT id, item FROM {seg.table} WHERE id IN ({marks})", ids)
        seg.rows -= c.execute(f"DELETE FROM {seg.table} WHERE id IN ({marks})", ids).rowcount

    def _advance(self, c: sqlite3.Connection, key: str, t: int) -> None:
        """Move the group's cursor to just before its first unsettled row (every row of the
        group up to the frontier was claimed: in flight, released or settled)."""
        s = self.state
        unsettled = [i for i, g in self.flying.items() if g == key] + list(self.released.get(key, ()))
        through = min(unsettled) - 1 if unsettled else self.frontier.get(key, 0)
        through = min(through, self.frontier.get(key, 0))
        if through <= s.cursor.get(key, 0):
            return
        c.execute("INSERT OR REPLACE INTO stream_acks (group_key, through_id, time_ms) VALUES (?, ?, ?)", (key, through, t))
        s.cursor[key] = through
        ahead = self.ahead.get(key, {})
        if ahead and max(ahead) <= through:  # the usual case: every row acked ahead is passed
            passed = sorted(ahead)
            ahead.clear()
        else:
            passed = sorted(i for i in ahead if i <= through)
            for row_id in passed:
                del ahead[row_id]
        # Count them into their segments: a bisect per segment, not a lookup per row.
        for seg in s.segments:
            lo = bisect.bisect_left(passed, seg.first_id)
            hi = bisect.bisect_right(passed, seg.last_id)
            seg.delivered += hi - lo

    # ------------------------------------------------------------------ retention

    def may_prune(self) -> bool:
        """Whether ``prune_step`` could empty a segment now (judged in memory: no transaction)."""
        if self.stale:
            return True
        segments = self.state.segments
        return bool(segments) and segments[0].settled and (len(segments) > 1 or self.retention == 0)

    def prune_step(self, c: sqlite3.Connection, *, keep: int | None = None) -> bool:
        """Empty the oldest segment if all its rows are settled and the newer ones hold ``keep``
        delivered rows (default: retention); True if one went. One per transaction: 1 ms at most."""
        s = self.fresh(c)
        keep = self.retention if keep is None else keep
        if not s.segments:
            return False
        oldest = s.segments[0]
        newer = sum(seg.delivered for seg in s.segments[1:]) + self.acked_ahead()
        if not oldest.settled or newer < keep or (oldest.rows == 0 and len(s.segments) == 1):
            return False
        if any(i >= oldest.first_id and i <= oldest.last_id for a in self.ahead.values() for i in a):
            return False
        self.changed = True
        c.execute(f"DELETE FROM {oldest.table}")  # the truncate optimisation: pages freed, rows not visited
        c.execute("UPDATE stream_segments SET first_id=NULL WHERE slot=?", (oldest.slot,))
        s.segments.pop(0)
        s.free_slots.append(oldest.slot)
        horizon = s.segments[0].first_id if s.segments else s.next_id
        c.execute("DELETE FROM stream_acks WHERE through_id < ? AND through_id < (SELECT MAX(a.through_id)"
                  " FROM stream_acks AS a WHERE a.group_key = stream_acks.group_key)", (horizon,))
        self.dropped += 1
        return True

    def free_room(self, c: sqlite3.Connection) -> None:
        """The spool is full: every settled segment goes, whatever retention asks."""
        while self.prune_step(c, keep=0):
            pass
