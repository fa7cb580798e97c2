"""``events_without_consent = "anonymous"``: Amplitude's limited anonymous measurement.

The event reaches Amplitude with no user id, no IP, no traits, no advertising or device
identifier, and a device id drawn per session: an HMAC of the session key and session id
under a server secret, so one visit's events stay together (sessions and funnels work) while
two visits of one browser get unrelated ids. Nothing about the device is hashed into it
(never a fingerprint); without the secret the id links to nothing.
"""

from __future__ import annotations

import copy
import hashlib
import hmac
import uuid
from typing import Any

_TOP_LEVEL = ("userId", "previousId", "traits")
_CONTEXT = ("ip", "traits", "externalIds")
_DEVICE = ("id", "advertisingId", "adTrackingEnabled", "token")
DAY_MS = 86_400_000


def anonymous_secret(signing_key: str) -> bytes:
    """The per-installation secret, derived from the cookie signing key (shared by every process)."""
    return hashlib.sha256(b"edgeproxy anonymous device id\x00" + signing_key.encode()).digest()


def session_device_id(secret: bytes, key: str, session_id: int | None, received_ms: int) -> str:
    """A UUID for this visit: the same for every event of one session, unrelated across sessions.
    An event with no session (a server library's) is grouped by UTC day instead."""
    bucket = f"s{session_id}" if session_id is not None else f"d{received_ms // DAY_MS}"
    digest = hmac.new(secret, f"{key}\x00{bucket}".encode(), hashlib.sha256).digest()
    return str(uuid.UUID(bytes=digest[:16], version=4))


def anonymous_message(message: dict[str, Any], device_id: str) -> dict[str, Any]:
    """A copy of ``message`` without what identifies a person, ``anonymousId`` = ``device_id``."""
    out = copy.deepcopy(message)
    for name in _TOP_LEVEL:
        out.pop(name, None)
    out["anonymousId"] = device_id
    context = out.get("context")
    if isinstance(context, dict):
        for name in _CONTEXT:
            context.pop(name, None)
        device = context.get("device")
        if isinstance(device, dict):
            for name in _DEVICE:
                device.pop(name, None)
    return out
