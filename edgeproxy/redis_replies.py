"""Redis replies in the one shape this project's clients get them, named once.

redis-py types each command's reply as the union of every shape any client could see (str
or bytes, RESP2 or RESP3, a pipeline's placeholder). Every client here is built without
``decode_responses``, so a reply has exactly one shape: bytes, and lists and maps of bytes.
These functions state that shape where a reply enters our code (the type checker then holds
the rest of it to it), instead of narrowing the union at each use.
"""

from __future__ import annotations

from typing import Any

Entry = tuple[bytes, dict[bytes, bytes]]  # a stream entry: (id, fields)


def text(value: bytes | str) -> str:
    """A key, member or entry id as text (ids and keys are ASCII)."""
    return value.decode() if isinstance(value, bytes) else value


def entries(reply: Any) -> list[Entry]:
    """XRANGE / XREVRANGE: the entries, oldest (or newest) first; none for a missing stream."""
    return list(reply or ())


def read_one(reply: Any) -> list[Entry]:
    """XREADGROUP of a single stream: its new entries (the reply is [[stream, entries]] or empty)."""
    return list(reply[0][1]) if reply else []


def members(reply: Any) -> list[bytes]:
    """SMEMBERS / ZRANGE (without scores) / ZREVRANGE: the members as bytes."""
    return list(reply or ())


def scored(reply: Any) -> list[tuple[bytes, float]]:
    """ZRANGE … WITHSCORES: (member, score) pairs."""
    return list(reply or ())


def pending(reply: Any) -> list[dict[str, Any]]:
    """XPENDING … (the extended form): one mapping per held entry (message_id, consumer, …)."""
    return list(reply or ())
