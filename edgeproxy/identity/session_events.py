"""Session start and end events as Segment messages (pure).

Why the server emits them: only the server sees a visitor who simply left. The idle sweep
finds sessions past the timeout and ends them; a rotation on the next event ends the old
one; a new session starts with a start event. The events are ordinary Segment track calls,
so they go through the same mapping (subscriptions apply) and the same spool.

The message id is derived from the device and session, so the same session's end event
emitted twice (two processes, a retry) has one ``insert_id`` and Amplitude keeps one.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Literal

from edgeproxy.identity.sessions import SessionState

Kind = Literal["start", "end"]


def session_message(kind: Kind, name: str, device_id: str, state: SessionState) -> dict[str, Any]:
    """The track message for the start (at the session's first event) or end (its last event)."""
    at_ms = state.session_id if kind == "start" else state.last_event_ms
    properties: dict[str, Any] = {"session_id": state.session_id}
    if kind == "end":
        properties["event_count"] = state.event_count
        properties["duration_ms"] = max(0, state.last_event_ms - state.session_id)
    context: dict[str, Any] = {"library": {"name": state.library or "analytics.js"}}
    if state.user_agent:
        context["userAgent"] = state.user_agent
    message: dict[str, Any] = {
        "type": "track",
        "event": name,
        "anonymousId": device_id,
        "messageId": f"edgeproxy-session-{kind}-{device_id}-{state.session_id}",
        "timestamp": _iso(at_ms),
        "properties": properties,
        "context": context,
        "integrations": {"Actions Amplitude": {"session_id": state.session_id}},
    }
    if state.user_id:
        message["userId"] = state.user_id
    return message


def _iso(ms: int) -> str:
    moment = datetime.fromtimestamp(ms / 1000, timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"
