"""The spool's side table (``items``) and its statements, as plain functions of a connection.

New items go to the append-only stream (``spool_stream``); this table holds the few rows whose
state is per row: items that failed an attempt (retrying, or given back "not before" a time),
dead letters (with no item when the mapping refused the Segment message, whose original is
then kept in ``payload``), replayed dead letters, and what spools written before schema v9
held. Also here: the upstream response log's writing and the claim's ``pick`` (the names both
queue backends share are ``records``'). What operators read and do to this table (stats, dead letters, the
response log, replay, forget) is ``spool_admin``'s.

Why apart from ``spool.py``: that module is about concurrency (group commit on the event
loop, futures); this one is about the data. Each function runs inside whatever transaction
its caller holds, so the spool can merge many of them into one commit, and the CLI can call
them on its own connection.

Row states: ``pending`` (waiting, possibly until ``next_attempt_ms``), ``delivered`` (kept
for /debug, pruned to ``retention`` rows) and ``dead``. "In flight" is the serving process's
own state, kept in memory by ``Spool``: a crash must make those rows due again anyway. Spools
written by older versions may hold ``inflight`` rows; ``reclaim_inflight`` makes them pending.
"""

from __future__ import annotations

import functools
import sqlite3
from typing import Any, Callable, Container, Iterable, Mapping, Sequence

import orjson

from edgeproxy.delivery.records import (
    DEFAULT_SOURCE,
    DEFAULT_TARGET,
    MAPPING_REASON,
    RESPONSE_LOG_KEEP,
    ClaimedItem,
    DueGroup,
)


class SpoolFull(sqlite3.OperationalError):
    """The spool holds ``max_bytes`` already: appends are refused (the edge answers 503)."""


_AS_CLAIMED = functools.partial(tuple.__new__, ClaimedItem)  # a row in field order -> ClaimedItem, in C


def loads_blob(blob: bytes | str | None) -> Any:
    return None if blob is None else orjson.loads(blob)


def row_dict(row: sqlite3.Row) -> dict[str, Any]:
    out = {
        "message_id": row["message_id"],
        "endpoint": row["endpoint"],
        "item": loads_blob(row["item"]),
        "state": row["state"],
        "attempts": row["attempts"],
        "last_error": row["last_error"],
        "received_ms": row["received_ms"],
        "delivered_ms": row["delivered_ms"],
        "target": row["target"],
        "source": row["source"],
    }
    if row["state"] == "pending" and row["next_attempt_ms"]:
        out["next_attempt_ms"] = row["next_attempt_ms"]
    if row["payload"] is not None:
        out["payload"] = loads_blob(row["payload"])
    return out


# ---------------------------------------------------------------- operations (on the event loop)
# Each takes the connection and runs inside the group transaction (under its own savepoint
# when the transaction holds more than one operation).


def placeholders(n: int) -> str:
    return ",".join("?" * n)


def chunks(ids: Sequence[int], size: int = 500) -> Iterable[Sequence[int]]:
    for i in range(0, len(ids), size):
        yield ids[i : i + size]


ITEM_COLUMNS = ("id, message_id, endpoint, group_key, options, device_id, user_id, session_id, received_ms, size,"
                " target, source, state")
DEAD_COLUMNS = ("id, message_id, payload, device_id, session_id, received_ms, last_error, dead_ms, source, state,"
                " dead_code")
ROWS_PER_INSERT = 64  # 64 rows x 14 values stays under SQLite's historical 999-variable limit


def insert_items(c: sqlite3.Connection, first_id: int, rows: Sequence[tuple[Any, ...]],
                 dead_rows: Sequence[tuple[Any, ...]] = ()) -> None:
    """Side-table rows, as ``encode_append`` in spool_budget lays them out, with ids from
    ``first_id`` on (the stream's id space: ``Stream.take_ids``), many per statement.

    The serving spool puts only refused messages here (``dead_rows``); live items go to the
    stream. Pending ``rows`` are for tools that build a side table directly (tests, bench).
    Why multi-row VALUES rather than ``executemany``: ``executemany`` steps the statement
    once per row, each step a round trip through the sqlite3 module.
    """
    next_id = first_id
    for i in range(0, len(rows), ROWS_PER_INSERT):
        chunk = rows[i : i + ROWS_PER_INSERT]
        values = ",".join(["(?,?,?,?,?,?,?,?,?,?,?,?,'pending')"] * len(chunk))
        c.execute(f"INSERT INTO items ({ITEM_COLUMNS}) VALUES {values}",
                  [v for n, row in enumerate(chunk) for v in (next_id + n, *row[:3], *row[4:])])
        c.execute(f"INSERT INTO item_bodies (id, item) VALUES {','.join(['(?,?)'] * len(chunk))}",
                  [v for n, row in enumerate(chunk) for v in (next_id + n, row[3])])
        next_id += len(chunk)
    for i in range(0, len(dead_rows), ROWS_PER_INSERT):
        chunk = dead_rows[i : i + ROWS_PER_INSERT]
        values = ",".join([f"(?,?,?,?,?,?,?,?,?,'dead','{MAPPING_REASON}')"] * len(chunk))
        c.execute(f"INSERT INTO items ({DEAD_COLUMNS}) VALUES {values}",
                  [v for n, row in enumerate(chunk) for v in (next_id + n, *row)])
        next_id += len(chunk)


_USED_BYTES = (
    "SELECT ((SELECT page_count FROM pragma_page_count()) - (SELECT freelist_count FROM pragma_freelist_count()))"
    " * (SELECT page_size FROM pragma_page_size())"
)


def used_bytes(c: sqlite3.Connection) -> int:
    """Bytes the spool's data occupies: pages in use (free pages are reused before the file grows).

    One statement: this runs in every transaction that appends."""
    return int(c.execute(_USED_BYTES).fetchone()[0])


# The delivered rows, through their own index (schema v6; INDEXED BY because, without ANALYZE
# statistics, SQLite prefers the claim index and sorts).
_DELIVERED = "items INDEXED BY items_delivered WHERE state='delivered'"


def ensure_room(c: sqlite3.Connection, max_bytes: int | None,
                free: Callable[[sqlite3.Connection], None] | None = None) -> None:
    """Refuse an append once the spool holds ``max_bytes``: the disk budget is the operator's.

    Delivered rows (kept only for /debug) give their room back first. Checked before the
    insert, so one append may overshoot by its own size; the hard page limit set at open
    leaves headroom for that and for the worker's updates, which must never fail for room.
    """
    if not max_bytes:
        return
    used = used_bytes(c)
    if used >= max_bytes:
        if free is not None:
            free(c)  # the stream's settled segments
        c.execute(f"DELETE FROM {_DELIVERED}")
        used = used_bytes(c)
    if used >= max_bytes:
        raise SpoolFull(
            f"the spool is full: {used} bytes in use, delivery.max_spool_size is {max_bytes};"
            " new events are refused (503) until delivery frees room"
        )


def reclaim_inflight(c: sqlite3.Connection) -> int:
    """Rows in flight when the process died are due again (at-least-once; insert_id dedupes)."""
    return c.execute("UPDATE items SET state='pending' WHERE state='inflight'").rowcount


# A group's due rows are counted up to this many: enough to tell a full batch (Amplitude takes
# at most 2,000 items per request) and "more than one request's worth" apart, without walking
# a backlog of 100k rows on every delivery cycle.
DUE_COUNT_CAP = 2_001


def pending_groups(c: sqlite3.Connection, state: str = "pending") -> Iterable[str]:
    """The distinct group keys of rows in ``state``, one index seek each.

    Why not ``SELECT DISTINCT`` or ``GROUP BY``: those read every row of the state, and
    pending rows may number in the hundreds of thousands while the groups are a handful.
    """
    key = c.execute("SELECT MIN(group_key) FROM items WHERE state=?", (state,)).fetchone()[0]
    while key is not None:
        yield key
        key = c.execute("SELECT MIN(group_key) FROM items WHERE state=? AND group_key > ?", (state, key)).fetchone()[0]


def due_groups(c: sqlite3.Connection, t: int) -> list[DueGroup]:
    """Each group with rows due at ``t``: their count (up to DUE_COUNT_CAP) and the first one's age.

    The count and first row come from the claim index (state, group_key, id, ...) alone, in
    id order, so a cycle costs a few seeks and at most DUE_COUNT_CAP index entries per group
    however deep the backlog. ``oldest_ms`` is the ``received_ms`` of the group's first due
    row in spool order, which is its longest-waiting row.
    """
    out = []
    for key in list(pending_groups(c)):
        n, first = c.execute(
            "SELECT COUNT(*), MIN(id) FROM (SELECT id FROM items WHERE state='pending' AND group_key=?"
            " AND next_attempt_ms <= ? ORDER BY id LIMIT ?)",
            (key, t, DUE_COUNT_CAP),
        ).fetchone()
        if n:
            endpoint, options, oldest, target, source = c.execute(
                "SELECT endpoint, options, received_ms, target, source FROM items WHERE id=?", (first,)
            ).fetchone()
            out.append(DueGroup(key, endpoint, loads_blob(options), n, oldest, target, source))
    return out


# Pending rows with a later attempt scheduled are the rows of the partial index items_waiting
# (schema v5). Every pending row with attempts > 0 is among them: a retry always schedules its
# next attempt in the future. INDEXED BY because without ANALYZE statistics SQLite prefers the
# claim index (an equality on state) and walks every pending row.
FROM_WAITING = "items INDEXED BY items_waiting WHERE state='pending' AND next_attempt_ms > 0"


def next_attempt_ms(c: sqlite3.Connection, t: int) -> int | None:
    return c.execute(f"SELECT MIN(next_attempt_ms) FROM {FROM_WAITING} AND next_attempt_ms > ?", (t,)).fetchone()[0]


# A group's due rows in id order, each row's columns in ClaimedItem's field order, so a row
# becomes a ClaimedItem without a Python call per field. CAST: edgeproxy stores items as
# BLOBs, but a row some other tool wrote as TEXT would come back as a str, and a request body
# is spliced from bytes.
_CLAIM = (
    "SELECT items.id, message_id, endpoint, CAST(b.item AS BLOB), options, device_id, user_id, attempts, size, received_ms"
    " FROM items JOIN item_bodies AS b ON b.id = items.id"
    " WHERE state='pending' AND group_key=? AND next_attempt_ms <= ? ORDER BY items.id LIMIT ?"
)


def due_rows(c: sqlite3.Connection, key: str, t: int, limit: int) -> list[tuple[Any, ...]]:
    """The first ``limit`` due rows of a group in id order, as ``pick`` takes them.

    Plain rows, measured against the alternatives on 500-row claims: SQLite building one
    text of the whole batch (``group_concat`` of ``json_quote``-d metadata, one step through
    the sqlite3 module) cost 2.0 µs a row before Python split and parsed it, 5.3 µs in all;
    ``fetchall`` of the columns costs 0.9 µs a row. (The single text dates from when the SQL
    ran on a thread of its own, where each row's GIL re-take could wait for the loop.)
    """
    cursor = c.cursor()
    cursor.row_factory = None  # plain tuples: the spool's connection makes sqlite3.Row objects
    return cursor.execute(_CLAIM, (key, t, limit)).fetchall()


def pick(rows: Sequence[tuple[Any, ...]], *, limit: int, max_bytes: int, skip: Container[int],
         started: bool = False) -> list[ClaimedItem]:
    """Up to ``limit`` of ``rows`` (from due_rows) not in ``skip``, sizes summing to ``max_bytes`` at most.

    The first row is taken whatever its size (one item over the limit is the target's to
    refuse), unless ``started``: a later slice of a claim that already holds rows.

    Why in C where it can be: a claim is up to 2,000 rows, and this ran a Python loop body per
    row that rebuilt each tuple to put the parsed options in (0.59 µs a row); now the cut is
    the only loop, and each row becomes a ClaimedItem in C (0.19 µs a row in all).
    """
    if skip:  # an empty dict or set: nothing to pass over (the usual case)
        rows = [row for row in rows if row[0] not in skip]
    n = total = 0
    for row in rows[:limit]:
        total += row[8] + 1
        if total > max_bytes and (n or started):
            break
        n += 1
    return list(map(_AS_CLAIMED, rows[:n]))


def settle(
    c: sqlite3.Connection,
    t: int,
    *,
    ack: Sequence[int],
    dead: Mapping[int, tuple[str, str]],
    retry: Sequence[tuple[Sequence[int], int, str]],
    release: Sequence[tuple[Sequence[int], int]],
    response: tuple[Any, ...] | None,
) -> None:
    """Apply one request's verdict to its rows. Pruning the delivered rows is the caller's
    (``delete_oldest_delivered``): the spool prunes in steps of their own transactions."""
    for chunk in chunks(list(ack)):
        c.execute(
            f"UPDATE items SET state='delivered', delivered_ms=?, last_error=NULL WHERE id IN ({placeholders(len(chunk))})",
            (t, *chunk),
        )
    c.executemany(
        "UPDATE items SET state='dead', dead_ms=?, dead_code=?, last_error=?, attempts=attempts+1 WHERE id=?",
        [(t, code, text, row_id) for row_id, (code, text) in dead.items()],
    )
    for ids, next_ms, error in retry:
        for chunk in chunks(list(ids)):
            c.execute(
                f"UPDATE items SET state='pending', attempts=attempts+1, next_attempt_ms=?, last_error=?"
                f" WHERE id IN ({placeholders(len(chunk))})",
                (next_ms, error, *chunk),
            )
    for ids, next_ms in release:
        for chunk in chunks(list(ids)):
            c.execute(
                f"UPDATE items SET state='pending', next_attempt_ms=MAX(next_attempt_ms, ?)"
                f" WHERE id IN ({placeholders(len(chunk))})",
                (next_ms, *chunk),
            )
    if response is not None:
        endpoint, status, n, body, target, source = (*response, DEFAULT_TARGET, DEFAULT_SOURCE)[:6]
        c.execute("INSERT INTO responses (time_ms, endpoint, status, items, body, target, source) VALUES (?,?,?,?,?,?,?)",
                  (t, endpoint, status, n, body, target, source))
        c.execute("DELETE FROM responses WHERE id <= (SELECT MAX(id) FROM responses) - ?", (RESPONSE_LOG_KEEP,))


def retrying(c: sqlite3.Connection, limit: int) -> list[dict[str, Any]]:
    """Rows pending after a failed attempt, oldest first (the side table holds them all)."""
    rows = c.execute(
        "SELECT items.*, b.item FROM items INDEXED BY items_waiting LEFT JOIN item_bodies AS b ON b.id = items.id"
        " WHERE state='pending' AND next_attempt_ms > 0 AND attempts > 0 ORDER BY items.id LIMIT ?", (limit,))
    out = []
    for r in rows:
        row = row_dict(r)
        row["device_id"] = r["device_id"]
        out.append(row)
    return out


def count_delivered(c: sqlite3.Connection) -> int:
    return int(c.execute(f"SELECT COUNT(*) FROM {_DELIVERED}").fetchone()[0])


def delete_oldest_delivered(c: sqlite3.Connection, n: int) -> int:
    """Delete the ``n`` oldest delivered rows (fewer if there are not so many); returns how many.

    The partial index items_delivered (schema v6) holds the delivered rows in id order, so this
    reads ``n`` index entries rather than sorting every delivered row. INDEXED BY because,
    without ANALYZE statistics, SQLite prefers the claim index and sorts.
    """
    return int(c.execute(
        f"DELETE FROM items WHERE id IN (SELECT id FROM {_DELIVERED} ORDER BY id LIMIT ?)", (n,)
    ).rowcount)


def prune_slack(retention: int) -> int:
    """Delivered rows allowed over ``retention`` before a prune: a tenth, at least 100."""
    return max(100, retention // 10)


def prune_limit(retention: int) -> int:
    """The most delivered rows kept before a prune: ``retention`` plus the slack (none for 0)."""
    return retention + (prune_slack(retention) if retention else 0)
