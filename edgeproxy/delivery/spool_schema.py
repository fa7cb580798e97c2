"""The spool's schema and its versions: a spool written by one edgeproxy opens in the next.

Why a version table and ordered migrations rather than ``CREATE TABLE IF NOT EXISTS`` alone:
the spool outlives the process that wrote it (events wait in it across restarts and
upgrades), so a new column or index must be added to a file that already holds undelivered
events, exactly once, and a file written by a NEWER edgeproxy must be refused rather than
misread (an older binary would not know what a newer column means for delivery).

``schema_version`` holds one row per applied migration; the highest is the file's version.
A spool created before versioning existed (tables present, no ``schema_version``) is
version 1. Migrations run in one ``BEGIN IMMEDIATE`` transaction, so two processes opening
the same file (the server and ``edgeproxy spool``) cannot apply one twice.
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass


class SchemaTooNew(Exception):
    """The spool was written by a newer edgeproxy: refuse it rather than guess."""


@dataclass(frozen=True)
class Migration:
    version: int
    description: str
    statements: tuple[str, ...]


# Version 1: the schema as first released (also what a spool without a version table holds).
V1_STATEMENTS = (
    """CREATE TABLE IF NOT EXISTS items (
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
    )""",
    "CREATE INDEX IF NOT EXISTS items_due ON items(state, group_key, next_attempt_ms, id)",
    "CREATE INDEX IF NOT EXISTS items_session ON items(device_id, session_id, id)",
    """CREATE TABLE IF NOT EXISTS responses (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        time_ms INTEGER NOT NULL,
        endpoint TEXT NOT NULL,
        status INTEGER,
        items INTEGER NOT NULL,
        body TEXT
    )""",
)

# Version 2: a dead letter keeps a reason CODE (invalid_fields, request_rejected, mapping…)
# next to Amplitude's text, so `edgeproxy spool` counts dead letters by reason and
# `edgeproxy replay --reason` selects them. Rows dead-lettered before get a code read from
# their text where it names Amplitude's field, else "other".
V2_STATEMENTS = (
    "ALTER TABLE items ADD COLUMN dead_code TEXT",
    """UPDATE items SET dead_code = CASE
        WHEN item IS NULL THEN 'mapping'
        WHEN last_error LIKE '%events_with_invalid_fields%' THEN 'invalid_fields'
        WHEN last_error LIKE '%events_with_missing_fields%' THEN 'missing_fields'
        WHEN last_error LIKE '%events_with_invalid_id_lengths%' THEN 'invalid_id_lengths'
        WHEN last_error LIKE '%Invalid API key%' THEN 'invalid_api_key'
        WHEN last_error LIKE '%request-level 400%' THEN 'request_rejected'
        ELSE 'other' END
       WHERE state = 'dead'""",
    "CREATE INDEX IF NOT EXISTS items_dead ON items(state, dead_code, id)",
)

# Version 3: the dead-letter index covers dead rows only. As a full index over
# (state, dead_code, id) every append and every state change of every event paid for it.
V3_STATEMENTS = (
    "DROP INDEX IF EXISTS items_dead",
    "CREATE INDEX IF NOT EXISTS items_dead ON items(dead_code, id) WHERE state = 'dead'",
)

# Version 4: the index the worker claims by is in id order within a group, so a claim reads
# its batch in order and stops (ordered by next_attempt_ms first, every claim sorted the
# group's whole backlog to take the oldest 500: quadratic when catching up after an outage).
V4_STATEMENTS = (
    "DROP INDEX IF EXISTS items_due",
    "CREATE INDEX IF NOT EXISTS items_due ON items(state, group_key, id, next_attempt_ms)",
)

# Version 5: rows waiting for a later attempt (a retry's backoff, a 429 pause) get an index of
# their own, so "when is the next row due" and "which rows are retrying" read those rows only.
# Before, both walked every pending row: tens of milliseconds per delivery cycle once a
# backlog held 100k events, which slowed delivery exactly when it had the most to do. Partial:
# a new row (next_attempt_ms = 0) never enters it, so appends do not pay for it.
V5_STATEMENTS = (
    "CREATE INDEX IF NOT EXISTS items_waiting ON items(next_attempt_ms) WHERE state = 'pending' AND next_attempt_ms > 0",
)

# Version 6: delivered rows (kept for /debug up to ``retention``) have an index of their own in
# id order, so pruning finds the oldest ones by reading as many index entries as it deletes.
# Before, every prune sorted all delivered rows (0.7 ms for 11,000 of them) to find the oldest,
# which ruled out pruning in small steps, and a 1,000-row prune held the event loop for ~10 ms.
V6_STATEMENTS = (
    "CREATE INDEX IF NOT EXISTS items_delivered ON items(id) WHERE state = 'delivered'",
)

# Version 7: delivery targets. Each row says who delivers it (``target``: "amplitude", or
# "segment" for the relay to Segment's tracking API) and for which source (write keys with
# their own Amplitude project and relay); responses say whose answer they were. Rows written
# before are the default source's Amplitude items.
V7_STATEMENTS = (
    "ALTER TABLE items ADD COLUMN target TEXT NOT NULL DEFAULT 'amplitude'",
    "ALTER TABLE items ADD COLUMN source TEXT NOT NULL DEFAULT 'default'",
    "ALTER TABLE responses ADD COLUMN target TEXT NOT NULL DEFAULT 'amplitude'",
    "ALTER TABLE responses ADD COLUMN source TEXT NOT NULL DEFAULT 'default'",
)

# Version 8: the item's JSON moves to a table of its own, written once and deleted with its row
# (a trigger). Before, every change of a row's state (in flight, delivered, retried) rewrote the
# whole record with its item in it: marking 500 Amplitude-sized rows delivered wrote their 500 KB
# again, and a relayed message, twice that size, twice as much (measured on 30,000 rows: a
# delivered mark 4.7 -> 1.7 µs a row for 1.1 KB items, 9.3 -> 2.2 µs for 2 KB ones). Readers
# that want the item join it back (``items_with_body``).
V8_STATEMENTS = (
    "CREATE TABLE IF NOT EXISTS item_bodies (id INTEGER PRIMARY KEY, item BLOB NOT NULL)",
    "INSERT INTO item_bodies (id, item) SELECT id, item FROM items WHERE item IS NOT NULL",
    "ALTER TABLE items DROP COLUMN item",
    "CREATE TRIGGER IF NOT EXISTS items_body_deleted AFTER DELETE ON items"
    " BEGIN DELETE FROM item_bodies WHERE id = OLD.id; END",
    "CREATE VIEW IF NOT EXISTS items_with_body AS"
    " SELECT items.*, item_bodies.item AS item FROM items LEFT JOIN item_bodies ON item_bodies.id = items.id",
)

# Version 9: the append-only stream (spool_stream). New items go into segment tables
# (``stream_<slot>``, created as needed and listed in ``stream_segments``; a slot whose
# first_id is NULL is empty, for reuse), written once; ``stream_acks`` is each group's durable
# cursor (every row of the group up to ``through_id`` is settled) with the time it moved, which
# is those rows' delivered_ms; ``stream_meta.epoch`` is bumped by each process that takes the
# stream over (its state lives in memory), so another one knows to read it again. ``items`` stays, as the side table for rows that failed once,
# dead letters and replays: what a v8 file holds there is delivered from it as before.
V9_STATEMENTS = (
    "CREATE TABLE IF NOT EXISTS stream_segments (slot INTEGER PRIMARY KEY, first_id INTEGER)",
    "CREATE TABLE IF NOT EXISTS stream_acks (group_key TEXT NOT NULL, through_id INTEGER NOT NULL,"
    " time_ms INTEGER NOT NULL, PRIMARY KEY (group_key, through_id)) WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS stream_meta (epoch INTEGER NOT NULL)",
    "INSERT INTO stream_meta (epoch) SELECT 0 WHERE NOT EXISTS (SELECT 1 FROM stream_meta)",
)

MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "items and responses", V1_STATEMENTS),
    Migration(2, "dead letters keep a reason code", V2_STATEMENTS),
    Migration(3, "the dead-letter index covers dead rows only", V3_STATEMENTS),
    Migration(4, "claims read a group's backlog in id order", V4_STATEMENTS),
    Migration(5, "rows waiting for a later attempt have their own index", V5_STATEMENTS),
    Migration(6, "delivered rows have their own index, for pruning in small steps", V6_STATEMENTS),
    Migration(7, "rows and responses name their delivery target and source", V7_STATEMENTS),
    Migration(8, "items are stored apart from their rows' state", V8_STATEMENTS),
    Migration(9, "new items go to an append-only stream of segments, delivered by cursor", V9_STATEMENTS),
)
CURRENT_VERSION = MIGRATIONS[-1].version

# The latest schema as one script, for tools that build a scratch database (bench/): every
# migration's statements in order, as a new spool gets them.
SCHEMA = "".join(statement + ";\n" for m in MIGRATIONS for statement in m.statements)

_VERSION_TABLE = (
    "CREATE TABLE IF NOT EXISTS schema_version ("
    " version INTEGER PRIMARY KEY, applied_ms INTEGER NOT NULL, description TEXT NOT NULL)"
)


def _has_table(conn: sqlite3.Connection, name: str) -> bool:
    return conn.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name=?", (name,)).fetchone() is not None


def schema_version(conn: sqlite3.Connection) -> int:
    """The file's version: 0 for an empty file, 1 for a spool from before versioning."""
    if _has_table(conn, "schema_version"):
        return int(conn.execute("SELECT COALESCE(MAX(version), 0) FROM schema_version").fetchone()[0])
    return 1 if _has_table(conn, "items") else 0


def check_not_newer(version: int, where: object) -> None:
    if version > CURRENT_VERSION:
        raise SchemaTooNew(
            f"the spool {where} has schema version {version}, but this edgeproxy knows versions up to"
            f" {CURRENT_VERSION}: it was written by a newer edgeproxy. Run that version (the events"
            " in it are kept), or point delivery.data_dir at another directory."
        )


def migrate(conn: sqlite3.Connection, where: object = "") -> tuple[int, int]:
    """Bring the file to CURRENT_VERSION; returns (version found, version now).

    ``conn`` must be in autocommit mode (``isolation_level=None``). Raises SchemaTooNew for a
    newer file, leaving it untouched.
    """
    check_not_newer(schema_version(conn), where)  # fast path, before taking the write lock
    conn.execute("BEGIN IMMEDIATE")
    try:
        found = schema_version(conn)  # again under the lock: another process may have migrated
        check_not_newer(found, where)
        if found < CURRENT_VERSION:
            conn.execute(_VERSION_TABLE)
            if found == 1 and not conn.execute("SELECT 1 FROM schema_version").fetchone():
                conn.execute(
                    "INSERT INTO schema_version VALUES (1, ?, ?)",
                    (int(time.time() * 1000), "items and responses (found without a version table)"),
                )
            for m in MIGRATIONS:
                if m.version <= found:
                    continue
                for statement in m.statements:
                    conn.execute(statement)
                conn.execute(
                    "INSERT INTO schema_version VALUES (?, ?, ?)", (m.version, int(time.time() * 1000), m.description)
                )
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return found, CURRENT_VERSION
