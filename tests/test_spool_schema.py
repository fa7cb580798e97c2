"""The spool's schema survives upgrades: a version table, ordered migrations, newer files refused.

The old spool is built here from the literal SQL of the first release (no version table),
not from the module's constants, so the test keeps meaning what it says if those change.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import orjson
import pytest

from edgeproxy.delivery import spool_sql
from edgeproxy.delivery.spool import ReplayFilter, Spool, SpoolItem, SpoolUnavailable, group_key
from edgeproxy.delivery.spool_cli import replay, spool_report
from edgeproxy.delivery.spool_schema import CURRENT_VERSION, MIGRATIONS, SCHEMA

RELEASE_1_SCHEMA = """
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


def build_release_1_spool(path: Path) -> None:
    """A spool as the first release left it: a pending event, an Amplitude 400 and a mapping refusal."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.executescript(RELEASE_1_SCHEMA)
    event = orjson.dumps({"event_type": "Old", "device_id": "device-old1", "insert_id": "old-1"})
    rows = [
        ("old-1", "httpapi", group_key("httpapi", None), event, None, "device-old1", "pending", None),
        ("old-2", "httpapi", group_key("httpapi", None), event, None, "device-old1", "dead",
         "Invalid field values on some events (events_with_invalid_fields: time)"),
        ("old-3", None, None, None, orjson.dumps({"type": "track"}), "device-old1", "dead", "event name is empty"),
    ]
    conn.executemany(
        "INSERT INTO items (message_id, endpoint, group_key, item, payload, device_id, state, last_error, received_ms,"
        " size) VALUES (?,?,?,?,?,?,?,?,1700000000000,60)",
        [(m, e, g, i, p, d, st, err) for m, e, g, i, p, d, st, err in rows],
    )
    conn.close()


ALL_VERSIONS = list(range(1, CURRENT_VERSION + 1))


def versions(path: Path) -> list[int]:
    conn = sqlite3.connect(path)
    try:
        return [r[0] for r in conn.execute("SELECT version FROM schema_version ORDER BY version")]
    finally:
        conn.close()


async def test_a_new_spool_records_every_version(tmp_path: Path) -> None:
    s = Spool(tmp_path)
    await s.open()
    await s.close()
    assert versions(s.path) == [m.version for m in MIGRATIONS] and versions(s.path)[-1] == CURRENT_VERSION


async def test_the_schema_script_builds_what_a_new_spool_has(tmp_path: Path) -> None:
    """``SCHEMA`` (for scratch databases, bench/) is the latest layout, not the first release's."""
    s = Spool(tmp_path)
    await s.open()
    await s.close()
    scratch = sqlite3.connect(":memory:")
    scratch.executescript(SCHEMA)

    def layout(conn: sqlite3.Connection) -> list[tuple[str, str, str]]:
        return sorted(conn.execute("SELECT type, name, sql FROM sqlite_master"
                                   " WHERE name NOT LIKE 'sqlite_%' AND name != 'schema_version'"))

    spool = sqlite3.connect(s.path)
    try:
        assert layout(scratch) == layout(spool)
    finally:
        spool.close()
        scratch.close()


async def test_a_release_1_spool_is_migrated_and_keeps_its_events(tmp_path: Path) -> None:
    path = tmp_path / "spool.sqlite3"
    build_release_1_spool(path)
    s = Spool(path)
    await s.open()
    try:
        [group] = await s.due_groups()
        [claimed] = await s.claim(group.group_key, limit=10, max_bytes=10**6)
        by_reason = await s.dead_by_reason()
        letters = {d["message_id"]: d for d in await s.dead_letters()}
    finally:
        await s.close()
    assert versions(path) == ALL_VERSIONS  # 1 recorded as found, the rest applied
    assert claimed.message_id == "old-1" and claimed.item["insert_id"] == "old-1"
    # Codes read from the old texts: Amplitude's field, or the mapping's refusal (no item).
    assert by_reason == {"invalid_fields": 1, "mapping": 1}
    assert letters["old-2"]["reason_code"] == "invalid_fields" and letters["old-3"]["reason_code"] == "mapping"
    assert letters["old-2"]["reason"].startswith("Invalid field values")
    # v8 moved the items to item_bodies: the refused one kept its item (replayable), the
    # mapping refusal had none.
    assert letters["old-2"]["replayable"] and letters["old-2"]["item"] and not letters["old-3"]["replayable"]
    # Before targets and sources (v7) every item was the one Amplitude project's.
    assert {(d["target"], d["source"]) for d in letters.values()} == {("amplitude", "default")}


async def test_opening_again_applies_nothing_twice(tmp_path: Path) -> None:
    path = tmp_path / "spool.sqlite3"
    build_release_1_spool(path)
    for _ in range(2):
        s = Spool(path)
        await s.open()
        await s.close()
    assert versions(path) == ALL_VERSIONS


def test_the_cli_migrates_a_release_1_spool_too(tmp_path: Path) -> None:
    path = tmp_path / "spool.sqlite3"
    build_release_1_spool(path)
    report = spool_report(path)
    assert report["dead_by_reason"] == {"invalid_fields": 1, "mapping": 1} and report["depth"] == 1
    assert replay(path, ReplayFilter(reasons=("invalid_fields",))) == 1
    assert versions(path) == ALL_VERSIONS


async def test_a_spool_from_a_newer_edgeproxy_is_refused_untouched(tmp_path: Path) -> None:
    s = Spool(tmp_path)
    await s.open()
    await s.close()
    conn = sqlite3.connect(s.path, isolation_level=None)
    conn.execute("INSERT INTO schema_version VALUES (?, 0, 'from the future')", (CURRENT_VERSION + 1,))
    conn.close()
    before = versions(s.path)
    with pytest.raises(SpoolUnavailable, match=f"schema version {CURRENT_VERSION + 1}.*newer edgeproxy"):
        await Spool(tmp_path).open()
    with pytest.raises(SpoolUnavailable, match="newer edgeproxy"):
        spool_report(tmp_path)
    assert versions(s.path) == before


async def test_the_dead_letter_index_covers_dead_rows_only(tmp_path: Path) -> None:
    """Version 3: pending and delivered rows do not pay for the dead-letter index."""
    path = tmp_path / "spool.sqlite3"
    build_release_1_spool(path)
    s = Spool(path)
    await s.open()
    await s.close()
    conn = sqlite3.connect(path)
    sql = conn.execute("SELECT sql FROM sqlite_master WHERE type='index' AND name='items_dead'").fetchone()[0]
    plan = " ".join(r[-1] for r in conn.execute(
        "EXPLAIN QUERY PLAN SELECT id FROM items WHERE state='dead' AND dead_code='mapping' ORDER BY id"))
    conn.close()
    assert "WHERE state = 'dead'" in sql
    assert "items_dead" in plan  # the dead-letter queries still use it


async def test_a_claim_reads_the_backlog_in_order_without_sorting_it(tmp_path: Path) -> None:
    """Version 4: claiming the oldest rows of a big backlog walks the index, no temp sort."""
    s = Spool(tmp_path / "spool.sqlite3")
    await s.open()
    await s.close()
    conn = sqlite3.connect(tmp_path / "spool.sqlite3")
    plan = " ".join(r[-1] for r in conn.execute(
        "EXPLAIN QUERY PLAN SELECT id FROM items WHERE state='pending' AND group_key='g' AND next_attempt_ms <= 5"
        " ORDER BY id LIMIT 500"))
    conn.close()
    assert "items_due" in plan and "TEMP B-TREE" not in plan


async def test_the_next_attempt_and_retrying_queries_read_waiting_rows_only(tmp_path: Path) -> None:
    """Version 5: rows scheduled for a later attempt have a partial index of their own."""
    s = Spool(tmp_path / "spool.sqlite3")
    await s.open()
    await s.close()
    conn = sqlite3.connect(tmp_path / "spool.sqlite3")
    sql = conn.execute("SELECT sql FROM sqlite_master WHERE type='index' AND name='items_waiting'").fetchone()[0]
    plans = [" ".join(r[-1] for r in conn.execute("EXPLAIN QUERY PLAN " + q)) for q in (
        f"SELECT MIN(next_attempt_ms) FROM {spool_sql.FROM_WAITING} AND next_attempt_ms > 5",
        f"SELECT COUNT(*) FROM {spool_sql.FROM_WAITING} AND attempts > 0",
    )]
    conn.close()
    assert "WHERE state = 'pending' AND next_attempt_ms > 0" in sql
    assert all("items_waiting" in plan for plan in plans), plans


async def test_an_item_is_stored_once_and_goes_with_its_row(tmp_path: Path) -> None:
    """Schema v8, in the side table (where rows go after a failed attempt): a row's state
    changes never rewrite its item; deleting the row (pruning, forget, room) deletes the item too."""
    s = Spool(tmp_path, retention=0)
    await s.open()
    try:
        await s.append([SpoolItem(f"m{i}", "httpapi", {"insert_id": f"m{i}"}, None, f"d{i % 2}", None, 1, 1)
                        for i in range(4)])
        [group] = await s.due_groups()
        claimed = await s.claim(group.group_key, limit=4, max_bytes=10**6)
        await s.retry([c.row_id for c in claimed], 1, "503")  # moved to the side table, due at once
        claimed = await s.claim(group.group_key, limit=2, max_bytes=10**6)
        assert [c.attempts for c in claimed] == [1, 1]
        await s.ack([c.row_id for c in claimed])  # retention 0: delivered rows are pruned
        await s.forget(["d1"], None)
        left = await s._submit(lambda c: c.execute(
            "SELECT items.message_id, item_bodies.item FROM items JOIN item_bodies ON item_bodies.id = items.id").fetchall())
        bodies = await s._submit(lambda c: c.execute("SELECT COUNT(*) FROM item_bodies").fetchone()[0])
    finally:
        await s.close()
    assert [(m, orjson.loads(item)) for m, item in left] == [("m2", {"insert_id": "m2"})]
    assert bodies == 1
