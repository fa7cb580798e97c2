"""The spool's append-only stream (delivery/spool_stream.py): items written once, delivered by
a durable cursor per group, segments emptied whole; what fails moves to the side table."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from spool_disk import item_tables, stored

from edgeproxy.delivery import spool_sql as sql
from edgeproxy.delivery.spool import Spool, SpoolItem, SpoolUnavailable, now_ms


def make_item(i: int, *, device: str = "device-1", blob: str = "") -> SpoolItem:
    event = {"event_type": f"e{i}", "device_id": device, "insert_id": f"m{i}", "session_id": 1000}
    if blob:
        event["event_properties"] = {"blob": blob}
    return SpoolItem(f"m{i}", "httpapi", event, None, device, None, 1000, now_ms())


async def _group(s: Spool) -> str:
    [group] = await s.due_groups()
    return group.group_key


async def test_a_delivered_batch_writes_one_row_not_one_per_item(tmp_path: Path) -> None:
    """The point of the stream: marking 500 items delivered changes one row (the group's
    cursor), where a row per item changed state before."""
    s = Spool(tmp_path)
    await s.open()
    try:
        await s.append([make_item(i) for i in range(500)])
        key = await _group(s)
        claimed = await s.claim(key, limit=500, max_bytes=10**7)
        assert s._conn is not None
        before = s._conn.total_changes
        await s.ack([c.row_id for c in claimed])
        changes = s._conn.total_changes - before
        stats = await s.stats()
        [newest] = await s.events_for_session("device-1", limit=1)
    finally:
        await s.close()
    assert changes == 1
    assert (stats["delivered"], stats["depth"]) == (500, 0)
    assert newest["state"] == "delivered" and newest["delivered_ms"] and newest["message_id"] == "m499"
    raw = sqlite3.connect(tmp_path / "spool.sqlite3")
    assert raw.execute("SELECT COUNT(*) FROM items").fetchone()[0] == 0  # nothing went to the side table
    assert raw.execute("SELECT group_key, through_id FROM stream_acks").fetchall() == [(key, claimed[-1].row_id)]
    raw.close()


async def test_an_answer_out_of_order_waits_for_the_earlier_batch(tmp_path: Path) -> None:
    """Rows acknowledged past a batch still in flight are delivered in memory; the cursor on disk
    moves once the earlier batch lands. A crash in between sends the later rows again
    (at-least-once), never skips the earlier ones."""
    s = Spool(tmp_path)
    await s.open()
    await s.append([make_item(i) for i in range(6)])
    key = await _group(s)
    await s.claim(key, limit=3, max_bytes=10**6)  # m0-m2, left in flight
    second = await s.claim(key, limit=3, max_bytes=10**6)
    await s.ack([c.row_id for c in second])
    states = {e["message_id"]: e["state"] for e in await s.events_for_session("device-1")}
    cursor = await s._submit(lambda c: c.execute("SELECT MAX(through_id) FROM stream_acks").fetchone()[0])
    stats = await s.stats()
    await s.close()  # as if the process died with the first batch in flight
    assert states == {"m0": "inflight", "m1": "inflight", "m2": "inflight",
                      "m3": "delivered", "m4": "delivered", "m5": "delivered"}
    assert cursor is None and (stats["delivered"], stats["in_flight"], stats["depth"]) == (3, 3, 0)

    again = Spool(tmp_path)
    await again.open()
    try:
        resent = await again.claim(await _group(again), limit=10, max_bytes=10**6)
        assert [c.message_id for c in resent] == [f"m{i}" for i in range(6)]  # all six: the cursor never moved
        await again.ack([c.row_id for c in resent[3:]])
        await again.ack([c.row_id for c in resent[:3]])
        through = await again._submit(lambda c: c.execute("SELECT MAX(through_id) FROM stream_acks").fetchone()[0])
        assert through == resent[-1].row_id and await again.due_groups() == []
    finally:
        await again.close()


async def test_a_release_for_later_waits_in_the_side_table_until_then(tmp_path: Path) -> None:
    """A row given back "not before" a time (a throttled device) leaves the stream, which keeps
    no time per row, for the side table, and is due then, with its attempts unchanged; one
    given back for now stays in the stream and is the next claim's first."""
    s = Spool(tmp_path)
    await s.open()
    try:
        await s.append([make_item(i) for i in range(4)])
        key = await _group(s)
        a, b, c = await s.claim(key, limit=3, max_bytes=10**6)
        later = now_ms() + 60_000
        await s.settle(release=[([a.row_id], later), ([b.row_id], 0)], ack=[c.row_id])
        [group] = await s.due_groups()
        assert group.count == 2 and await s.next_attempt_ms() == later
        assert [x.message_id for x in await s.claim(key, limit=10, max_bytes=10**6)] == ["m1", "m3"]
        assert [x.message_id for x in await s.claim(key, limit=10, max_bytes=10**6, now=later)] == ["m0"]
        m0 = {e["message_id"]: e for e in await s.events_for_session("device-1")}["m0"]
        assert (m0["state"], m0["attempts"]) == ("inflight", 0)
        raw = sqlite3.connect(s.path)
        assert raw.execute("SELECT message_id FROM items").fetchall() == [("m0",)]
        assert ("m0",) not in stored(raw, where="id NOT IN (SELECT id FROM items)")  # moved, not copied
        raw.close()
    finally:
        await s.close()


async def test_a_failed_settle_reloads_the_stream_and_loses_nothing(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """A verdict whose transaction rolls back leaves the cursor where the file has it: the
    memory that had moved on is reloaded, the rows are claimed and sent again."""
    s = Spool(tmp_path)
    await s.open()
    try:
        await s.append([make_item(i) for i in range(5)])
        key = await _group(s)
        claimed = await s.claim(key, limit=3, max_bytes=10**6)
        real = sql.settle

        def failing(*args, **kwargs):
            raise sqlite3.OperationalError("disk I/O error")

        monkeypatch.setattr(sql, "settle", failing)
        with pytest.raises(SpoolUnavailable):
            await s.ack([c.row_id for c in claimed])
        monkeypatch.setattr(sql, "settle", real)
        assert s._stream.stale
        again = await s.claim(key, limit=10, max_bytes=10**6)
        assert [c.message_id for c in again] == [f"m{i}" for i in range(5)]
        await s.ack([c.row_id for c in again])
        stats = await s.stats()
    finally:
        await s.close()
    assert (stats["delivered"], stats["depth"], stats["in_flight"]) == (5, 0, 0)


async def test_a_full_spool_empties_settled_segments_whatever_retention_keeps(tmp_path: Path) -> None:
    """Delivered rows are kept for /debug only: when the disk budget is reached they give their
    room back (whole segments) before any new event is refused."""
    s = Spool(tmp_path, max_bytes=256 * 1024, retention=10_000)  # retention alone would keep them all
    await s.open()
    try:
        blob = "y" * 2000
        n = 0
        with pytest.raises(SpoolUnavailable, match="full"):
            for n in range(1000):
                await s.append([make_item(n, blob=blob)])
        key = await _group(s)
        while claimed := await s.claim(key, limit=100, max_bytes=10**7):
            await s.ack([c.row_id for c in claimed])
        for i in range(n):  # as many again: room comes from the delivered segments
            await s.append([make_item(10_000 + i, blob=blob)])
        stats = await s.stats()
    finally:
        await s.close()
    assert s._stream.dropped >= 1 and stats["depth"] == n


async def test_a_stream_delivery_cycle_reads_the_same_amount_however_deep_the_backlog(tmp_path: Path) -> None:
    """The stream's due groups cost a seek per segment and at most DUE_COUNT_CAP index entries
    per group, not a walk of the backlog: counted in SQLite VM steps, not in time."""

    async def steps(pending: int) -> tuple[int, int]:
        s = Spool(tmp_path / f"backlog-{pending}.sqlite3")
        await s.open()
        try:
            for start in range(0, pending, 1000):
                await s.append([make_item(i) for i in range(start, start + 1000)])
            counted = [0]

            def tick() -> int:
                counted[0] += 1
                return 0

            def due(c: sqlite3.Connection) -> int:
                c.set_progress_handler(tick, 100)
                try:
                    return sum(n for n, _ in s._stream.due_groups(c, sql.DUE_COUNT_CAP).values())
                finally:
                    c.set_progress_handler(None, 0)

            count = await s._submit(due)
            return counted[0], count
        finally:
            await s.close()

    small, small_count = await steps(10_000)
    big, big_count = await steps(40_000)
    assert small_count == big_count == sql.DUE_COUNT_CAP
    assert big <= small * 1.5 + 50, (small, big)  # a walk of the backlog would read 4x more


def test_the_disk_helper_sees_every_item_table(tmp_path: Path) -> None:
    """tests/spool_disk.py reads what the spool writes (the other tests rely on it)."""
    import asyncio

    async def fill() -> None:
        s = Spool(tmp_path, retention=0)
        await s.open()
        await s.append([make_item(i) for i in range(70)])  # two segments of 64 and 6
        await s.close()

    asyncio.run(fill())
    raw = sqlite3.connect(tmp_path / "spool.sqlite3")
    assert item_tables(raw)[0] == "items_with_body" and len(item_tables(raw)) == 3
    assert [m for (m,) in stored(raw)] == [f"m{i}" for i in range(70)]


async def test_another_process_writing_the_stream_is_noticed(tmp_path: Path) -> None:
    """``edgeproxy forget`` opens the spool of a running server from its own process, deletes a
    person's rows and queues a deletion request. The server keeps the stream's state in memory:
    it must notice (stream_meta's epoch) and read it again, or its next ids would collide with
    the ones the other process used, and its counts would be wrong."""
    server = Spool(tmp_path)
    await server.open()
    try:
        await server.append([make_item(i, device="d1" if i % 2 else "d2") for i in range(10)])
        assert (await server.stats())["depth"] == 10
        other = Spool(tmp_path)  # the CLI's own connection and state
        await other.open()
        try:
            counts = await other.forget(["d1"], None)
            await other.append([SpoolItem("del-1", "deletions", {"user_ids": ["u"]}, None, None, None, None, now_ms(),
                                          target="deletions")])
        finally:
            await other.close()
        assert counts == {"pending": 5}
        await server.append([make_item(i, device="d2") for i in range(10, 20)])  # ids after the other's
        groups = {g.endpoint: g for g in await server.due_groups()}
        assert groups["httpapi"].count == 15 and groups["deletions"].count == 1
        claimed = await server.claim(groups["httpapi"].group_key, limit=100, max_bytes=10**7)
        await server.ack([c.row_id for c in claimed])
        stats = await server.stats()
    finally:
        await server.close()
    assert [c.message_id for c in claimed] == [f"m{i}" for i in range(0, 10, 2)] + [f"m{i}" for i in range(10, 20)]
    assert (stats["depth"], stats["delivered"]) == (1, 15)


async def test_a_claim_is_read_in_slices_with_appends_in_between(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A 500-row claim held the event loop ~1.5 ms in one transaction: it is read CLAIM_SLICE
    rows at a time, tracking calls are committed between the slices, and the byte limit holds
    across them."""
    import asyncio

    from edgeproxy.delivery import spool as spool_module

    monkeypatch.setattr(spool_module, "CLAIM_SLICE", 10)
    s = Spool(tmp_path, synchronous="NORMAL")  # an append is acknowledged at its commit
    await s.open()
    try:
        await s.append([make_item(i) for i in range(40)])
        key = await _group(s)
        one = (await s.claim(key, limit=1, max_bytes=10**6))[0].size
        before = s.transactions
        claiming = asyncio.ensure_future(s.claim(key, limit=35, max_bytes=10**6))
        await asyncio.sleep(0)  # the first slice is queued
        await s.append([make_item(100)])
        appended_while_claiming = not claiming.done()
        claimed = await claiming
        transactions = s.transactions - before
        capped = await s.claim(key, limit=100, max_bytes=3 * (one + 1) + one)  # three and a bit: three
    finally:
        await s.close()
    assert appended_while_claiming and [c.message_id for c in claimed] == [f"m{i}" for i in range(1, 36)]
    assert transactions >= 4  # four slices of at most 10 (the append shares one of them)
    assert [c.message_id for c in capped] == ["m36", "m37", "m38"]


async def test_each_slice_of_a_claim_reads_only_rows_it_can_take(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Rows between the cursor and the frontier are in flight: a later slice reads from the
    frontier on (and the rows given back behind it), not every earlier slice's rows again."""
    from edgeproxy.delivery import spool as spool_module
    from edgeproxy.delivery import spool_stream

    monkeypatch.setattr(spool_module, "CLAIM_SLICE", 10)
    read: list[int] = []
    real = spool_stream.Stream.due_rows

    def counting(self: spool_stream.Stream, c: sqlite3.Connection, key: str, limit: int) -> list:
        rows = real(self, c, key, limit)
        read.append(len(rows))
        return rows

    monkeypatch.setattr(spool_stream.Stream, "due_rows", counting)
    s = Spool(tmp_path)
    await s.open()
    try:
        await s.append([make_item(i) for i in range(60)])
        key = await _group(s)
        first = await s.claim(key, limit=50, max_bytes=10**6)
        await s.release([first[3].row_id])  # given back: the next claim takes it first
        read.clear()
        second = await s.claim(key, limit=5, max_bytes=10**6)
    finally:
        await s.close()
    assert [c.message_id for c in first] == [f"m{i}" for i in range(50)]
    assert [c.message_id for c in second] == ["m3", "m50", "m51", "m52", "m53"] and sum(read) == 5
