"""The Redis queue's entries and what a verdict makes of them (pure: no Redis needed)."""

from __future__ import annotations

import orjson

from edgeproxy.delivery.records import SpoolItem, group_key
from edgeproxy.delivery.redis_records import claimed_item, encode_record, settle_ops

T = 1_700_000_000_000


def held_entry(message_id: str = "m1") -> dict:
    item = SpoolItem(message_id=message_id, endpoint="httpapi", item={"event_type": "x", "insert_id": message_id},
                     options=None, device_id="d1", user_id=None, session_id=None, received_ms=T - 5_000)
    return orjson.loads(encode_record(item, group_key("httpapi", None)))


def decoded(ops: list, i: int) -> tuple[str, str, str, int, dict]:
    op, stream, entry_id, score, data = ops[5 * i:5 * i + 5]
    prefix, _, body = data.partition(b"\n") if op == "delay" else (b"", b"", data)
    return op, stream, entry_id, score, {"group_key_prefix": prefix.decode(), **orjson.loads(body)}


def test_each_verdict_moves_a_held_entry_with_its_bookkeeping() -> None:
    held = {("s", f"{i}-0"): held_entry(f"m{i}") for i in range(5)}
    ops = settle_ops(held, T, ack=[("s", "0-0")], dead={("s", "1-0"): ("rejected", "bad")},
                     retry=[([("s", "2-0")], T + 60_000, "HTTP 500")],
                     release=[([("s", "3-0")], T + 1_000), ([("s", "4-0")], 0)])
    moves = [decoded(ops, i) for i in range(len(ops) // 5)]
    assert [(m[0], m[2], m[3]) for m in moves] == [
        ("ack", "0-0", 0), ("dead", "1-0", 0), ("delay", "2-0", T + 60_000), ("delay", "3-0", T + 1_000), ("requeue", "4-0", 0)]
    ack, dead, retry, paused, requeued = (m[4] for m in moves)
    assert ack["delivered_ms"] == T and ack["last_error"] is None and ack["attempts"] == 0
    assert (dead["dead_code"], dead["last_error"], dead["attempts"], dead["dead_ms"]) == ("rejected", "bad", 1, T)
    assert (retry["attempts"], retry["last_error"], retry["next_attempt_ms"]) == (1, "HTTP 500", T + 60_000)
    # A delayed entry names its stream's group first: the promote script puts it back there.
    assert retry["group_key_prefix"] == paused["group_key_prefix"] == group_key("httpapi", None)
    assert paused["attempts"] == 0 and paused["next_attempt_ms"] == T + 1_000  # a pause is no failed attempt
    assert requeued["group_key_prefix"] == "" and requeued["message_id"] == "m4"


def test_an_entry_this_worker_no_longer_holds_is_left_alone() -> None:
    """Taken over by another worker (XAUTOCLAIM) meanwhile: a late verdict must not move it."""
    held = {("s", "1-0"): held_entry()}
    assert settle_ops(held, T, ack=[("s", "2-0")], dead={("s", "3-0"): "gone"}) == []


def test_a_claimed_entry_reads_as_any_queues_item() -> None:
    rec = held_entry("m7")
    c = claimed_item(("s", "7-0"), rec)
    assert (c.row_id, c.message_id, c.endpoint, c.device_id, c.attempts, c.received_ms) == (
        ("s", "7-0"), "m7", "httpapi", "d1", 0, T - 5_000)
    assert c.item == {"event_type": "x", "insert_id": "m7"} and c.options is None and c.size == rec["size"]
