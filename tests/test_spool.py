"""The delivery queue: durability, group commit, reclaim after a crash, errors as SpoolUnavailable.

The behaviour tests run against both backends (the ``make_queue`` fixture: the SQLite spool
and Redis streams on a real redis-server); SQLite specifics (WAL, files, group commit) use
``sqlite_spool`` or build a ``Spool`` directly. Redis specifics are in test_redis_queue.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from edgeproxy.delivery.spool import (
    DeadLetter,
    ReplayFilter,
    Spool,
    SpoolItem,
    SpoolUnavailable,
    group_key,
    now_ms,
)
from edgeproxy.delivery import spool as spool_module
from edgeproxy.delivery import spool_budget, spool_stream, spool_sync
from edgeproxy.delivery import spool_sql as sql
from edgeproxy.delivery.spool_cli import replay, spool_report
from edgeproxy.delivery.redis_queue import RedisQueue
from edgeproxy.metrics import Metrics
from spool_disk import stored, table_of


def make_item(i: int, *, endpoint: str = "httpapi", device: str = "device-1", session: int | None = 1000,
              options: dict | None = None) -> SpoolItem:
    event = {"event_type": f"e{i}", "device_id": device, "insert_id": f"m{i}", "session_id": session}
    return SpoolItem(f"m{i}", endpoint, event, options, device, None, session, now_ms())


@pytest.fixture(params=["sqlite", "redis"])
def make_queue(request, tmp_path: Path):
    """``make_queue(**options)``: a new handle on the same queue data, as a restarted process gets."""
    if request.param == "sqlite":
        def make(**options):
            return Spool(tmp_path, **options)  # a directory: the file is <dir>/spool.sqlite3
    else:
        url, prefix = request.getfixturevalue("shared_redis"), request.getfixturevalue("unique_prefix")

        def make(**options):
            return RedisQueue.from_url(url, prefix=prefix, **options)
    make.backend = request.param
    return make


@pytest.fixture
async def spool(make_queue):
    s = make_queue()
    await s.open()
    yield s
    await s.close()


@pytest.fixture
async def sqlite_spool(tmp_path: Path):
    s = Spool(tmp_path / "spool.sqlite3")
    await s.open()
    yield s
    await s.close()


async def test_append_is_durable_across_a_new_instance(make_queue) -> None:
    s = make_queue()
    await s.open()
    await s.append([make_item(i) for i in range(3)])
    await s.close()
    again = make_queue()
    await again.open()
    events = await again.events_for_session("device-1")
    await again.close()
    assert [e["message_id"] for e in events] == ["m2", "m1", "m0"]  # most recent first
    assert all(e["state"] == "pending" and e["attempts"] == 0 for e in events)
    assert events[0]["item"]["event_type"] == "e2"


def test_path_is_a_file_or_a_data_directory(tmp_path: Path) -> None:
    assert Spool(tmp_path / "data").path == tmp_path / "data" / "spool.sqlite3"
    assert Spool(tmp_path / "data.v2").path == tmp_path / "data.v2" / "spool.sqlite3"
    assert Spool(tmp_path / "queue.db").path == tmp_path / "queue.db"
    (tmp_path / "old.db").mkdir()  # a directory that happens to end like a database
    assert Spool(tmp_path / "old.db").path == tmp_path / "old.db" / "spool.sqlite3"


async def test_the_cli_opens_the_file_the_server_writes(tmp_path: Path) -> None:
    """`edgeproxy spool` / `replay` resolve a path by the same rule as the serving spool."""
    from edgeproxy.delivery import spool_cli

    for given in (tmp_path / "data", tmp_path / "queue.sqlite"):
        spool = Spool(given)
        await spool.open()
        await spool.close()
        conn = spool_cli._cli_connect(given, readonly=True)
        try:
            assert conn.execute("PRAGMA database_list").fetchone()[2] == str(spool.path)
        finally:
            conn.close()


async def test_wal_mode_and_full_sync(sqlite_spool: Spool) -> None:
    spool = sqlite_spool
    conn = sqlite3.connect(spool.path)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()
    assert spool.synchronous == "FULL"


class BlockingFlush:
    """Stands in for os.fdatasync: records each flush and holds it until released (or fails it)."""

    def __init__(self, fail: bool = False) -> None:
        import threading

        self.calls = 0
        self.release = threading.Event()
        self.fail = fail

    def __call__(self, fd: int) -> None:
        self.calls += 1
        assert self.release.wait(10)
        if self.fail:
            raise OSError(5, "Input/output error")


@contextlib.asynccontextmanager
async def spool_with_flush(tmp_path: Path, monkeypatch, flush: BlockingFlush, **kwargs):
    """An open Spool whose WAL flushes go through ``flush``; released and closed afterwards."""
    monkeypatch.setattr(os, "fdatasync", flush)
    s = Spool(tmp_path, **kwargs)
    await s.open()
    try:
        yield s
    finally:
        flush.release.set()
        await s.close()


async def test_an_append_is_acknowledged_only_after_the_wal_is_flushed(tmp_path: Path, monkeypatch) -> None:
    """power_loss durability: committed is not enough, the WAL must be on disk before the 200."""
    flush = BlockingFlush()
    async with spool_with_flush(tmp_path, monkeypatch, flush) as s:
        task = asyncio.ensure_future(s.append([make_item(1)]))
        await asyncio.sleep(0.2)
        assert not task.done() and flush.calls >= 1
        other = sqlite3.connect(s.path)
        assert stored(other, where="message_id='m1'") == [("m1",)]  # committed
        other.close()
        flush.release.set()
        await asyncio.wait_for(task, 5)
        assert (await s.stats())["depth"] == 1  # reads and the worker's calls never wait for a flush


async def test_appends_made_during_a_flush_share_the_next_transaction(tmp_path: Path, monkeypatch) -> None:
    """They could not be acknowledged before the next flush anyway: committing each on its own
    (a commit costs about as much CPU as the rest of a single-event call's spool work) bought
    nothing. Held back, they are committed together when the flush in progress ends."""
    flush = BlockingFlush()
    async with spool_with_flush(tmp_path, monkeypatch, flush) as s:
        first = asyncio.ensure_future(s.append([make_item(0)]))
        await asyncio.sleep(0.1)
        assert flush.calls == 1 and not first.done()  # the flush of the first commit is running
        assert (await s.stats())["depth"] == 1  # reads are not held back by a flush
        before = s.transactions
        later = []
        for i in range(1, 4):  # one per turn of the loop: each used to be a transaction of its own
            later.append(asyncio.ensure_future(s.append([make_item(i)])))
            await asyncio.sleep(0.02)
        assert s.transactions == before and not any(t.done() for t in later)
        flush.release.set()
        await asyncio.wait_for(asyncio.gather(first, *later), 5)
        assert s.transactions == before + 1  # the three appends: one transaction
        assert (await s.stats())["depth"] == 4
        assert flush.calls == 2


async def test_a_failed_flush_fails_the_append(tmp_path: Path, monkeypatch) -> None:
    flush = BlockingFlush(fail=True)
    flush.release.set()
    async with spool_with_flush(tmp_path, monkeypatch, flush) as s:
        with pytest.raises(SpoolUnavailable, match="flush to disk failed.*Input/output error"):
            await s.append([make_item(1)])


async def test_process_crash_durability_acknowledges_at_commit(tmp_path: Path, monkeypatch) -> None:
    flush = BlockingFlush()  # never released: an append that waited for it would time out
    async with spool_with_flush(tmp_path, monkeypatch, flush, synchronous="NORMAL") as s:
        await asyncio.wait_for(asyncio.gather(*(s.append([make_item(i)]) for i in range(20))), 5)
        assert flush.calls == 0


async def test_a_write_lock_held_elsewhere_delays_appends_without_blocking_the_loop(sqlite_spool: Spool) -> None:
    """The CLI's replay takes the write lock: appends wait for it, the event loop keeps running."""
    other = sqlite3.connect(sqlite_spool.path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    tick_task = asyncio.ensure_future(ticker())
    task = asyncio.ensure_future(sqlite_spool.append([make_item(1)]))
    await asyncio.sleep(0.3)
    assert not task.done() and ticks >= 10
    other.execute("COMMIT")
    other.close()
    await asyncio.wait_for(task, 5)
    tick_task.cancel()
    assert (await sqlite_spool.stats())["depth"] == 1


@pytest.mark.parametrize("synchronous", ["FULL", "NORMAL"])
async def test_the_wal_is_checkpointed_into_the_database_in_the_background(tmp_path: Path, monkeypatch, synchronous) -> None:

    monkeypatch.setattr(spool_sync, "CHECKPOINT_EVERY_S", 0.05)
    s = Spool(tmp_path, synchronous=synchronous)
    await s.open()
    try:
        await asyncio.gather(*(s.append([make_item(i)]) for i in range(10)))
        seen = 0
        for _ in range(100):  # bounded: up to 5 s
            main_file_only = sqlite3.connect(f"file:{s.path}?immutable=1", uri=True)  # ignores the WAL
            try:
                seen = len(stored(main_file_only))
            except sqlite3.DatabaseError:  # no tables checkpointed yet, or caught mid-checkpoint
                seen = 0  # (immutable=1 takes no lock: a page may be half copied while we read)
            main_file_only.close()
            if seen == 10:
                break
            await asyncio.sleep(0.05)
        assert seen == 10
    finally:
        await s.close()


async def test_a_running_checkpoint_does_not_hold_up_acknowledgements(tmp_path: Path, monkeypatch) -> None:
    """Flushes and checkpoints have threads of their own: a slow checkpoint (10-22 ms under
    load) must not make the appends committed meanwhile wait for it."""
    import threading


    entered, release = threading.Event(), threading.Event()

    def slow_checkpoint(self, conn) -> None:
        entered.set()
        release.wait(10)  # bounded: the test releases it in any case

    monkeypatch.setattr(spool_sync, "CHECKPOINT_EVERY_S", 0.02)
    monkeypatch.setattr(spool_sync.Syncer, "_checkpoint", slow_checkpoint)
    s = Spool(tmp_path, synchronous="FULL")
    await s.open()
    try:
        await s.append([make_item(1)])  # a commit: the next checkpoint has work
        assert await asyncio.to_thread(entered.wait, 5), "no checkpoint started"
        await asyncio.wait_for(s.append([make_item(2)]), 5)  # flushed and acknowledged mid-checkpoint
        assert (await s.stats())["depth"] == 2
    finally:
        release.set()
        await s.close()


async def test_concurrent_appends_all_land(spool) -> None:
    await asyncio.gather(*(spool.append([make_item(i)]) for i in range(200)))
    assert (await spool.stats())["depth"] == 200
    [group] = await spool.due_groups()
    assert group.count == 200


async def test_concurrent_appends_share_transactions(sqlite_spool: Spool) -> None:
    spool = sqlite_spool
    before = spool.transactions
    await asyncio.gather(*(spool.append([make_item(i)]) for i in range(200)))
    used = spool.transactions - before
    assert 1 <= used < 200
    assert (await spool.stats())["depth"] == 200


async def test_one_failing_operation_does_not_fail_its_group(sqlite_spool: Spool) -> None:
    spool = sqlite_spool
    def boom(conn):
        conn.execute("INSERT INTO items (message_id, received_ms, state) VALUES ('x', 0, 'pending')")
        raise RuntimeError("bad operation")

    results = await asyncio.gather(
        spool.append([make_item(1)]), spool._submit(boom), spool.append([make_item(2)]), return_exceptions=True
    )
    assert results[0] is None and results[2] is None
    assert isinstance(results[1], RuntimeError)
    ids = [e["message_id"] for e in await spool.events_for_session("device-1")]
    assert ids == ["m2", "m1"]  # the failing operation's own insert was rolled back
    assert (await spool.stats())["depth"] == 2


async def test_appends_merged_into_one_insert_still_fail_alone(sqlite_spool: Spool) -> None:
    """Appends queued together are inserted together; if that fails, each is tried on its own."""
    spool = sqlite_spool
    bad = make_item(99)
    object.__setattr__(bad, "message_id", None)  # NOT NULL: fails inside SQLite, not while encoding
    before = spool.transactions
    results = await asyncio.gather(
        *(spool.append([make_item(i)]) for i in range(3)), spool.append([bad]), spool.append([make_item(3), make_item(4)]),
        return_exceptions=True,
    )
    assert results[:3] == [None, None, None] and results[4] is None
    assert isinstance(results[3], SpoolUnavailable) and "NOT NULL" in str(results[3])
    ids = sorted(e["message_id"] for e in await spool.events_for_session("device-1"))
    assert ids == ["m0", "m1", "m2", "m3", "m4"]
    assert spool.transactions - before <= 2  # merged, not one transaction per append


async def test_claim_marks_inflight_and_reopen_reclaims(tmp_path: Path) -> None:
    s = Spool(tmp_path)
    await s.open()
    await s.append([make_item(i) for i in range(5)])
    [group] = await s.due_groups()
    assert (group.endpoint, group.count, group.options) == ("httpapi", 5, None)
    claimed = await s.claim(group.group_key, limit=3, max_bytes=10**6)
    assert [c.message_id for c in claimed] == ["m0", "m1", "m2"]
    stats = await s.stats()
    assert (stats["depth"], stats["in_flight"]) == (2, 3)
    raw = sqlite3.connect(s.path)
    assert len(stored(raw)) == 5 and raw.execute("SELECT COUNT(*) FROM items").fetchone()[0] == 0
    assert raw.execute("SELECT COUNT(*) FROM stream_acks").fetchone()[0] == 0  # in flight is in memory: a claim writes nothing
    raw.close()
    await s.close()  # as if the process died with the batch in flight
    again = Spool(tmp_path)
    await again.open()
    stats = await again.stats()
    await again.close()
    assert (stats["depth"], stats["in_flight"]) == (5, 0)


async def test_groups_split_by_endpoint_and_options(spool: Spool) -> None:
    await spool.append([
        make_item(1), make_item(2, options={"min_id_length": 1}), make_item(3, endpoint="identify"),
        make_item(4, options={"min_id_length": 1}),
    ])
    groups = {g.group_key: g for g in await spool.due_groups()}
    assert groups[group_key("httpapi", None)].count == 1
    assert groups[group_key("httpapi", {"min_id_length": 1})].count == 2
    assert groups[group_key("httpapi", {"min_id_length": 1})].options == {"min_id_length": 1}
    assert groups[group_key("identify", None)].count == 1


async def test_claim_respects_the_byte_budget(spool: Spool) -> None:
    await spool.append([make_item(i) for i in range(10)])
    [group] = await spool.due_groups()
    one = (await spool.claim(group.group_key, limit=1, max_bytes=10**6))[0].size
    claimed = await spool.claim(group.group_key, limit=100, max_bytes=3 * (one + 1))
    assert len(claimed) == 3


async def test_a_claim_hands_out_the_stored_bytes_and_the_options_parsed(tmp_path: Path) -> None:
    """A request body is spliced from the claimed bytes: a row whose item some other tool
    wrote as TEXT must still come out as bytes, and the group's options as a mapping."""
    s = Spool(tmp_path)
    await s.open()
    try:
        await s.append([make_item(i, options={"min_id_length": 1}) for i in range(3)])
        raw = sqlite3.connect(s.path, isolation_level=None)
        table = table_of(raw, "m1")
        raw.execute(f"UPDATE {table} SET item = CAST(item AS TEXT) WHERE message_id = 'm1'")
        assert raw.execute(f"SELECT typeof(item) FROM {table} WHERE message_id = 'm1'").fetchone() == ("text",)
        raw.close()
        [group] = await s.due_groups()
        claimed = await s.claim(group.group_key, limit=10, max_bytes=10**6)
    finally:
        await s.close()
    assert [c.message_id for c in claimed] == ["m0", "m1", "m2"]
    assert [type(c.raw) for c in claimed] == [bytes, bytes, bytes]
    assert [c.item["insert_id"] for c in claimed] == ["m0", "m1", "m2"]
    assert [c.options for c in claimed] == [{"min_id_length": 1}] * 3


async def test_form_items_are_sized_url_encoded(spool: Spool) -> None:
    await spool.append([make_item(1, endpoint="identify"), make_item(2)])
    groups = {g.endpoint: g for g in await spool.due_groups()}
    form = (await spool.claim(groups["identify"].group_key, limit=1, max_bytes=10**6))[0]
    plain = (await spool.claim(groups["httpapi"].group_key, limit=1, max_bytes=10**6))[0]
    assert form.size > plain.size  # quotes and braces are percent-encoded in a form body


async def test_settle_ack_retry_dead_and_response_log(spool: Spool) -> None:
    await spool.append([make_item(i) for i in range(3)])
    [group] = await spool.due_groups()
    a, b, c = await spool.claim(group.group_key, limit=10, max_bytes=10**6)
    later = now_ms() + 60_000
    await spool.settle(
        ack=[a.row_id], retry=[([b.row_id], later, "HTTP 503")], dead={c.row_id: "Invalid field values (time)"},
        response=("httpapi", 400, 3, '{"code":400}'),
    )
    events = {e["message_id"]: e for e in await spool.events_for_session("device-1")}
    assert events["m0"]["state"] == "delivered" and events["m0"]["delivered_ms"]
    assert events["m1"]["state"] == "pending" and events["m1"]["attempts"] == 1
    assert events["m1"]["last_error"] == "HTTP 503" and events["m1"]["next_attempt_ms"] == later
    assert events["m2"]["state"] == "dead"
    assert await spool.due_groups() == []  # the retry is not due yet
    assert await spool.next_attempt_ms() == later
    stats = await spool.stats()
    assert (stats["depth"], stats["retrying"], stats["delivered"], stats["dead"]) == (1, 1, 1, 1)
    [dead] = await spool.dead_letters()
    assert dead["reason"] == "Invalid field values (time)" and dead["item"]["event_type"] == "e2"
    [resp] = await spool.recent_responses()
    assert (resp["endpoint"], resp["status"], resp["items"], resp["body"]) == ("httpapi", 400, 3, '{"code":400}')


async def test_release_returns_rows_without_counting_an_attempt(spool: Spool) -> None:
    await spool.append([make_item(1)])
    [group] = await spool.due_groups()
    [c] = await spool.claim(group.group_key, limit=10, max_bytes=10**6)
    await spool.release([c.row_id])
    [e] = await spool.events_for_session("device-1")
    assert (e["state"], e["attempts"]) == ("pending", 0)


async def test_delivered_rows_are_pruned_to_retention(make_queue) -> None:
    """The newest ``retention`` delivered rows stay for /debug; the oldest go (the SQLite spool
    a segment at a time, so it keeps up to one segment more: MIN_SEGMENT_ROWS at this size)."""
    s = make_queue(retention=5)
    await s.open()
    await s.append([make_item(i) for i in range(130)])  # three segments of 64, 64 and 2 rows
    [group] = await s.due_groups()
    claimed = await s.claim(group.group_key, limit=200, max_bytes=10**6)
    await s.ack([c.row_id for c in claimed])
    events = await s.events_for_session("device-1", limit=200)
    await s.close()
    ids = [e["message_id"] for e in events]
    assert ids[:5] == [f"m{i}" for i in range(129, 124, -1)] and {e["state"] for e in events} == {"delivered"}
    assert "m0" not in ids and len(ids) <= 5 + spool_stream.MIN_SEGMENT_ROWS


async def test_settled_segments_go_whole_one_per_transaction(tmp_path: Path) -> None:
    """The stream keeps delivered rows a segment at a time: a segment goes, in a transaction of
    its own, once every row in it is settled and the newer segments hold ``retention``
    delivered rows; a segment with one row still pending stays, however old."""
    s = Spool(tmp_path, retention=256)  # segments of 64 rows
    await s.open()
    try:
        await s.append([make_item(i) for i in range(640)])  # ten segments
        [group] = await s.due_groups()
        first = await s.claim(group.group_key, limit=1, max_bytes=10**6)  # m0, answered last
        before = s.transactions
        for _ in range(20):
            claimed = await s.claim(group.group_key, limit=32, max_bytes=10**6)
            await s.ack([c.row_id for c in claimed])
        assert s._stream.dropped == 0  # every segment waits for the oldest's m0
        assert (await s.stats())["delivered"] == 639
        await s.ack([first[0].row_id])
        dropped = s._stream.dropped
        stats = await s.stats()
        events = await s.events_for_session("device-1", limit=1000)
    finally:
        await s.close()
    # Six go: the four segments left hold 256 delivered rows, and a fifth would leave 192.
    assert dropped == 6 and s.transactions - before >= 20 + 1 + 6  # one transaction per segment emptied
    assert stats["delivered"] == 256 and stats["depth"] == 0
    assert events[-1]["message_id"] == "m384" and len(events) == 256
    reopened = Spool(tmp_path, retention=256)  # the cursor is on disk: nothing is due again
    await reopened.open()
    try:
        assert await reopened.due_groups() == [] and (await reopened.stats())["delivered"] == 256
    finally:
        await reopened.close()


async def test_side_table_rows_are_pruned_in_small_steps_and_counted_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Rows delivered after a failed attempt are the side table's: past retention plus the
    slack, the oldest go PRUNE_CHUNK at a time (each step its own transaction, so appends run
    in between); the rows are counted once, then followed in memory."""
    monkeypatch.setattr(spool_budget, "PRUNE_CHUNK", 10)
    deletes: list[int] = []
    real_delete = sql.delete_oldest_delivered

    def delete(c: sqlite3.Connection, n: int) -> int:
        deletes.append(n)
        return real_delete(c, n)

    monkeypatch.setattr(sql, "delete_oldest_delivered", delete)
    s = Spool(tmp_path, retention=50)  # pruning starts past 50 + a slack of 100
    await s.open()
    try:
        await s.append([make_item(i) for i in range(400)])
        [group] = await s.due_groups()
        claimed = await s.claim(group.group_key, limit=400, max_bytes=10**6)
        await s.retry([c.row_id for c in claimed], 1, "503")  # into the side table, due again at once
        for _ in range(40):  # 40 acks of 10 rows
            claimed = await s.claim(group.group_key, limit=10, max_bytes=10**6)
            assert claimed and all(c.attempts == 1 for c in claimed)
            await s.ack([c.row_id for c in claimed])
        delivered = (await s.stats())["delivered"]
        newest = [e["message_id"] for e in await s.events_for_session("device-1", limit=3)]
    finally:
        await s.close()
    assert s._retention.counted == 1
    assert deletes and max(deletes) <= 10 and sum(deletes) == 400 - delivered
    assert 50 <= delivered <= 150 and s._retention.delivered == delivered
    assert newest == ["m399", "m398", "m397"]  # the oldest went


async def test_a_failed_prune_fails_no_settle_and_the_next_one_carries_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The acks have landed when pruning runs: a failed step is logged, and the worker is not
    told its settle failed (it would send the rows again)."""
    real_step = spool_stream.Stream.prune_step
    failures = [sqlite3.OperationalError("disk I/O error")]

    def step(self: spool_stream.Stream, c: sqlite3.Connection, **kw) -> bool:
        if failures:
            raise failures.pop()
        return real_step(self, c, **kw)

    monkeypatch.setattr(spool_stream.Stream, "prune_step", step)
    s = Spool(tmp_path, retention=0)  # every delivered row is pruned
    await s.open()
    try:
        await s.append([make_item(i) for i in range(3)])
        [group] = await s.due_groups()
        first = await s.claim(group.group_key, limit=3, max_bytes=10**6)
        await s.ack([c.row_id for c in first])  # the prune fails: no exception here
        after_failure = await s.stats()
        await s.append([make_item(i) for i in range(3, 6)])
        second = await s.claim(group.group_key, limit=3, max_bytes=10**6)
        await s.ack([c.row_id for c in second])
        after_next = await s.stats()
    finally:
        await s.close()
    assert "emptying a delivered segment failed" in caplog.text
    assert (after_failure["delivered"], after_failure["depth"]) == (3, 0)
    assert [c.message_id for c in second] == ["m3", "m4", "m5"]  # the first three were not sent again
    assert (after_next["delivered"], after_next["depth"]) == (0, 0)


async def test_a_large_ack_lands_in_pieces_and_its_rows_stay_in_flight_until_then(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The side table's acks (a row update each) past ACK_CHUNK follow in transactions of
    their own; until its own lands, a row is in flight, so a claim made meanwhile never hands
    it out a second time. (The stream's acks move a cursor: one transaction, see
    test_spool_stream.)"""
    monkeypatch.setattr(spool_module, "ACK_CHUNK", 10)
    s = Spool(tmp_path)
    await s.open()
    try:
        await s.append([make_item(i) for i in range(40)])
        [group] = await s.due_groups()
        first = await s.claim(group.group_key, limit=40, max_bytes=10**6)
        await s.retry([c.row_id for c in first], 1, "503")  # into the side table, due again at once
        claimed = await s.claim(group.group_key, limit=35, max_bytes=10**6)
        before = s.transactions
        settling = asyncio.ensure_future(s.ack([c.row_id for c in claimed]))
        await asyncio.sleep(0)  # the first piece is queued
        meanwhile = await s.claim(group.group_key, limit=100, max_bytes=10**6)
        await settling
        transactions = s.transactions - before
        stats = await s.stats()
    finally:
        await s.close()
    assert [c.message_id for c in meanwhile] == [f"m{i}" for i in range(35, 40)]
    assert transactions >= 4  # 35 acks in pieces of 10
    assert (stats["delivered"], stats["in_flight"], stats["depth"]) == (35, 5, 0)


async def test_the_oldest_delivered_rows_are_found_without_sorting(tmp_path: Path) -> None:
    s = Spool(tmp_path)
    await s.open()
    await s.close()
    conn = sqlite3.connect(s.path)
    plan = [row[-1] for row in conn.execute(f"EXPLAIN QUERY PLAN SELECT id FROM {sql._DELIVERED} ORDER BY id LIMIT 5")]
    conn.close()
    assert any("items_delivered" in step for step in plan) and not any("TEMP B-TREE" in step for step in plan)


async def test_mapping_refusals_are_dead_letters_that_replay_skips(spool: Spool) -> None:
    refused = DeadLetter("bad-1", {"type": "track", "event": ""}, "event name is empty", "device-1", 1000, now_ms())
    await spool.append([make_item(1)], dead=[refused])
    [group] = await spool.due_groups()
    [c] = await spool.claim(group.group_key, limit=10, max_bytes=10**6)
    await spool.dead_letter({c.row_id: "Request missing required field"})
    letters = {d["message_id"]: d for d in await spool.dead_letters()}
    assert letters["bad-1"]["payload"] == {"type": "track", "event": ""}
    assert letters["bad-1"]["reason"] == "event name is empty" and not letters["bad-1"]["replayable"]
    assert letters["m1"]["replayable"]
    assert await spool.replay_dead_letters() == 1
    stats = await spool.stats()
    assert (stats["depth"], stats["dead"]) == (1, 1)
    [group] = await spool.due_groups()
    [again] = await spool.claim(group.group_key, limit=10, max_bytes=10**6)
    assert again.message_id == "m1" and again.attempts == 0


async def test_events_for_one_session(spool: Spool) -> None:
    await spool.append([make_item(1, session=1), make_item(2, session=2), make_item(3, session=2, device="other")])
    assert [e["message_id"] for e in await spool.events_for_session("device-1", 2)] == ["m2"]
    assert [e["message_id"] for e in await spool.events_for_session("device-1", limit=1)] == ["m2"]


async def test_stats_reports_depth_and_sets_the_gauge(make_queue) -> None:
    metrics = Metrics()
    s = make_queue(metrics=metrics)
    await s.open()
    await s.append([make_item(i) for i in range(4)])
    stats = await s.stats()
    await s.close()
    assert stats["depth"] == 4 and stats["oldest_age_s"] >= 0
    assert metrics.registry.get_sample_value("edgeproxy_spool_depth") == 4


async def test_closed_spool_raises_unavailable(make_queue) -> None:
    s = make_queue()
    with pytest.raises(SpoolUnavailable):
        await s.append([make_item(1)])  # never opened
    await s.open()
    await s.close()
    with pytest.raises(SpoolUnavailable):
        await s.append([make_item(1)])
    assert await s.ping() is False


async def test_full_disk_raises_unavailable_and_keeps_earlier_rows(tmp_path: Path) -> None:
    s = Spool(tmp_path, max_bytes=64 * 1024)
    await s.open()
    assert await s.ping()
    big = {"event_type": "x", "device_id": "device-1", "event_properties": {"blob": "y" * 4000}}
    stored = 0
    with pytest.raises(SpoolUnavailable, match="full"):
        for i in range(100):
            await s.append([SpoolItem(f"m{i}", "httpapi", big, None, "device-1", None, None, now_ms())])
            stored += 1
    assert 0 < stored < 100
    assert (await s.stats())["depth"] == stored  # reads still work; nothing half-written
    await s.close()


async def test_corrupt_file_raises_unavailable_on_open(tmp_path: Path) -> None:
    path = tmp_path / "spool.sqlite3"
    path.write_bytes(b"this is not a database" * 100)
    with pytest.raises(SpoolUnavailable, match="cannot open"):
        await Spool(path).open()


async def test_unwritable_location_raises_unavailable_on_open(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("a file where the data directory should be")
    with pytest.raises(SpoolUnavailable):
        await Spool(blocker / "data").open()


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions")
async def test_read_only_directory_raises_unavailable(tmp_path: Path) -> None:
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        with pytest.raises(SpoolUnavailable):
            await Spool(ro).open()
    finally:
        ro.chmod(0o700)


async def test_unserialisable_item_is_a_clear_error(spool: Spool) -> None:
    bad = SpoolItem("m", "httpapi", {"when": object()}, None, "d", None, None, 0)
    with pytest.raises(ValueError, match="JSON"):
        await spool.append([bad])


async def test_cli_helpers_report_and_replay(tmp_path: Path) -> None:
    s = Spool(tmp_path)
    await s.open()
    await s.append([make_item(1), make_item(2)])
    [group] = await s.due_groups()
    claimed = await s.claim(group.group_key, limit=10, max_bytes=10**6)
    await s.dead_letter({claimed[0].row_id: "Invalid API key"})
    report = await asyncio.to_thread(spool_report, tmp_path)  # while the server still holds it open
    # In flight is the serving process's own state (in memory): to another process the row is pending.
    assert (report["depth"], report["in_flight"], report["dead"]) == (1, 0, 1)
    assert report["dead_letters"][0]["reason"] == "Invalid API key"
    assert await asyncio.to_thread(replay, tmp_path) == 1
    stats = await s.stats()
    await s.close()
    assert (stats["dead"], stats["in_flight"], stats["depth"]) == (0, 1, 1)
    closed = spool_report(tmp_path / "spool.sqlite3")  # also readable when no server holds it
    assert (closed["depth"], closed["in_flight"]) == (2, 0)  # nothing is in flight without a server
    with pytest.raises(SpoolUnavailable, match="no spool"):
        spool_report(tmp_path / "missing")


CRASH_CHILD = textwrap.dedent(
    """
    import asyncio, sys
    from pathlib import Path
    from edgeproxy.delivery.spool import Spool, SpoolItem

    async def main(path):
        spool = Spool(Path(path), synchronous="NORMAL")
        await spool.open()
        n = 0
        async def one(i):
            await spool.append([SpoolItem(f"m{i}", "httpapi", {"event_type": "e", "insert_id": f"m{i}"},
                                          None, "crash-device", None, None, 0)])
            print(f"m{i}", flush=True)  # acknowledged: must survive
        while True:
            await asyncio.gather(*(one(n + k) for k in range(20)))
            n += 20

    asyncio.run(main(sys.argv[1]))
    """
)


async def test_acknowledged_rows_survive_sigkill(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", CRASH_CHILD, str(tmp_path)], stdout=subprocess.PIPE, text=True,
        cwd=Path(__file__).resolve().parent.parent,
    )
    acked: list[str] = []
    assert proc.stdout is not None
    for _ in range(2000):  # bounded: read acknowledgements, then kill mid-stream
        line = proc.stdout.readline()
        if not line:
            break
        acked.append(line.strip())
        if len(acked) >= 500:
            break
    proc.send_signal(signal.SIGKILL)
    rest, _ = proc.communicate(timeout=30)
    acked.extend(x for x in rest.split() if x)
    assert len(acked) >= 500
    s = Spool(tmp_path)
    await s.open()
    stored = {e["message_id"] for e in await s.events_for_session("crash-device", limit=10**6)}
    await s.close()
    assert set(acked) <= stored


def big_item(i: int, state_device: str = "device-1") -> SpoolItem:
    event = {"event_type": "x", "device_id": state_device, "insert_id": f"m{i}", "event_properties": {"blob": "y" * 4000}}
    return SpoolItem(f"m{i}", "httpapi", event, None, state_device, None, None, now_ms())


async def test_full_spool_still_lets_the_worker_claim_and_settle(tmp_path: Path) -> None:
    s = Spool(tmp_path, max_bytes=256 * 1024)
    await s.open()
    try:
        stored = 0
        with pytest.raises(SpoolUnavailable, match="max_spool_size"):
            for i in range(200):
                await s.append([big_item(i)])
                stored += 1
        [group] = await s.due_groups()
        claimed = await s.claim(group.group_key, limit=1000, max_bytes=10**7)
        assert len(claimed) == stored
        # Acks, dead letters and retries need no new room: the worker never fails for a full spool.
        await s.settle(ack=[c.row_id for c in claimed[:-2]], dead={claimed[-2].row_id: ("invalid_fields", "x")},
                       retry=[([claimed[-1].row_id], now_ms(), "HTTP 503")], response=("httpapi", 200, stored, "{}"))
        # Delivered rows are only kept for /debug: they give their room back, so appends resume.
        await s.append([big_item(1000)])
        stats = await s.stats()
    finally:
        await s.close()
    assert (stats["depth"], stats["dead"]) == (2, 1)


async def test_room_is_measured_now_and_then_and_the_cap_still_holds(tmp_path: Path) -> None:
    """The pages-in-use query runs when the charged estimate runs out, not in every transaction;
    the spool still stops before its budget (each append is charged more than it occupies)."""
    budget = 512 * 1024
    s = Spool(tmp_path, max_bytes=budget)
    await s.open()
    try:
        for i in range(20):  # ~90 KB of a 512 KB budget: one measurement covers them all
            await s.append([big_item(i)])
        assert s._room.measured == 1
        stored = 20
        with pytest.raises(SpoolUnavailable, match="max_spool_size"):
            for i in range(20, 400):
                await s.append([big_item(i)])
                stored += 1
        measured = s._room.measured
        used = await s._submit(sql.used_bytes)
    finally:
        await s.close()
    assert 20 < stored < 400 and measured < stored / 4
    assert used < budget + 8 * 1024  # at most the one append admitted at the last measurement


async def test_no_budget_means_no_cap(tmp_path: Path) -> None:
    s = Spool(tmp_path, max_bytes=None)
    await s.open()
    await s.append([big_item(i) for i in range(100)])  # ~400 KB, more than the budgets above
    assert (await s.stats())["depth"] == 100
    await s.close()


async def test_dead_letters_by_reason_and_filtered_replay(tmp_path: Path) -> None:
    s = Spool(tmp_path)
    await s.open()
    await dead_letter_mix(s)
    await s.close()
    report = spool_report(tmp_path)
    assert report["dead_by_reason"] == {"invalid_api_key": 2, "invalid_fields": 2, "mapping": 1, "other": 1}
    assert {d["message_id"]: d["reason_code"] for d in report["dead_letters"]}["m2"] == "invalid_api_key"
    # Filters combine; the mapping's refusal has no item and is never replayed.
    assert replay(tmp_path, ReplayFilter(reasons=("invalid_api_key",), endpoint="identify")) == 1
    assert replay(tmp_path, ReplayFilter(message_ids=("m0", "m2"))) == 2
    assert replay(tmp_path, ReplayFilter(reasons=("mapping",))) == 0
    assert replay(tmp_path, ReplayFilter(limit=1)) == 1  # the oldest: m1
    after = spool_report(tmp_path)
    assert after["dead_by_reason"] == {"mapping": 1, "other": 1}
    assert after["depth"] == 4


async def dead_letter_mix(q) -> None:
    """Five dead letters with codes (one a bare text: "other") and a mapping refusal, on any queue."""
    await q.append([make_item(i) for i in range(4)] + [make_item(9, endpoint="identify")],
                   dead=[DeadLetter("refused", {"type": "track"}, "event name is empty", "device-1", None, now_ms())])
    groups = {g.endpoint: g for g in await q.due_groups()}
    events = await q.claim(groups["httpapi"].group_key, limit=10, max_bytes=10**6)
    [ident] = await q.claim(groups["identify"].group_key, limit=10, max_bytes=10**6)
    await q.dead_letter({
        events[0].row_id: ("invalid_fields", "Invalid field values (time)"),
        events[1].row_id: ("invalid_fields", "Invalid field values (time)"),
        events[2].row_id: ("invalid_api_key", "Invalid API key"),
        ident.row_id: ("invalid_api_key", "Invalid API key"),
        events[3].row_id: "a bare text reason",
    })


async def test_dead_letters_keep_the_reason_code_apart_from_its_text(spool) -> None:
    await dead_letter_mix(spool)
    letters = {d["message_id"]: d for d in await spool.dead_letters()}
    assert {m: (d["reason_code"], d["reason"]) for m, d in letters.items()} == {
        "m0": ("invalid_fields", "Invalid field values (time)"), "m1": ("invalid_fields", "Invalid field values (time)"),
        "m2": ("invalid_api_key", "Invalid API key"), "m9": ("invalid_api_key", "Invalid API key"),
        "m3": ("other", "a bare text reason"), "refused": ("mapping", "event name is empty")}
    by_reason = await spool.dead_by_reason()
    assert list(by_reason.items()) == [("invalid_api_key", 2), ("invalid_fields", 2), ("mapping", 1), ("other", 1)]
    assert (await spool.stats())["dead"] == 6


async def test_replay_filters_by_reason_endpoint_message_id_and_limit(spool) -> None:
    await dead_letter_mix(spool)
    assert await spool.replay_dead_letters(ReplayFilter(reasons=("invalid_api_key",), endpoint="identify")) == 1
    assert await spool.replay_dead_letters(ReplayFilter(message_ids=("m0", "m2"))) == 2
    assert await spool.replay_dead_letters(ReplayFilter(reasons=("mapping",))) == 0  # nothing to send
    assert await spool.replay_dead_letters(ReplayFilter(reasons=("no_such_code",))) == 0
    assert await spool.replay_dead_letters(ReplayFilter(limit=1)) == 1  # the oldest left: m1, not m3
    assert await spool.dead_by_reason() == {"mapping": 1, "other": 1}
    assert {d["message_id"] for d in await spool.dead_letters()} == {"m3", "refused"}
    stats = await spool.stats()
    assert (stats["depth"], stats["dead"]) == (4, 2)
    again = {e["message_id"]: e for e in await spool.events_for_session("device-1") if e["state"] == "pending"}
    assert set(again) == {"m0", "m1", "m2", "m9"}
    assert again["m1"]["attempts"] == 0 and again["m1"]["last_error"] == "replayed: Invalid field values (time)"
    assert await spool.replay_dead_letters() == 1  # m3: the refusal stays
    assert await spool.dead_by_reason() == {"mapping": 1}


async def test_in_flight_and_retrying_views(spool) -> None:
    await spool.append([make_item(i) for i in range(5)])
    [group] = await spool.due_groups()
    claimed = await spool.claim(group.group_key, limit=10, max_bytes=10**6)
    later = now_ms() + 60_000
    await spool.settle(ack=[claimed[4].row_id], retry=[([claimed[3].row_id], later, "HTTP 503")])
    flying = await spool.undelivered("in_flight", limit=2)
    assert [(e["message_id"], e["state"], e["attempts"]) for e in flying] == [("m0", "inflight", 0), ("m1", "inflight", 0)]
    assert flying[0]["device_id"] == "device-1" and flying[0]["endpoint"] == "httpapi"
    assert flying[0]["item"]["event_type"] == "e0"
    assert [e["message_id"] for e in await spool.undelivered("in_flight")] == ["m0", "m1", "m2"]
    [waiting] = await spool.undelivered("retrying")
    assert (waiting["message_id"], waiting["state"], waiting["attempts"]) == ("m3", "pending", 1)
    assert (waiting["last_error"], waiting["next_attempt_ms"], waiting["device_id"]) == ("HTTP 503", later, "device-1")
    assert (await spool.stats())["retrying"] == 1
    await spool.release([c.row_id for c in claimed[:3]])
    assert await spool.undelivered("in_flight") == []
    with pytest.raises(ValueError):
        await spool.undelivered("dead")


def _backlog_conn(path: Path, pending: int) -> sqlite3.Connection:
    """A spool file holding ``pending`` due rows in two groups, plus a few rows waiting for a retry."""
    from edgeproxy.delivery import spool_sql
    from edgeproxy.delivery.spool_schema import migrate

    conn = sqlite3.connect(path, isolation_level=None)
    conn.row_factory = sqlite3.Row  # as the spool's own connection
    migrate(conn, path)
    event = b'{"event_type":"e"}'
    rows = [(f"m{i}", "httpapi", group_key("httpapi", {"min_id_length": 1} if i % 10 == 0 else None), event,
             b'{"min_id_length":1}' if i % 10 == 0 else None, "d", None, 1, 1_000 + i, len(event), "amplitude", "default")
            for i in range(pending)]
    conn.execute("BEGIN")
    spool_sql.insert_items(conn, 1, rows)
    conn.execute("UPDATE items SET attempts=1, next_attempt_ms=? WHERE id <= 5", (10**12,))
    conn.execute("COMMIT")
    return conn


def test_a_delivery_cycle_reads_the_same_amount_however_deep_the_backlog(tmp_path: Path) -> None:
    """due_groups and next_attempt_ms cost a few index seeks plus at most DUE_COUNT_CAP rows per group,
    not a walk of every pending row: counted in SQLite VM steps (deterministic), not in time."""
    from edgeproxy.delivery import spool_sql

    def steps(pending: int) -> tuple[int, list]:
        conn = _backlog_conn(tmp_path / f"backlog-{pending}.sqlite3", pending)
        counted = [0]

        def tick() -> int:
            counted[0] += 1
            return 0

        conn.set_progress_handler(tick, 100)
        groups = spool_sql.due_groups(conn, 10**10)
        assert spool_sql.next_attempt_ms(conn, 10**10) == 10**12
        conn.set_progress_handler(None, 0)
        conn.close()
        return counted[0], groups

    small, small_groups = steps(30_000)  # both groups hold more than the cap in both files
    big, big_groups = steps(120_000)
    assert big <= small * 1.1, (small, big)  # the old GROUP BY over all pending rows read 4x more
    by_key = {g.group_key: g for g in big_groups}
    plain, opts = by_key[group_key("httpapi", None)], by_key[group_key("httpapi", {"min_id_length": 1})]
    assert plain.count == opts.count == spool_sql.DUE_COUNT_CAP  # counted up to the cap, no further
    assert plain.oldest_ms == 1_000 + 5 and opts.oldest_ms == 1_000 + 10  # the first five rows wait for a retry
    assert opts.options == {"min_id_length": 1} and plain.options is None and plain.endpoint == "httpapi"
    assert [g.oldest_ms for g in small_groups] == [g.oldest_ms for g in big_groups]
    few = spool_sql.due_groups(_backlog_conn(tmp_path / "few.sqlite3", 300), 10**10)
    assert sorted(g.count for g in few) == [30 - 1, 270 - 4]  # under the cap: exact (rows 1-5 wait)


async def test_stats_oldest_age_covers_every_group_and_in_flight_rows(sqlite_spool: Spool) -> None:
    t = now_ms()
    old = SpoolItem("old", "httpapi", {"event_type": "x"}, {"min_id_length": 1}, "d", None, 1, t - 60_000)
    await sqlite_spool.append([make_item(1), old, make_item(2)])
    group = group_key("httpapi", {"min_id_length": 1})
    stats = await sqlite_spool.stats()
    assert 59 <= stats["oldest_age_s"] <= 70 and stats["depth"] == 3
    [claimed] = await sqlite_spool.claim(group, limit=10, max_bytes=10**6)
    stats = await sqlite_spool.stats()
    assert 59 <= stats["oldest_age_s"] <= 70 and stats["in_flight"] == 1 and stats["depth"] == 2
    await sqlite_spool.ack([claimed.row_id])
    assert (await sqlite_spool.stats())["oldest_age_s"] < 30


async def test_an_unexpected_error_in_a_transaction_fails_its_calls_instead_of_hanging(sqlite_spool: Spool, monkeypatch) -> None:
    def broken(conn, jobs):
        raise RuntimeError("a bug in the transaction code")

    monkeypatch.setattr(sqlite_spool._commit, "_execute", broken)
    with pytest.raises(SpoolUnavailable, match="a bug in the transaction code"):
        await asyncio.wait_for(sqlite_spool.append([make_item(1)]), 5)
    monkeypatch.undo()
    await sqlite_spool.append([make_item(2)])  # the spool carries on


async def test_the_wal_starts_over_under_steady_writes(tmp_path: Path, monkeypatch) -> None:
    """Checkpoints run while the loop keeps writing; a long WAL is restarted, so it stays bounded."""

    monkeypatch.setattr(spool_sync, "CHECKPOINT_EVERY_S", 0.02)
    monkeypatch.setattr(spool_sync, "WAL_RESTART_PAGES", 64)  # PASSIVE alone: 250 MB of WAL here
    s = Spool(tmp_path, synchronous="NORMAL")
    await s.open()
    wal = Path(f"{s.path}-wal")
    largest = 0
    try:
        blob = "y" * 2000
        deadline = asyncio.get_running_loop().time() + 30.0
        i = 0
        while i < 1000 and asyncio.get_running_loop().time() < deadline:  # bounded: 40 MB or 30 s
            event = {"event_type": "x", "device_id": "d", "event_properties": {"blob": blob}}
            await asyncio.gather(*(s.append([SpoolItem(f"m{i}-{j}", "httpapi", event, None, "d", None, 1, now_ms())])
                                   for j in range(20)))
            i += 1
            largest = max(largest, wal.stat().st_size)
        written = i * 20 * 2000
    finally:
        await s.close()
    assert written >= 16 * 1024 * 1024, written  # enough that an unbounded WAL shows
    assert largest < written / 2, (largest, written)  # restarted: 5-11 MB here; never restarted: ~3x written


async def test_in_flight_and_the_rows_agree_within_one_transaction(sqlite_spool: Spool) -> None:
    """/debug reads its sections one after another: a settle landing among them must not show
    an event both in flight and retrying (in flight is kept in memory, the rows on disk)."""
    await sqlite_spool.append([make_item(1)])
    [group] = await sqlite_spool.due_groups()
    [claimed] = await sqlite_spool.claim(group.group_key, limit=10, max_bytes=10**6)
    before, _, flying, retrying = await asyncio.gather(
        sqlite_spool.undelivered("in_flight"),
        sqlite_spool.retry([claimed.row_id], now_ms() + 60_000, "HTTP 503"),
        sqlite_spool.undelivered("in_flight"),
        sqlite_spool.undelivered("retrying"),
    )
    assert [e["message_id"] for e in before] == ["m1"]
    assert flying == [] and [e["message_id"] for e in retrying] == ["m1"]


async def test_forget_zeroes_the_persons_rows_on_disk(tmp_path: Path) -> None:
    """The spool runs with secure_delete FAST (pruning delivered rows then writes no page twice),
    which leaves freed pages as they were; what ``forget`` deletes is zeroed all the same. A
    payload spanning overflow pages is the case FAST would leave readable in the file."""
    marker = b"FORGET-ME-" * 2000  # 20 KB: stored in overflow pages, freed whole on delete
    spool = Spool(tmp_path)
    await spool.open()
    try:
        keep = make_item(1, device="dev-keep")
        gone = make_item(2, device="dev-gone")
        gone.item["event_properties"] = {"note": marker.decode()}
        await spool.append([keep, gone])
        assert (await spool.forget(["dev-gone"], None)) == {"pending": 1}
        await spool._submit(lambda c: c.execute("SELECT 1").fetchone())  # a transaction after the delete
    finally:
        await spool.close()
    conn = sqlite3.connect(spool.path)
    assert conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0] == 0
    conn.close()
    data = spool.path.read_bytes() + (spool.path.with_name(spool.path.name + "-wal").read_bytes()
                                      if spool.path.with_name(spool.path.name + "-wal").exists() else b"")
    assert b"FORGET-ME-" not in data
