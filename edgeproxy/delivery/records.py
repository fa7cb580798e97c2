"""What the delivery queues hold: items to deliver and refused messages, their one error, and
what the worker gets back (due groups, claimed items, the verdict's names).

Shared by both queue backends (the SQLite spool and Redis streams) and by everything that
feeds or drains them (the edge, the session sweep, forget, the worker), so none of those
depends on either backend.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, NamedTuple, Sequence
from urllib.parse import quote_plus

import orjson

from edgeproxy.amplitude_api import FORM_ENDPOINTS

DEFAULT_TARGET = "amplitude"  # rows written before targets existed are the default source's Amplitude items
DEFAULT_SOURCE = "default"
RESPONSE_LOG_KEEP = 1000  # upstream responses kept for /debug
MAPPING_REASON = "mapping"  # the dead-letter code of a Segment message the mapping refused
OTHER_REASON = "other"  # a dead letter settled with a bare text reason


class SpoolUnavailable(Exception):
    """The spool cannot take the write (disk full, locked, corrupt, closed): answer 503 + Retry-After."""


@dataclass(slots=True)
class SpoolItem:
    """One Amplitude item (event, identification or usermap entry) to deliver.

    Slotted, not frozen: one is built for every event, and a frozen dataclass pays an
    ``object.__setattr__`` per field (2.9 µs against 0.7 µs on the bench machine). Nothing
    changes one after it is built but ``encoded`` (``item_json()``), and nothing hashes one.
    """

    message_id: str
    endpoint: str
    item: dict[str, Any]
    options: dict[str, Any] | None
    device_id: str | None
    user_id: str | None
    session_id: int | None
    received_ms: int
    target: str = DEFAULT_TARGET  # who delivers it: "amplitude", or "segment" (the relay)
    source: str = DEFAULT_SOURCE
    encoded: bytes | None = None  # ``item`` as JSON, once made (item_json)

    def item_json(self) -> bytes:
        """The item's JSON, made once per item: the queue stores it and the cockpit's trail keeps it."""
        encoded = self.encoded
        if encoded is None:
            encoded = self.encoded = orjson.dumps(self.item)
        return encoded


@dataclass(slots=True)
class DeadLetter:
    """An event the mapping refused: kept with its reason, never sent."""

    message_id: str
    payload: dict[str, Any]
    reason: str
    device_id: str | None
    session_id: int | None
    received_ms: int
    source: str = DEFAULT_SOURCE


@dataclass(frozen=True)
class DueGroup:
    """Pending items of one (endpoint, options) group that are due now."""

    group_key: str
    endpoint: str
    options: dict[str, Any] | None
    count: int
    oldest_ms: int
    target: str = DEFAULT_TARGET  # "amplitude" or "segment" (the relay): who delivers the group
    source: str = DEFAULT_SOURCE


class ClaimedItem(NamedTuple):
    """A row the worker has marked in flight.

    The item is kept as the JSON it was stored as (``raw``): a request body is those bytes
    spliced together (``amplitude_api.request_data``), so the common path never decodes an
    item only to encode it again. ``item`` decodes it for the paths that read it.

    Why a NamedTuple rather than a frozen dataclass: a claim makes one per row, up to 2,000
    per request, and a frozen dataclass's ``__init__`` sets each field through
    ``object.__setattr__`` (1.3 µs a row, a quarter of the whole claim). A tuple is built in
    C from the row SQLite hands back (``spool_sql._AS_CLAIMED``), and is just as immutable.
    """

    row_id: Any
    message_id: str
    endpoint: str
    raw: bytes
    options_json: str | bytes | None  # the group's options as stored (``options`` parses them)
    device_id: str | None
    user_id: str | None
    attempts: int
    size: int
    received_ms: int = 0  # when the edge accepted it (the relay moves sentAt on by the wait)

    @property
    def item(self) -> dict[str, Any]:
        return orjson.loads(self.raw)

    @property
    def options(self) -> dict[str, Any] | None:
        """The group's options (the worker has them parsed once, in its DueGroup)."""
        return orjson.loads(self.options_json) if self.options_json else None


def now_ms() -> int:
    return int(time.time() * 1000)


def group_key(endpoint: str, options: Mapping[str, Any] | None, target: str = DEFAULT_TARGET,
              source: str = DEFAULT_SOURCE) -> str:
    """Items batch together only when they share target, source, endpoint and options (one
    request body, one API key). The default source's Amplitude groups keep the key they had
    before targets existed, so a queue written by an older edgeproxy drains in the same groups."""
    key = endpoint + "|" + (orjson.dumps(options, option=orjson.OPT_SORT_KEYS).decode() if options else "")
    if target == DEFAULT_TARGET and source == DEFAULT_SOURCE:
        return key
    return f"{target}@{source}|{key}"


def item_size(endpoint: str, encoded_item: bytes) -> int:
    """Bytes the item adds to a request body: form endpoints pay for URL-encoding."""
    if endpoint in FORM_ENDPOINTS:
        return len(quote_plus(encoded_item.decode()))
    return len(encoded_item)


def dead_reason(reason: str | tuple[str, str]) -> tuple[str, str]:
    """``(code, text)`` from what ``settle(dead=...)`` accepts: the pair, or a bare text (code "other").

    The code is what operators count and filter dead letters by (``dead_by_reason``, replay
    ``--reason``); the text is what they read. Records keep them apart, as ``dead_code`` and
    ``last_error``, like the SQLite spool's columns.
    """
    return reason if isinstance(reason, tuple) else (OTHER_REASON, reason)


def settled_rows(
    ack: Iterable[Any], dead: Iterable[Any], retry: Iterable[tuple[Sequence[Any], int, str]],
    release: Iterable[tuple[Sequence[Any], int]],
) -> list[Any]:
    """Every row a ``settle(ack=, dead=, retry=, release=)`` call names: its verdict ends the
    row's time in flight, whichever it is (both backends keep in flight in memory)."""
    return [*ack, *dead, *(row for rows, _, _ in retry for row in rows), *(row for rows, _ in release for row in rows)]
