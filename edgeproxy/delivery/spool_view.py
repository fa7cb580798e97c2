"""The spool's reads over both of its parts: the stream (``spool_stream``: items written once,
delivered by cursor) and the side table (``spool_sql``: rows that failed once, dead letters).

Why a module of its own: /debug, ``edgeproxy spool`` and ``forget`` ask about items whatever
part holds them, and the two answer the same questions differently (a stream row's state is
its position against its group's cursor; a side row's is a column). Every function takes the
stream's state as the disk holds it (``StreamState``), and the serving process passes what
it keeps in memory (rows in flight, rows acknowledged past a cursor); the CLI has neither.
"""

from __future__ import annotations

import sqlite3
from typing import Any, Container, Iterable, Mapping, Sequence

import orjson

from edgeproxy.delivery import spool_admin as admin
from edgeproxy.delivery import spool_sql as sql
from edgeproxy.delivery.spool_stream import StreamState, cursor_ms

Ahead = Mapping[str, Mapping[int, int]]  # group -> {row id: acked ms}, past the cursor
_COLUMNS = "id, message_id, endpoint, group_key, item, device_id, user_id, session_id, received_ms, target, source"


def _stream_row(c: sqlite3.Connection, s: StreamState, r: tuple[Any, ...], ahead: Ahead) -> dict[str, Any]:
    row_id, message_id, endpoint, key, item, device_id, user_id, session_id, received_ms, target, source = r
    acked = ahead.get(key, {}).get(row_id)
    state = "delivered" if acked is not None else s.state_of(key, row_id)
    delivered_ms = acked if acked is not None or state != "delivered" else cursor_ms(c, key, row_id)
    return {"id": row_id, "message_id": message_id, "endpoint": endpoint, "item": orjson.loads(item), "state": state,
            "attempts": 0, "last_error": None, "received_ms": received_ms, "delivered_ms": delivered_ms,
            "target": target, "source": source, "device_id": device_id, "session_id": session_id}


def _side_rows(rows: Iterable[sqlite3.Row]) -> list[dict[str, Any]]:
    out = []
    for r in rows:
        row = sql.row_dict(r)
        row["id"], row["device_id"], row["session_id"] = r["id"], r["device_id"], r["session_id"]
        out.append(row)
    return out


def _plain(c: sqlite3.Connection) -> sqlite3.Cursor:
    cur = c.cursor()
    cur.row_factory = None
    return cur


def events_for_session(c: sqlite3.Connection, s: StreamState, device_id: str, session_id: int | None, limit: int,
                       in_flight: Container[int] = (), ahead: Ahead = {}) -> list[dict[str, Any]]:
    """A device's (or one of its sessions') items, most recent first, with their delivery state."""
    where, params = "device_id=?", [device_id]  # type: str, list[Any]
    if session_id is not None:
        where, params = "device_id=? AND session_id=?", [device_id, session_id]
    rows = _side_rows(c.execute(f"SELECT * FROM items_with_body WHERE {where} ORDER BY id DESC LIMIT ?",
                                (*params, limit)))
    for seg in reversed(s.segments):
        found = _plain(c).execute(f"SELECT {_COLUMNS} FROM {seg.table} WHERE {where} ORDER BY id DESC LIMIT ?",
                                  (*params, limit)).fetchall()
        rows += [_stream_row(c, s, r, ahead) for r in found]
        if sum(1 for r in rows if r["id"] >= seg.first_id) >= limit:
            break
    rows.sort(key=lambda r: r["id"], reverse=True)
    out = []
    for row in rows[:limit]:
        if row.pop("id") in in_flight:
            row["state"] = "inflight"
        del row["device_id"], row["session_id"]
        out.append(row)
    return out


def in_flight_rows(c: sqlite3.Connection, s: StreamState, ids: Sequence[int], limit: int) -> list[dict[str, Any]]:
    """The rows a request is out for (the serving process's in-flight ids), oldest first."""
    ids = sorted(ids)[:limit]
    marks = ",".join("?" * len(ids))
    rows = _side_rows(c.execute(f"SELECT * FROM items_with_body WHERE id IN ({marks})", ids)) if ids else []
    for seg in s.segments:
        mine = [i for i in ids if seg.first_id <= i <= seg.last_id]
        if mine:
            found = _plain(c).execute(f"SELECT {_COLUMNS} FROM {seg.table} WHERE id IN ({','.join('?' * len(mine))})",
                                      mine).fetchall()
            rows += [_stream_row(c, s, r, {}) for r in found]
    rows.sort(key=lambda r: r["id"])
    for row in rows:
        row["state"] = "inflight"
        del row["id"], row["session_id"]
    return rows


def undelivered(c: sqlite3.Connection, s: StreamState, which: str, limit: int,
                in_flight: Sequence[int] = ()) -> list[dict[str, Any]]:
    """``in_flight`` (sent, answer awaited) or ``retrying`` (the side table's) rows, oldest first."""
    if which == "in_flight":
        return in_flight_rows(c, s, in_flight, limit)
    if which == "retrying":
        return sql.retrying(c, limit)
    raise ValueError(f"which must be 'in_flight' or 'retrying', got {which!r}")


def _first_pending_ms(c: sqlite3.Connection, s: StreamState) -> list[int]:
    out = []
    for key in s.groups:
        for seg in s.after(key):
            row = c.execute(f"SELECT received_ms FROM {seg.table} WHERE group_key=? AND id > ? ORDER BY id LIMIT 1",
                            (key, s.cursor.get(key, 0))).fetchone()
            if row:
                out.append(row[0])
                break
    return out


def stats(c: sqlite3.Connection, s: StreamState, t: int, acked_ahead: int = 0) -> dict[str, Any]:
    """Counts per state and the age of the longest-waiting undelivered row, over both parts.

    Called every second for the depth gauge: the stream's counts are kept per segment, and the
    oldest row is a seek per group."""
    out = admin.stats(c, t)
    out["depth"] += s.pending() - acked_ahead
    out["delivered"] += s.delivered() + acked_ahead
    firsts = _first_pending_ms(c, s)
    if firsts:
        age = max(0.0, (t - min(firsts)) / 1000)
        out["oldest_age_s"] = max(out["oldest_age_s"], age)
    return out


def depth_by_target(c: sqlite3.Connection, s: StreamState) -> list[dict[str, Any]]:
    """Undelivered and dead rows per (target, source), for ``edgeproxy spool`` and /debug."""
    counts = {(r["target"], r["source"]): r for r in admin.depth_by_target(c)}
    for key in s.groups:
        n, names = 0, None
        for seg in s.after(key):
            row = c.execute(f"SELECT COUNT(*), MIN(target), MIN(source) FROM {seg.table} WHERE group_key=? AND id > ?",
                            (key, s.cursor.get(key, 0))).fetchone()
            n += row[0]
            names = names or (row[1:] if row[0] else None)
        if names:
            entry = counts.setdefault(names, {"target": names[0], "source": names[1], "pending": 0, "dead": 0})
            entry["pending"] += n
    return [counts[k] for k in sorted(counts)]


def forget(c: sqlite3.Connection, s: StreamState, device_ids: Sequence[str], user_id: str | None) -> dict[str, int]:
    """Delete a person's rows in both parts, zeroed on disk (secure_delete ON for these
    statements); counts by state. The caller reloads the stream's state afterwards."""
    counts = admin.forget(c, device_ids, user_id)
    person = admin.person_where(device_ids, user_id)
    if person is None:
        return counts
    where, params = person
    with admin.zeroing(c):
        for seg in s.segments:
            for row_id, key in c.execute(f"SELECT id, group_key FROM {seg.table} WHERE {where}", params).fetchall():
                state = s.state_of(key, row_id)
                counts[state] = counts.get(state, 0) + 1
            c.execute(f"DELETE FROM {seg.table} WHERE {where}", params)
    return counts


def user_devices(c: sqlite3.Connection, s: StreamState, user_id: str, limit: int = 1000) -> list[str]:
    """Device ids the spool has seen with this user id (the person's browsers and phones)."""
    seen = dict.fromkeys(admin.user_devices(c, user_id, limit))
    for seg in s.segments:
        for (device,) in c.execute(f"SELECT DISTINCT device_id FROM {seg.table} WHERE user_id = ?"
                                   " AND device_id IS NOT NULL", (user_id,)):
            seen.setdefault(device)
    return list(seen)[:limit]
