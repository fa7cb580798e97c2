"""The spool's file: where it is, and the serving connection's settings.

Why a module of its own: the serving spool (``spool.py``) and the CLI (``spool_cli.py``)
resolve the same path, and the PRAGMAs below are each a measured choice with its reason,
none of them the queue's logic.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from edgeproxy.delivery.spool_schema import migrate

SPOOL_FILENAME = "spool.sqlite3"
DB_SUFFIXES = frozenset({".sqlite3", ".sqlite", ".db"})
WAL_SIZE_LIMIT = 64 * 1024 * 1024  # bytes a restarted WAL file is truncated to (journal_size_limit)
# The hard page limit sits this far above max_bytes: appends stop at max_bytes (a clear 503),
# while the worker's updates and one in-progress append still find room.
HARD_LIMIT_HEADROOM = 16 * 1024 * 1024
# Debian's SQLite is built with SECURE_DELETE on: every deleted row and freed page is overwritten
# with zeros, so pruning delivered rows wrote each of their pages into the WAL once more. FAST
# zeroes deleted content only where that costs no extra write (within pages already written).
# Measured: pruning delivered rows 11.0 -> 9.0 µs a row; forwarding CPU 19.5 -> 18.4 µs an event
# (bench_ingest --only forwarding, 4 alternating runs each). What must not linger is
# what `edgeproxy forget` deletes: that statement runs with secure_delete ON (spool_admin.zeroing).
SECURE_DELETE = "FAST"


def spool_path(path: Path | str) -> Path:
    """The database file: ``path`` itself when it names one (a name ending in .sqlite3, .sqlite
    or .db that is not a directory), else ``spool.sqlite3`` in the directory ``path``."""
    path = Path(path)
    return path if path.suffix in DB_SUFFIXES and not path.is_dir() else path / SPOOL_FILENAME


def connect(path: Path, max_bytes: int | None) -> sqlite3.Connection:
    """The serving connection: WAL, no autocheckpoint or flush of SQLite's own (the syncer's),
    migrated, and with ``max_bytes`` a hard page limit above it (see HARD_LIMIT_HEADROOM)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # timeout=0: a write lock held by another process (the CLI's replay) must not stall the
    # event loop in SQLite's busy handler; GroupCommit retries instead (BUSY_TIMEOUT_S in all).
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=0)
    try:
        conn.row_factory = sqlite3.Row
        mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if mode.lower() != "wal":
            raise sqlite3.OperationalError(f"cannot use WAL mode on {path} (got {mode})")
        conn.execute("PRAGMA synchronous=NORMAL")  # the flush after commit is the syncer's
        conn.execute("PRAGMA wal_autocheckpoint=0")  # so is the checkpoint
        conn.execute(f"PRAGMA journal_size_limit={WAL_SIZE_LIMIT}")  # a restarted WAL shrinks back
        conn.execute(f"PRAGMA secure_delete={SECURE_DELETE}")  # forget() scrubs; see SECURE_DELETE
        conn.execute("PRAGMA busy_timeout=5000")  # for the migration only; reset below
        migrate(conn, path)
        conn.execute("PRAGMA busy_timeout=0")
        if max_bytes:
            page_size = conn.execute("PRAGMA page_size").fetchone()[0]
            hard = max_bytes + min(max_bytes, HARD_LIMIT_HEADROOM)
            conn.execute(f"PRAGMA max_page_count={max(1, hard // page_size)}")
    except BaseException:
        conn.close()
        raise
    return conn
