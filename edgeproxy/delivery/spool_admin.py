"""The side table's statements for the people watching it: what /debug, the depth gauge and
``edgeproxy spool`` read (counts, depth per target, dead letters and their reasons, upstream
answers), and what an operator does to it (``replay`` dead letters, ``forget`` a person's
rows, zeroed on disk).

Why apart from ``spool_sql``: that module is the side table as delivery uses it (insert,
claim, settle, prune) on every cycle; these run when someone asks (the gauge: once a second),
from the serving process (``Spool``, ``spool_view``) or from the CLI on its own connection.
Like ``spool_sql``'s, each function runs inside whatever transaction its caller holds.
"""

from __future__ import annotations

import contextlib
import sqlite3
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

from edgeproxy.delivery import spool_sql as sql
from edgeproxy.delivery.records import OTHER_REASON


def stats(c: sqlite3.Connection, t: int) -> dict[str, Any]:
    """Counts per state and the age of the longest-waiting undelivered row.

    Called every second for the depth gauge, so every part reads an index only: counts from
    the claim index, retrying rows from the waiting index, the oldest row from each group's
    first row (a seek per group, not a walk of the backlog).
    """
    counts = {state: c.execute("SELECT COUNT(*) FROM items WHERE state=?", (state,)).fetchone()[0]
              for state in ("pending", "inflight", "delivered", "dead")}
    retrying = c.execute(f"SELECT COUNT(*) FROM {sql.FROM_WAITING} AND attempts > 0").fetchone()[0]
    firsts = [
        c.execute(
            "SELECT received_ms FROM items WHERE id = (SELECT MIN(id) FROM items WHERE state=? AND group_key=?)", (state, key)
        ).fetchone()[0]
        for state in ("pending", "inflight")
        for key in list(sql.pending_groups(c, state))
    ]
    oldest = min(firsts, default=None)
    return {
        "depth": counts["pending"],
        "in_flight": counts["inflight"],
        "retrying": retrying,
        "delivered": counts["delivered"],
        "dead": counts["dead"],
        "oldest_age_s": max(0.0, (t - oldest) / 1000) if oldest is not None else 0.0,
    }


def depth_by_target(c: sqlite3.Connection) -> list[dict[str, Any]]:
    """Undelivered and dead rows per (target, source), for ``edgeproxy spool`` and /debug.

    A walk of the undelivered rows, so not for the per-second gauge (``stats``)."""
    rows = c.execute(
        "SELECT target, source, SUM(state='pending') AS pending, SUM(state='dead') AS dead FROM items"
        " WHERE state IN ('pending', 'dead') GROUP BY target, source ORDER BY target, source"
    )
    return [{"target": r[0], "source": r[1], "pending": r[2], "dead": r[3]} for r in rows]


def dead_letters(c: sqlite3.Connection, limit: int) -> list[dict[str, Any]]:
    out = []
    for r in c.execute("SELECT * FROM items_with_body WHERE state='dead' ORDER BY dead_ms DESC, id DESC LIMIT ?", (limit,)):
        out.append({
            "message_id": r["message_id"],
            "endpoint": r["endpoint"],
            "item": sql.loads_blob(r["item"]),
            "payload": sql.loads_blob(r["payload"]),
            "reason": r["last_error"],
            "reason_code": r["dead_code"] or OTHER_REASON,
            "target": r["target"],
            "source": r["source"],
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
        {"time_ms": r["time_ms"], "endpoint": r["endpoint"], "status": r["status"], "items": r["items"], "body": r["body"],
         "target": r["target"], "source": r["source"]}
        for r in c.execute("SELECT * FROM responses ORDER BY id DESC LIMIT ?", (limit,))
    ]


def dead_by_reason(c: sqlite3.Connection) -> dict[str, int]:
    """Dead letters counted by reason code, most frequent first."""
    rows = c.execute(
        "SELECT COALESCE(dead_code, ?) AS code, COUNT(*) AS n FROM items WHERE state='dead'"
        " GROUP BY code ORDER BY n DESC, code",
        (OTHER_REASON,),
    )
    return {r["code"]: r["n"] for r in rows}


@dataclass(frozen=True)
class ReplayFilter:
    """Which dead letters ``replay`` puts back: every given criterion must match (none: all)."""

    reasons: tuple[str, ...] = ()  # reason codes, e.g. ("invalid_api_key",)
    endpoint: str | None = None
    message_ids: tuple[str, ...] = ()
    limit: int | None = None
    target: str | None = None  # "amplitude" or "segment"
    source: str | None = None

    def where(self) -> tuple[str, list[Any]]:
        # Mapping refusals have nothing to send: no item (schema v8: no row in item_bodies).
        clauses = ["state='dead'", "EXISTS (SELECT 1 FROM item_bodies AS b WHERE b.id = items.id)"]
        params: list[Any] = []
        if self.reasons:
            clauses.append(f"COALESCE(dead_code, '{OTHER_REASON}') IN ({sql.placeholders(len(self.reasons))})")
            params.extend(self.reasons)
        if self.endpoint is not None:
            clauses.append("endpoint = ?")
            params.append(self.endpoint)
        if self.message_ids:
            clauses.append(f"message_id IN ({sql.placeholders(len(self.message_ids))})")
            params.extend(self.message_ids)
        for column in ("target", "source"):
            value = getattr(self, column)
            if value is not None:
                clauses.append(f"{column} = ?")
                params.append(value)
        return " AND ".join(clauses), params


def replay(c: sqlite3.Connection, selection: ReplayFilter | None = None) -> int:
    """Dead letters matching ``selection`` back to pending with a fresh attempt count."""
    selection = selection or ReplayFilter()
    where, params = selection.where()
    limit = -1 if selection.limit is None else selection.limit
    ids = [r[0] for r in c.execute(f"SELECT id FROM items WHERE {where} ORDER BY id LIMIT ?", (*params, limit))]
    for chunk in sql.chunks(ids):
        c.execute(
            f"UPDATE items SET state='pending', attempts=0, next_attempt_ms=0, dead_ms=NULL, dead_code=NULL,"
            f" last_error='replayed: ' || COALESCE(last_error, '') WHERE id IN ({sql.placeholders(len(chunk))})",
            chunk,
        )
    return len(ids)


_SECURE_DELETE_MODES = {2: "FAST"}  # PRAGMA secure_delete reads FAST back as 2, but setting "2" means ON


def person_where(device_ids: Sequence[str], user_id: str | None) -> tuple[str, list[Any]] | None:
    """The WHERE clause of a person's rows (these devices or this user id), for every table that
    holds items; None when neither is given. Deletion requests (target ``deletions``) are never
    the person's rows: they are how the person's data leaves Amplitude."""
    clauses, params = [], []
    if device_ids:
        clauses.append(f"device_id IN ({sql.placeholders(len(device_ids))})")
        params += list(device_ids)
    if user_id:
        clauses.append("user_id = ?")
        params.append(user_id)
    return (f"({' OR '.join(clauses)}) AND target != 'deletions'", params) if clauses else None


@contextlib.contextmanager
def zeroing(c: sqlite3.Connection) -> Iterator[None]:
    """secure_delete ON for the statements inside: a forgotten person's rows are zeroed on disk,
    not only unlinked (the connection may run with FAST, spool_file.SECURE_DELETE, which leaves
    freed pages as they were)."""
    before = c.execute("PRAGMA secure_delete").fetchone()[0]
    c.execute("PRAGMA secure_delete=ON")
    try:
        yield
    finally:
        c.execute(f"PRAGMA secure_delete={_SECURE_DELETE_MODES.get(before, before)}")


def forget(c: sqlite3.Connection, device_ids: Sequence[str], user_id: str | None) -> dict[str, int]:
    """Delete every side-table row (pending, in flight, delivered, dead) of these devices or this
    user id, zeroed on disk; returns how many of each state."""
    person = person_where(device_ids, user_id)
    if person is None:
        return {}
    where, params = person
    counts = {state: n for state, n in c.execute(f"SELECT state, COUNT(*) FROM items WHERE {where} GROUP BY state", params)}
    with zeroing(c):
        c.execute(f"DELETE FROM items WHERE {where}", params)
    return counts


def user_devices(c: sqlite3.Connection, user_id: str, limit: int = 1000) -> list[str]:
    """Device ids the spool has seen with this user id (the person's browsers and phones)."""
    return [r[0] for r in c.execute("SELECT DISTINCT device_id FROM items WHERE user_id = ? AND device_id IS NOT NULL"
                                    " LIMIT ?", (user_id, limit))]
