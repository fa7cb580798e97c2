"""The Redis delivery queue's own guarantees, on a real redis-server.

The behaviours it shares with the SQLite spool are tested against both backends in
test_spool.py and test_delivery.py; here is what only a shared queue has: a consumer killed
with items in flight, a late verdict after a takeover, which process holds what, the CLI,
and Redis being unreachable.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import orjson
import pytest
from fake_amplitude import FakeAmplitude
from redis_server import free_port, redis_server
from test_delivery import event, make_settings, until

from edgeproxy.delivery.redis_queue import RedisQueue
from edgeproxy.delivery.spool import ReplayFilter, SpoolItem, SpoolUnavailable, now_ms
from edgeproxy.delivery.worker import DeliveryWorker
from edgeproxy.metrics import Metrics

ROOT = Path(__file__).resolve().parent.parent

DOOMED_CONSUMER = textwrap.dedent(
    """
    import asyncio, sys
    from edgeproxy.delivery.redis_queue import RedisQueue

    async def main(url, prefix):
        queue = RedisQueue.from_url(url, prefix=prefix, consumer="doomed")
        await queue.open()
        [group] = await queue.due_groups()
        claimed = await queue.claim(group.group_key, limit=1000, max_bytes=10**6)
        print(len(claimed), flush=True)  # in flight now; the verdict never comes
        await asyncio.sleep(3600)

    asyncio.run(main(sys.argv[1], sys.argv[2]))
    """
)


async def test_items_a_killed_consumer_held_are_delivered_by_another_process(
    fake_amplitude: FakeAmplitude, tmp_path: Path, shared_redis: str, unique_prefix: str
) -> None:
    producer = RedisQueue.from_url(shared_redis, prefix=unique_prefix)
    await producer.open()
    await producer.append([event(i) for i in range(50)])
    doomed = subprocess.Popen([sys.executable, "-c", DOOMED_CONSUMER, shared_redis, unique_prefix],
                              stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert doomed.stdout is not None
        assert doomed.stdout.readline().strip() == "50"
        assert (await producer.stats())["in_flight"] == 50
    finally:
        doomed.send_signal(signal.SIGKILL)
        doomed.wait(timeout=30)
    await producer.close()

    metrics = Metrics()
    survivor = RedisQueue.from_url(shared_redis, prefix=unique_prefix, metrics=metrics, claim_idle=0.3)
    await survivor.open()
    worker = DeliveryWorker(survivor, make_settings(fake_amplitude.base_url, tmp_path), metrics)
    await worker.start()
    try:
        async def settled() -> bool:
            s = await survivor.stats()
            return s["delivered"] == 50 and s["in_flight"] == 0 and s["depth"] == 0
        await until(settled, "the killed consumer's 50 items delivered by the survivor")
    finally:
        await worker.stop(grace=1.0)
        await survivor.close()
    ids = sorted(e["insert_id"] for e in fake_amplitude.events)
    assert ids == sorted(f"msg-device-0001-{i}" for i in range(50))


async def test_a_late_verdict_after_a_takeover_changes_nothing(shared_redis: str, unique_prefix: str) -> None:
    slow = RedisQueue.from_url(shared_redis, prefix=unique_prefix, claim_idle=0.05)
    other = RedisQueue.from_url(shared_redis, prefix=unique_prefix, claim_idle=0.05)
    await slow.open()
    await other.open()
    try:
        await slow.append([event(i) for i in range(3)])
        [group] = await slow.due_groups()
        held = await slow.claim(group.group_key, limit=10, max_bytes=10**6)
        await asyncio.sleep(0.1)
        await other.due_groups()  # idle past claim_idle: taken over, back in the stream
        assert (await other.stats())["depth"] == 3
        await slow.settle(ack=[c.row_id for c in held])  # the slow worker's verdict arrives late
        stats = await other.stats()
        assert (stats["depth"], stats["delivered"], stats["in_flight"]) == (3, 0, 0)
        [group] = await other.due_groups()
        again = await other.claim(group.group_key, limit=10, max_bytes=10**6)
        assert [c.message_id for c in again] == [c.message_id for c in held]
    finally:
        await slow.close()
        await other.close()


async def test_a_busy_worker_keeps_its_own_slow_batch(shared_redis: str, unique_prefix: str) -> None:
    queue = RedisQueue.from_url(shared_redis, prefix=unique_prefix, claim_idle=0.05)
    await queue.open()
    try:
        await queue.append([event(1)])
        [group] = await queue.due_groups()
        [held] = await queue.claim(group.group_key, limit=10, max_bytes=10**6)
        await asyncio.sleep(0.1)
        assert await queue.due_groups() == []  # its own in-flight item is not "recovered" under it
        await queue.ack([held.row_id])
        assert (await queue.stats())["delivered"] == 1
    finally:
        await queue.close()


async def test_unreachable_redis_is_unavailable_not_a_hang() -> None:
    queue = RedisQueue.from_url(f"redis://127.0.0.1:{free_port()}/0")
    with pytest.raises(SpoolUnavailable, match="cannot reach"):
        await queue.open()
    assert await queue.ping() is False


async def test_redis_going_away_makes_appends_unavailable(tmp_path: Path) -> None:
    with redis_server(tmp_path) as url:
        queue = RedisQueue.from_url(url)
        await queue.open()
        await queue.append([event(1)])
    with pytest.raises(SpoolUnavailable):
        await queue.append([event(2)])
    assert await queue.ping() is False
    await queue.close()


async def test_min_replicas_not_met_refuses_the_append(shared_redis: str, unique_prefix: str) -> None:
    queue = RedisQueue.from_url(shared_redis, prefix=unique_prefix, min_replicas=1)
    await queue.open()
    try:
        with pytest.raises(SpoolUnavailable, match="0 of 1 Redis replicas"):
            await queue.append([event(1)])
    finally:
        await queue.close()


async def test_in_flight_names_the_process_holding_each_item_and_retrying_is_the_delayed_set(
    shared_redis: str, unique_prefix: str
) -> None:
    first = RedisQueue.from_url(shared_redis, prefix=unique_prefix, consumer="proc-a")
    second = RedisQueue.from_url(shared_redis, prefix=unique_prefix, consumer="proc-b")
    await first.open()
    await second.open()
    try:
        await first.append([event(i) for i in range(4)])
        [group] = await first.due_groups()
        [a0, a1] = await first.claim(group.group_key, limit=2, max_bytes=10**6)
        [b2, b3] = await second.claim(group.group_key, limit=2, max_bytes=10**6)
        flying = await second.undelivered("in_flight")
        assert [(e["message_id"], e["consumer"]) for e in flying] == [
            (a0.message_id, "proc-a"), (a1.message_id, "proc-a"), (b2.message_id, "proc-b"), (b3.message_id, "proc-b")]
        t = now_ms()
        # A retry after a failure, and an item held (never sent) until a 429 pause ends: both
        # wait for a due time, which is what Redis's ``retrying`` counts; soonest first.
        await first.settle(retry=[([a0.row_id], t + 90_000, "HTTP 503")], release=[([a1.row_id], t + 30_000)])
        await second.settle(ack=[b2.row_id])
        waiting = await second.undelivered("retrying")
        assert [(e["message_id"], e["attempts"], e["next_attempt_ms"]) for e in waiting] == [
            (a1.message_id, 0, t + 30_000), (a0.message_id, 1, t + 90_000)]
        assert [e["message_id"] for e in await first.undelivered("retrying", limit=1)] == [a1.message_id]
        assert [e["consumer"] for e in await first.undelivered("in_flight")] == ["proc-b"]
        stats = await first.stats()
        assert (stats["in_flight"], stats["retrying"], stats["delivered"]) == (1, 2, 1)
    finally:
        await first.close()
        await second.close()


async def test_dead_letters_from_before_reason_codes_count_as_other(shared_redis: str, unique_prefix: str) -> None:
    """A record dead-lettered by an edgeproxy without codes (only ``last_error``) stays readable and replayable."""
    queue = RedisQueue.from_url(shared_redis, prefix=unique_prefix)
    await queue.open()
    try:
        await queue.append([event(1)])
        [group] = await queue.due_groups()
        [held] = await queue.claim(group.group_key, limit=1, max_bytes=10**6)
        await queue.dead_letter({held.row_id: ("invalid_fields", "Invalid field values (time)")})
        [(entry_id, fields)] = await queue.redis.xrange(queue.dead_key)
        old = orjson.loads(fields[b"d"])
        del old["dead_code"]
        await queue.redis.xdel(queue.dead_key, entry_id)
        await queue.redis.xadd(queue.dead_key, {"d": orjson.dumps(old)})
        [letter] = await queue.dead_letters()
        assert (letter["reason_code"], letter["reason"]) == ("other", "Invalid field values (time)")
        assert await queue.dead_by_reason() == {"other": 1}
        assert await queue.replay_dead_letters(ReplayFilter(reasons=("other",))) == 1
    finally:
        await queue.close()


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edgeproxy", *args], cwd=cwd, capture_output=True, text=True, timeout=60)


async def test_cli_spool_and_replay_read_the_redis_queue(tmp_path: Path) -> None:
    with redis_server(tmp_path) as url:
        config = tmp_path / "edgeproxy.toml"
        config.write_text(f'[delivery]\nqueue = "{url}"\ndata_dir = "{tmp_path / "data"}"\n')
        queue = RedisQueue.from_url(url)  # the default prefix, as `edgeproxy serve` uses
        await queue.open()
        items = [SpoolItem(f"m-{i}", "httpapi", {"event_type": "A", "device_id": "d-12345"}, None, "d-12345", None, None,
                           now_ms()) for i in range(4)]
        items.append(SpoolItem("i-1", "identify", {"user_id": "u-12345"}, None, None, "u-12345", None, now_ms()))
        await queue.append([*items, SpoolItem("m-9", "httpapi", {"event_type": "B"}, None, "d-12345", None, None, now_ms())])
        claimed = []
        for group in await queue.due_groups():
            claimed += await queue.claim(group.group_key, limit=5 if group.endpoint == "httpapi" else 1, max_bytes=10**6)
        assert len(claimed) == 6
        codes = {"m-0": "invalid_api_key", "m-1": "invalid_api_key", "m-2": "too_large", "m-3": "too_large",
                 "i-1": "invalid_api_key"}
        await queue.dead_letter({c.row_id: (codes[c.message_id], f"reason for {c.message_id}")
                                 for c in claimed if c.message_id in codes})
        await queue.release([c.row_id for c in claimed if c.message_id not in codes])

        report = orjson.loads(run("spool", "--config", str(config), cwd=tmp_path).stdout)
        assert (report["depth"], report["dead"]) == (1, 5)
        assert report["dead_by_reason"] == {"invalid_api_key": 3, "too_large": 2}
        assert {(d["reason_code"], d["reason"]) for d in report["dead_letters"]} >= {("too_large", "reason for m-2")}

        def replayed(*args: str) -> int:
            result = run("replay", "--config", str(config), *args, cwd=tmp_path)
            assert result.returncode == 0, result.stderr
            assert result.stdout.endswith("dead letter(s) queued again for delivery\n")
            return int(result.stdout.split()[0])

        assert replayed("--reason", "invalid_api_key", "--endpoint", "identify") == 1
        assert replayed("--message-id", "m-2") == 1
        assert replayed("--reason", "invalid_api_key", "--limit", "1") == 1  # the oldest dead letter matching
        report = orjson.loads(run("spool", "--config", str(config), cwd=tmp_path).stdout)
        assert {d["message_id"] for d in report["dead_letters"]} == {"m-1", "m-3"}
        assert report["dead_by_reason"] == {"invalid_api_key": 1, "too_large": 1} and report["depth"] == 4
        assert replayed() == 2
        assert replayed() == 0
        assert (await queue.stats())["depth"] == 6
        await queue.close()
    down = run("spool", "--config", str(config), cwd=tmp_path)
    assert down.returncode == 1 and "Redis" in down.stderr and "Traceback" not in down.stderr
