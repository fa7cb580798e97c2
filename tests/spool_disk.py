"""Reading a SQLite spool file the way a tool outside edgeproxy would: every table that holds
items (the side table ``items`` and the stream's live segments), for tests that check what is
on disk rather than what the Spool's API says."""

from __future__ import annotations

import sqlite3
from typing import Any


def item_tables(conn: sqlite3.Connection) -> list[str]:
    """The side table (as ``items_with_body``, with each row's item) and the live
    ``stream_<slot>`` segment tables, oldest segment first."""
    slots = conn.execute("SELECT slot FROM stream_segments WHERE first_id IS NOT NULL ORDER BY first_id").fetchall()
    return ["items_with_body", *(f"stream_{slot}" for (slot,) in slots)]


def stored(conn: sqlite3.Connection, columns: str = "message_id", where: str = "1", params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """``SELECT columns ... WHERE where`` over every table that holds items, in id order."""
    out: list[tuple[Any, ...]] = []
    for table in item_tables(conn):
        out += conn.execute(f"SELECT id, {columns} FROM {table} WHERE {where}", params).fetchall()
    return [row[1:] for row in sorted(out)]


def table_of(conn: sqlite3.Connection, message_id: str) -> str:
    """The table that holds a message's item."""
    for table in item_tables(conn):
        if conn.execute(f"SELECT 1 FROM {table} WHERE message_id=?", (message_id,)).fetchone():
            return table
    raise LookupError(message_id)
