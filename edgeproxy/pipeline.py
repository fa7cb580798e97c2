"""Segment message → spool records: the mapping step and its hand-off to the spool.

Shared by the tracking API and the session sweep so both store exactly the same shape:
one spool item per Amplitude item, or one dead letter (with the mapping's reason) for a
message the mapping refuses.
"""

from __future__ import annotations

from typing import Any

from edgeproxy.delivery.spool import DeadLetter, SpoolItem
from edgeproxy.mapping import Mapper


def spool_records(
    mapper: Mapper, msg: dict[str, Any], *, device_id: str | None, session_id: int | None, received_ms: int
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
            )
        )
    return items, dead


def default_device_id(msg: dict[str, Any]) -> str | None:
    """Segment's default device_id path (context.device.id, else anonymousId), for indexing."""
    context = msg.get("context") if isinstance(msg.get("context"), dict) else {}
    device = context.get("device") if isinstance(context.get("device"), dict) else {}
    value = device.get("id") if device.get("id") is not None else msg.get("anonymousId")
    return str(value) if value not in (None, "") else None
