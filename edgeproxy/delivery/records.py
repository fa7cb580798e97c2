"""What the delivery queues hold: items to deliver and refused messages, and their one error.

Shared by both queue backends (the SQLite spool and Redis streams) and by everything that
feeds them (the edge, the session sweep, forget), so none of those depends on either backend.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

__all__ = ["DEFAULT_SOURCE", "DEFAULT_TARGET", "DeadLetter", "SpoolItem", "SpoolUnavailable"]

DEFAULT_TARGET = "amplitude"  # rows written before targets existed are the default source's Amplitude items
DEFAULT_SOURCE = "default"


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
