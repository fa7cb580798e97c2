"""The Redis queue's entries: what an item or a refusal is in a stream, and what each verdict
makes of it.

Pure functions over the entry dicts (``redis_queue.py`` does the I/O): an entry carries the
item and what batching, throttling and /debug need, and a verdict moves it, with its
bookkeeping updated, to delivered, dead, delayed or back into its stream, in the operation
list the settle script (``redis_lua.SETTLE``) runs in one go.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import orjson

from edgeproxy.delivery.records import (
    DEFAULT_TARGET,
    MAPPING_REASON,
    ClaimedItem,
    DeadLetter,
    SpoolItem,
    dead_reason,
    item_size,
)

Row = tuple[str, str]  # (stream key, entry id)


def encode_record(it: SpoolItem, key: str) -> bytes:
    """One queue entry (``key`` is the item's ``group_key``): the item plus what batching,
    throttling and /debug need."""
    encoded = it.item_json()
    return orjson.dumps({
        "message_id": it.message_id, "endpoint": it.endpoint, "group_key": key,
        "item": orjson.Fragment(encoded), "options": it.options, "device_id": it.device_id, "user_id": it.user_id,
        "session_id": it.session_id, "received_ms": it.received_ms, "size": item_size(it.endpoint, encoded),
        "attempts": 0, "last_error": None, "target": it.target, "source": it.source,
    })


def encode_refusal(d: DeadLetter) -> bytes:
    """A message the mapping refused: a dead letter with no item (so not replayable)."""
    return orjson.dumps({
        "message_id": d.message_id, "endpoint": None, "group_key": None, "item": None, "payload": d.payload,
        "device_id": d.device_id, "session_id": d.session_id, "received_ms": d.received_ms,
        "attempts": 0, "last_error": d.reason, "dead_code": MAPPING_REASON, "dead_ms": d.received_ms,
        "target": DEFAULT_TARGET, "source": d.source,
    })


def claimed_item(row: Row, rec: dict[str, Any]) -> ClaimedItem:
    """A claimed entry as the worker sees any queue's items."""
    options = orjson.dumps(rec["options"]) if rec["options"] is not None else None
    return ClaimedItem(row, rec["message_id"], rec["endpoint"], orjson.dumps(rec["item"]), options,
                       rec["device_id"], rec["user_id"], rec["attempts"], rec["size"], rec.get("received_ms") or 0)


def settle_ops(
    held: Mapping[Row, dict[str, Any]],
    t: int,
    *,
    ack: Sequence[Any] = (),
    dead: Mapping[Any, str | tuple[str, str]],
    retry: Sequence[tuple[Sequence[Any], int, str]] = (),
    release: Sequence[tuple[Sequence[Any], int]] = (),
) -> list[Any]:
    """The settle script's operations (op, stream, entry id, score, entry) for one verdict at
    ``t``, over the entries this worker ``held``; a row it does not hold (taken over by another
    worker meanwhile) is left alone."""
    ops: list[Any] = []

    def move(row: Row, op: str, score: int, rec: dict[str, Any]) -> None:
        data = orjson.dumps(rec)
        if op == "delay":
            data = rec["group_key"].encode() + b"\n" + data
        ops.extend([op, row[0], row[1], score, data])

    for row in ack:
        if row in held:
            rec = held[row]
            move(row, "ack", 0, {**rec, "last_error": None, "delivered_ms": t})
    for row, reason in dead.items():
        if row in held:
            rec = held[row]
            code, text = dead_reason(reason)
            move(row, "dead", 0, {**rec, "attempts": rec["attempts"] + 1, "last_error": text, "dead_code": code,
                                  "dead_ms": t})
    for rows, next_ms, error in retry:
        for row in rows:
            if row in held:
                rec = held[row]
                move(row, "delay", next_ms, {**rec, "attempts": rec["attempts"] + 1, "last_error": error,
                                             "next_attempt_ms": next_ms})
    for rows, not_before in release:
        for row in rows:
            if row in held:
                rec = held[row]
                if not_before > t:
                    move(row, "delay", not_before, {**rec, "next_attempt_ms": not_before})
                else:
                    move(row, "requeue", 0, rec)
    return ops
