"""``edgeproxy spool`` and ``edgeproxy replay`` on a SQLite spool: synchronous, own connection.

Apart from ``spool.py`` (the serving side: group commit on the event loop) because the CLI runs
next to a live process: it opens the file itself, migrates it if needed, and reads read-only.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

from edgeproxy.delivery import spool_admin as admin
from edgeproxy.delivery import spool_view as view
from edgeproxy.delivery.records import SpoolUnavailable, now_ms
from edgeproxy.delivery.spool_admin import ReplayFilter
from edgeproxy.delivery.spool_file import spool_path
from edgeproxy.delivery.spool_schema import SchemaTooNew, migrate
from edgeproxy.delivery.spool_stream import StreamState


def _cli_connect(path: Path, readonly: bool) -> sqlite3.Connection:
    """Open an existing spool for the CLI, migrated to the current schema (safe while serving)."""
    path = spool_path(path)
    if not path.exists():
        raise SpoolUnavailable(f"no spool at {path}")
    try:
        conn = sqlite3.connect(f"file:{path}", uri=True, isolation_level=None, timeout=10.0)
        conn.row_factory = sqlite3.Row
        conn.execute("SELECT 1 FROM items LIMIT 1")
        migrate(conn, path)
        if readonly:
            conn.execute("PRAGMA query_only=ON")
    except SchemaTooNew as exc:
        raise SpoolUnavailable(str(exc)) from None
    except sqlite3.Error as exc:
        raise SpoolUnavailable(f"cannot read the spool {path}: {exc}") from None
    return conn


def spool_report(path: Path, *, limit: int = 20) -> dict[str, Any]:
    """``edgeproxy spool``: depth, in flight, retrying, oldest age, dead letters by reason (safe while serving)."""
    conn = _cli_connect(path, readonly=True)
    try:
        stream = StreamState.load(conn)  # as on disk: what the serving process has in flight is pending here
        report = view.stats(conn, stream, now_ms())
        report["by_target"] = view.depth_by_target(conn, stream)
        report["dead_by_reason"] = admin.dead_by_reason(conn)
        report["dead_letters"] = admin.dead_letters(conn, limit)
        report["recent_responses"] = admin.recent_responses(conn, limit)
        return report
    finally:
        conn.close()


def replay(path: Path, selection: ReplayFilter | None = None) -> int:
    """``edgeproxy replay``: matching dead letters with an item back to pending; a running worker sends them."""
    conn = _cli_connect(path, readonly=False)
    try:
        conn.execute("BEGIN IMMEDIATE")
        n = admin.replay(conn, selection)
        conn.execute("COMMIT")
        return n
    except sqlite3.Error as exc:
        raise SpoolUnavailable(f"cannot replay dead letters in {path}: {exc}") from None
    finally:
        conn.close()
