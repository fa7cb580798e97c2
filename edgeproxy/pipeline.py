"""Segment message → spool records: the mapping step and its hand-off to the spool.

Shared by the tracking API and the session sweep so both store exactly the same shape:
one spool item per Amplitude item, or one dead letter (with the mapping's reason) for a
message the mapping refuses; and, for a source with a relay, one item holding the message
for Segment's tracking API (``relay_record``). ``Route`` is a source as the pipeline uses
it: built once, carried by each request.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from edgeproxy import segment_api
from edgeproxy.delivery.records import DeadLetter, SpoolItem
from edgeproxy.mapping import Mapper
from edgeproxy.sources import DEFAULT_SOURCE, Source, SourceTable


@dataclass(frozen=True)
class Route:
    """A source with its mapper (None: ``amplitude.enabled = false``, nothing mapped here)."""

    source: Source
    mapper: Mapper | None

    @property
    def name(self) -> str:
        return self.source.name

    @property
    def relays(self) -> bool:
        return self.source.relay is not None


def build_routes(sources: SourceTable, default_mapper: Mapper | None = None) -> dict[str, Route]:
    """One route per source. The server never refuses events for settings the reference checks
    but that do not affect sending (``strict_settings=False``); ``check-config`` reports them."""
    routes = {}
    for src in sources:
        mapper = None
        if src.amplitude_enabled:
            mapper = default_mapper if src.name == DEFAULT_SOURCE and default_mapper is not None else \
                Mapper(src.amplitude.as_mapping_config(), strict_settings=False)
        routes[src.name] = Route(src, mapper)
    return routes


def spool_records(
    mapper: Mapper, msg: dict[str, Any], *, device_id: str | None, session_id: int | None, received_ms: int,
    source: str = DEFAULT_SOURCE,
) -> tuple[list[SpoolItem], list[DeadLetter]]:
    """Map ``msg``; ``device_id`` is the identity layer's (None: Segment's default path applies)."""
    mapped = mapper.map(msg, device_id=device_id)
    key_device = device_id or default_device_id(msg)
    user_id = msg.get("userId")
    if not isinstance(user_id, str):
        user_id = None
    items = [
        SpoolItem(
            message_id=msg["messageId"],
            endpoint=out.endpoint,
            item=out.item,
            options=out.options,
            device_id=key_device,
            user_id=user_id,
            session_id=session_id,
            received_ms=received_ms,
            source=source,
        )
        for out in mapped.outputs
    ]
    dead = []
    if mapped.errors:
        dead.append(
            DeadLetter(
                message_id=msg["messageId"],
                payload=msg,
                reason=mapped.error or "refused by the mapping",
                device_id=key_device,
                session_id=session_id,
                received_ms=received_ms,
                source=source,
            )
        )
    return items, dead


def relay_record(msg: dict[str, Any], *, write_key: str, device_id: str | None, session_id: int | None,
                 received_ms: int, source: str = DEFAULT_SOURCE) -> SpoolItem:
    """The spool item that relays ``msg`` (normalized and enriched) to Segment.

    The write key it came with is the group's options, so a batch never mixes write keys
    (the request authenticates as one); ``relay_write_key``, when set, overrides it at send.
    """
    user_id = msg.get("userId")
    return SpoolItem(
        message_id=msg["messageId"],
        endpoint=segment_api.ENDPOINT,
        item=segment_api.relay_message(msg),
        options={"write_key": write_key},
        device_id=device_id or default_device_id(msg),
        user_id=user_id if isinstance(user_id, str) else None,
        session_id=session_id,
        received_ms=received_ms,
        target="segment",
        source=source,
    )


def default_device_id(msg: dict[str, Any]) -> str | None:
    """Segment's default device_id path (context.device.id, else anonymousId), for indexing."""
    context = msg.get("context")
    device = context.get("device") if isinstance(context, dict) else None
    value = device.get("id") if isinstance(device, dict) else None
    if value is None:
        value = msg.get("anonymousId")
    return str(value) if value not in (None, "") else None
