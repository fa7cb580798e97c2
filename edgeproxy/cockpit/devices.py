"""Sessions of mobile and server devices, as their libraries sent them.

Web sessions are edgeproxy's own (the session store). A React Native, Kotlin or Swift app
keeps its own session and sends its id with each event (``integrations["Actions
Amplitude"].session_id``); edgeproxy passes it through and keeps nothing. So that a mobile
team sees its sessions too, the trail remembers, per device, the session ids seen recently,
in bounded memory (the least recently seen device goes first).
"""

from __future__ import annotations

import collections
from dataclasses import dataclass, field
from typing import Any

from edgeproxy.segment import library_name

MAX_DEVICES = 10_000
SESSIONS_PER_DEVICE = 10


@dataclass(slots=True)
class ClientSession:
    session_id: int | None  # None: events sent without a session id
    first_ms: int
    last_ms: int
    events: int = 0


@dataclass(slots=True)
class ClientDevice:
    device_id: str
    source: str
    library: str | None
    user_id: str | None
    first_ms: int
    last_ms: int
    events: int = 0
    sessions: list[ClientSession] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "device_id": self.device_id, "source": self.source, "library": self.library, "user_id": self.user_id,
            "first_ms": self.first_ms, "last_ms": self.last_ms, "events": self.events,
            "session_id": self.sessions[-1].session_id if self.sessions else None,
            "sessions": [{"session_id": s.session_id, "first_ms": s.first_ms, "last_ms": s.last_ms, "events": s.events}
                         for s in reversed(self.sessions)],
        }


class ClientSessions:
    """Devices of non-web libraries, most recently seen last."""

    def __init__(self, size: int = MAX_DEVICES):
        self.size = size
        self._devices: collections.OrderedDict[str, ClientDevice] = collections.OrderedDict()

    def __len__(self) -> int:
        return len(self._devices)

    def record(self, source: str, msg: dict[str, Any], device_id: str | None, session_id: int | None, t_ms: int) -> None:
        if device_id is None:
            return
        device = self._devices.get(device_id)
        if device is None:
            if len(self._devices) >= self.size:
                self._devices.popitem(last=False)
            library = library_name(msg)
            device = self._devices[device_id] = ClientDevice(device_id, source, library[:100] if library else None, None, t_ms, t_ms)
        else:
            self._devices.move_to_end(device_id)
        user_id = msg.get("userId")
        if isinstance(user_id, str) and user_id:
            device.user_id = user_id[:200]
        device.last_ms = max(device.last_ms, t_ms)
        device.events += 1
        current = device.sessions[-1] if device.sessions else None
        if current is None or current.session_id != session_id:
            current = ClientSession(session_id, t_ms, t_ms)
            device.sessions.append(current)
            if len(device.sessions) > SESSIONS_PER_DEVICE:
                del device.sessions[0]
        current.last_ms = max(current.last_ms, t_ms)
        current.events += 1

    def get(self, device_id: str) -> ClientDevice | None:
        return self._devices.get(device_id)

    def recent(self, query: str = "", limit: int = 100, source: str | None = None) -> list[ClientDevice]:
        """Most recently seen first; ``query`` a case-insensitive part of the device or user id."""
        needle = query.strip().lower()
        out: list[ClientDevice] = []
        for device in reversed(self._devices.values()):
            if len(out) >= limit:
                break
            if source is not None and device.source != source:
                continue
            if not needle or needle in device.device_id.lower() or needle in (device.user_id or "").lower():
                out.append(device)
        return out
