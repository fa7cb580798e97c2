"""Every SQL statement of the spool, as plain functions of a sqlite3 connection.

Why apart from ``spool.py``: that module is about concurrency (one writer thread, group
commit, futures); this one is about the data (states, batching queries, pruning). Each
function runs inside whatever transaction its caller holds, so the spool can merge many
of them into one commit, and the CLI can call them on its own connection.

Item states: ``pending`` (waiting, possibly until ``next_attempt_ms``), ``inflight``
(claimed by the worker), ``delivered`` (kept for /debug, pruned to ``retention`` rows) and
``dead`` (a dead letter; with no ``item`` when the mapping refused the Segment message,
whose original is then kept in ``payload``).
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence
from urllib.parse import quote_plus

import orjson

from edgeproxy.amplitude_api import FORM_ENDPOINTS

RESPONSE_LOG_KEEP = 1000  # upstream responses kept for /debug

SCHEMA = """
CREATE TABLE IF NOT EXISTS items (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    message_id TEXT NOT NULL,
    endpoint TEXT,
    group_key TEXT,
    item BLOB,
    options BLOB,
    payload BLOB,
    device_id TEXT,
    user_id TEXT,
    session_id INTEGER,
    received_ms INTEGER NOT NULL,
    size INTEGER NOT NULL DEFAULT 0,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_ms INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    delivered_ms INTEGER,
    dead_ms INTEGER
);
CREATE INDEX IF NOT EXISTS items_due ON items(state, group_key, next_attempt_ms, id);
CREATE INDEX IF NOT EXISTS items_session ON items(device_id, session_id, id);
CREATE TABLE IF NOT EXISTS responses (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    time_ms INTEGER NOT NULL,
    endpoint TEXT NOT NULL,
    status INTEGER,
    items INTEGER NOT NULL,
    body TEXT
);
"""



@dataclass(frozen=True)
class DueGroup:
    """Pending items of one (endpoint, options) group that are due now."""

    group_key: str
    endpoint: str
    options: dict[str, Any] | None
    count: int
    oldest_ms: int


@dataclass(frozen=True)
class ClaimedItem:
    """A row the worker has marked in flight."""

    row_id: int
    message_id: str
    endpoint: str
    item: dict[str, Any]
    options: dict[str, Any] | None
    device_id: str | None
    user_id: str | None
    attempts: int
    size: int


def now_ms() -> int:
    return int(time.time() * 1000)


def group_key(endpoint: str, options: Mapping[str, Any] | None) -> str:
    """Items batch together only when they share endpoint and options (one request body)."""
    return endpoint + "|" + (orjson.dumps(options, option=orjson.OPT_SORT_KEYS).decode() if options else "")


def item_size(endpoint: str, encoded_item: bytes) -> int:
    """Bytes the item adds to a request body: form endpoints pay for URL-encoding."""
    if endpoint in FORM_ENDPOINTS:
        return len(quote_plus(encoded_item.decode()))
    return len(encoded_item)


def _loads(blob: bytes | str | None) -> Any:
    return None if blob is None else orjson.loads(blob)


def _row_dict(row: sqlite3.Row) -> dict[str, Any]:
    out = {
        "message_id": row["message_id"],
        "endpoint": row["endpoint"],
        "item": _loads(row["item"]),
        "state": row["state"],
        "attempts": row["attempts"],
        "last_error": row["last_error"],
        "received_ms": row["received_ms"],
        "delivered_ms": row["delivered_ms"],
    }
    if row["state"] == "pending" and row["next_attempt_ms"]:
        out["next_attempt_ms"] = row["next_attempt_ms"]
    if row["payload"] is not None:
        out["payload"] = _loads(row["payload"])
    return out


# ---------------------------------------------------------------- operations (writer thread)
# Each takes the connection and runs inside the group transaction, under its own savepoint.


def _placeholders(n: int) -> str:
    return ",".join("?" * n)


def _chunks(ids: Sequence[int], size: int = 500) -> Iterable[Sequence[int]]:
    for i in range(0, len(ids), size):
        yield ids[i : i + size]


def insert_items(c: sqlite3.Connection, rows: Sequence[tuple[Any, ...]], dead_rows: Sequence[tuple[Any, ...]]) -> None:
    """Rows as built by ``encode_append`` in spool.py."""
    c.executemany(
        "INSERT INTO items (message_id, endpoint, group_key, item, options, device_id, user_id, session_id,"
        " received_ms, size, state) VALUES (?,?,?,?,?,?,?,?,?,?,'pending')",
        rows,
    )
    c.executemany(
        "INSERT INTO items (message_id, payload, device_id, session_id, received_ms, last_error, dead_ms, state)"
        " VALUES (?,?,?,?,?,?,?,'dead')",
        dead_rows,
    )


def reclaim_inflight(c: sqlite3.Connection) -> int:
    """Rows in flight when the process died are due again (at-least-once; insert_id dedupes)."""
    return c.execute("UPDATE items SET state='pending' WHERE state='inflight'").rowcount


def due_groups(c: sqlite3.Connection, t: int) -> list[DueGroup]:
    rows = c.execute(
        "SELECT group_key, endpoint, options, COUNT(*) AS n, MIN(received_ms) AS oldest FROM items"
        " WHERE state='pending' AND next_attempt_ms <= ? GROUP BY group_key",
        (t,),
    ).fetchall()
    return [DueGroup(r["group_key"], r["endpoint"], _loads(r["options"]), r["n"], r["oldest"]) for r in rows]


def next_attempt_ms(c: sqlite3.Connection, t: int) -> int | None:
    return c.execute("SELECT MIN(next_attempt_ms) FROM items WHERE state='pending' AND next_attempt_ms > ?", (t,)).fetchone()[0]


def claim(c: sqlite3.Connection, key: str, t: int, limit: int, max_bytes: int) -> list[ClaimedItem]:
    rows = c.execute(
        "SELECT id, message_id, endpoint, item, options, device_id, user_id, attempts, size FROM items"
        " WHERE state='pending' AND group_key=? AND next_attempt_ms <= ? ORDER BY id LIMIT ?",
        (key, t, limit),
    ).fetchall()
    taken: list[ClaimedItem] = []
    total = 0
    for r in rows:
        if taken and total + r["size"] + 1 > max_bytes:
            break
        total += r["size"] + 1
        taken.append(ClaimedItem(
            r["id"], r["message_id"], r["endpoint"], orjson.loads(r["item"]), _loads(r["options"]),
            r["device_id"], r["user_id"], r["attempts"], r["size"],
        ))
    for chunk in _chunks([x.row_id for x in taken]):
        c.execute(f"UPDATE items SET state='inflight' WHERE id IN ({_placeholders(len(chunk))})", chunk)
    return taken


def settle(
    c: sqlite3.Connection,
    t: int,
    *,
    ack: Sequence[int],
    dead: Mapping[int, str],
    retry: Sequence[tuple[Sequence[int], int, str]],
    release: Sequence[tuple[Sequence[int], int]],
    response: tuple[str, int | None, int, str] | None,
    retention: int,
) -> None:
    for chunk in _chunks(list(ack)):
        c.execute(
            f"UPDATE items SET state='delivered', delivered_ms=?, last_error=NULL WHERE id IN ({_placeholders(len(chunk))})",
            (t, *chunk),
        )
    c.executemany(
        "UPDATE items SET state='dead', dead_ms=?, last_error=?, attempts=attempts+1 WHERE id=?",
        [(t, reason, row_id) for row_id, reason in dead.items()],
    )
    for ids, next_ms, error in retry:
        for chunk in _chunks(list(ids)):
            c.execute(
                f"UPDATE items SET state='pending', attempts=attempts+1, next_attempt_ms=?, last_error=?"
                f" WHERE id IN ({_placeholders(len(chunk))})",
                (next_ms, error, *chunk),
            )
    for ids, next_ms in release:
        for chunk in _chunks(list(ids)):
            c.execute(
                f"UPDATE items SET state='pending', next_attempt_ms=MAX(next_attempt_ms, ?)"
                f" WHERE id IN ({_placeholders(len(chunk))})",
                (next_ms, *chunk),
            )
    if response is not None:
        endpoint, status, n, body = response
        c.execute("INSERT INTO responses (time_ms, endpoint, status, items, body) VALUES (?,?,?,?,?)", (t, endpoint, status, n, body))
        c.execute("DELETE FROM responses WHERE id <= (SELECT MAX(id) FROM responses) - ?", (RESPONSE_LOG_KEEP,))
    if ack:
        prune_delivered(c, retention)


def events_for_session(c: sqlite3.Connection, device_id: str, session_id: int | None, limit: int) -> list[dict[str, Any]]:
    if session_id is None:
        rows = c.execute("SELECT * FROM items WHERE device_id=? ORDER BY id DESC LIMIT ?", (device_id, limit))
    else:
        rows = c.execute(
            "SELECT * FROM items WHERE device_id=? AND session_id=? ORDER BY id DESC LIMIT ?", (device_id, session_id, limit)
        )
    return [_row_dict(r) for r in rows]


def prune_delivered(c: sqlite3.Connection, retention: int) -> None:
    row = c.execute(
        "SELECT id FROM items WHERE state='delivered' ORDER BY id DESC LIMIT 1 OFFSET ?", (retention,)
    ).fetchone()
    if row is not None:
        c.execute("DELETE FROM items WHERE state='delivered' AND id <= ?", (row[0],))


def stats(c: sqlite3.Connection, t: int) -> dict[str, Any]:
    counts = {r[0]: r[1] for r in c.execute("SELECT state, COUNT(*) FROM items GROUP BY state")}
    retrying = c.execute("SELECT COUNT(*) FROM items WHERE state='pending' AND attempts > 0").fetchone()[0]
    oldest = c.execute("SELECT MIN(received_ms) FROM items WHERE state IN ('pending','inflight')").fetchone()[0]
    return {
        "depth": counts.get("pending", 0),
        "in_flight": counts.get("inflight", 0),
        "retrying": retrying,
        "delivered": counts.get("delivered", 0),
        "dead": counts.get("dead", 0),
        "oldest_age_s": max(0.0, (t - oldest) / 1000) if oldest is not None else 0.0,
    }


def dead_letters(c: sqlite3.Connection, limit: int) -> list[dict[str, Any]]:
    out = []
    for r in c.execute("SELECT * FROM items WHERE state='dead' ORDER BY dead_ms DESC, id DESC LIMIT ?", (limit,)):
        out.append({
            "message_id": r["message_id"],
            "endpoint": r["endpoint"],
            "item": _loads(r["item"]),
            "payload": _loads(r["payload"]),
            "reason": r["last_error"],
            "device_id": r["device_id"],
            "session_id": r["session_id"],
            "attempts": r["attempts"],
            "received_ms": r["received_ms"],
            "dead_ms": r["dead_ms"],
            "replayable": r["item"] is not None,
        })
    return out


def recent_responses(c: sqlite3.Connection, limit: int) -> list[dict[str, Any]]:
    return [
        {"time_ms": r["time_ms"], "endpoint": r["endpoint"], "status": r["status"], "items": r["items"], "body": r["body"]}
        for r in c.execute("SELECT * FROM responses ORDER BY id DESC LIMIT ?", (limit,))
    ]


def replay(c: sqlite3.Connection, limit: int | None) -> int:
    ids = [r[0] for r in c.execute(
        "SELECT id FROM items WHERE state='dead' AND item IS NOT NULL ORDER BY id LIMIT ?",
        (-1 if limit is None else limit,),
    )]
    for chunk in _chunks(ids):
        c.execute(
            f"UPDATE items SET state='pending', attempts=0, next_attempt_ms=0, dead_ms=NULL,"
            f" last_error='replayed: ' || COALESCE(last_error, '') WHERE id IN ({_placeholders(len(chunk))})",
            chunk,
        )
    return len(ids)
