"""How one queue operation divides between the spool's two parts: the stream (new items,
delivered by cursor) and the side table (rows that failed once, dead letters).

Pure functions, apart from the I/O: which part a row is in is known from the stream's rows
in flight, and the answers are merged or split here so ``Spool`` reads as the queue's API.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Container, Iterable, Mapping, Sequence

import orjson

from edgeproxy.delivery.records import ClaimedItem, DueGroup
from edgeproxy.delivery.spool_sql import DUE_COUNT_CAP, pick

StreamDue = Mapping[str, tuple[int, tuple[Any, ...]]]  # Stream.due_groups: key -> (count, first row's columns)


def merge_due_groups(side: Iterable[DueGroup], stream: StreamDue) -> list[DueGroup]:
    """One entry per group: counts added (up to the cap), the older of the two oldest rows."""
    out = {g.group_key: g for g in side}
    for key, (n, (endpoint, options, oldest, target, source)) in stream.items():
        g = out.get(key)
        if g is not None:
            out[key] = replace(g, count=min(DUE_COUNT_CAP, g.count + n), oldest_ms=min(g.oldest_ms, oldest))
        else:
            out[key] = DueGroup(key, endpoint, orjson.loads(options) if options else None, n, oldest, target, source)
    return [out[k] for k in sorted(out)]


@dataclass(frozen=True)
class Split:
    """A verdict divided: the stream's share (``Stream.settle``) and the side table's (``sql.settle``)."""

    stream_ack: list[int]
    failed: list[int]  # the stream's rows that move to the side table (retried, dead, paused)
    stays: list[int]  # the stream's rows given back for now: pending again in the stream
    side_ack: list[int]
    side_release: list[tuple[list[int], int]]


def split_verdict(mine: Container[int], t: int, ack: Sequence[int], dead: Mapping[int, Any],
                  retry: Sequence[tuple[Sequence[int], int, str]], release: Sequence[tuple[Sequence[int], int]]) -> Split:
    """``mine``: the stream's rows in flight. A row given back "not before" a later time (a
    throttled device's) waits in the side table, which keeps a time per row; one given back for
    now stays in the stream. Retried and dead rows move too, and the side table's statements
    then mark them (so ``dead`` and ``retry`` go to ``sql.settle`` whole)."""
    failed = [i for i in dead if i in mine] + [i for ids, _, _ in retry for i in ids if i in mine]
    failed += [i for ids, ms in release if ms > t for i in ids if i in mine]
    return Split(
        stream_ack=[i for i in ack if i in mine],
        failed=failed,
        stays=[i for ids, ms in release if ms <= t for i in ids if i in mine],
        side_ack=[i for i in ack if i not in mine],
        side_release=[(list(ids) if ms > t else [i for i in ids if i not in mine], ms) for ids, ms in release],
    )


class Either:
    """Membership in either of two containers (a claim skips rows in flight and rows acked ahead)."""

    __slots__ = ("a", "b")

    def __init__(self, a: Container[int], b: Container[int]) -> None:
        self.a, self.b = a, b

    def __contains__(self, x: object) -> bool:
        return x in self.a or x in self.b


def pick_claim(side: list[tuple[Any, ...]], stream: list[tuple[Any, ...]], *, limit: int, max_bytes: int,
               in_flight: Container[int], ahead: set[int], started: bool = False
               ) -> tuple[list[ClaimedItem], list[int], list[int]]:
    """A claim from both parts' due rows (each in id order; the side's are few): what is taken,
    and the ids of it that came from the stream and from the side table. Rows in flight and
    rows acked ahead are skipped."""
    rows = sorted(side + stream) if side else stream
    taken = pick(rows, limit=limit, max_bytes=max_bytes, skip=Either(in_flight, ahead) if ahead else in_flight,
                 started=started)
    if not stream:
        return taken, [], [i.row_id for i in taken]
    if not side:
        return taken, [i.row_id for i in taken], []
    from_stream = {row[0] for row in stream}
    return (taken, [i.row_id for i in taken if i.row_id in from_stream],
            [i.row_id for i in taken if i.row_id not in from_stream])
