"""The privacy rules applied at the edge: one verdict per message, and a record of each.

The decisions are ``privacy.policy.decide`` (pure); this module gathers its inputs from the
request (the GPC/DNT headers, the user agent), applies the IP rule to the message before
anything is stored, counts every verdict that withheld, anonymised or marked an event, and
keeps the recent ones for ``/debug`` (``PrivacyLog``: in this process's memory only, with no
payload: an event refused consent is not stored anywhere).
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import asdict, dataclass
from typing import Any, Mapping

from edgeproxy import segment
from edgeproxy.metrics import Metrics
from edgeproxy.privacy.anonymous import anonymous_message, session_device_id
from edgeproxy.privacy.bots import bot_kind
from edgeproxy.privacy.consent import privacy_signal
from edgeproxy.privacy.ip import apply_ip
from edgeproxy.privacy.policy import ALLOW, Rules, Verdict, decide

LOG_SIZE = 500


@dataclass(frozen=True, slots=True)
class Decision:
    """One event the rules withheld, anonymised or marked as a bot (what /debug lists)."""

    at_ms: int
    source: str
    message_id: str
    type: str
    event: str | None
    device_id: str | None  # the session key (the browser's device id or anonymousId)
    outcome: str  # "withheld" | "anonymous" | "delivered"
    reason: str | None
    consent: str
    bot: str | None


class PrivacyLog:
    """The latest decisions of this process, newest first (bounded)."""

    def __init__(self, size: int = LOG_SIZE) -> None:
        self._items: deque[Decision] = deque(maxlen=size)

    def add(self, decision: Decision) -> None:
        self._items.appendleft(decision)

    def recent(self, *, source: str | None = None, device_id: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
        out = []
        for d in self._items:
            if (source is None or d.source == source) and (device_id is None or d.device_id == device_id):
                out.append(asdict(d))
                if len(out) >= limit:
                    break
        return out

    def forget(self, device_ids: set[str]) -> int:
        """Drop a person's entries (``edgeproxy forget``); returns how many."""
        kept = [d for d in self._items if d.device_id not in device_ids]
        removed = len(self._items) - len(kept)
        self._items.clear()
        self._items.extend(kept)
        return removed


def _user_agent(message: Mapping[str, Any], headers: Mapping[str, str]) -> str | None:
    """The visitor's user agent: ``context.userAgent``, else the request's own, unless a server
    library sent it (then the header names the library, not a visitor)."""
    context = message.get("context")
    if isinstance(context, dict) and isinstance(context.get("userAgent"), str):
        return context["userAgent"]
    if segment.library_name(message) in segment.SERVER_LIBRARIES:
        return None
    return headers.get("User-Agent")


class PrivacyGate:
    def __init__(self, metrics: Metrics, secret: bytes, log: PrivacyLog | None = None) -> None:
        self.metrics = metrics
        self.secret = secret
        self.log = log or PrivacyLog()

    def verdict(self, rules: Rules, message: dict[str, Any], headers: Mapping[str, str]) -> Verdict:
        """The message's verdict; the IP rule is applied to ``message`` in place (before the spool)."""
        apply_ip(rules.ip, message)
        bot = bot_kind(_user_agent(message, headers))
        if bot is None and not rules.active:
            return ALLOW
        return decide(message, rules, signal=privacy_signal(headers), bot=bot)

    def anonymous(self, message: dict[str, Any], key: str | None, session_id: int | None,
                  received_ms: int) -> tuple[dict[str, Any], str]:
        """The anonymised copy of ``message`` and its per-session device id."""
        device_id = session_device_id(self.secret, key or message.get("messageId", ""), session_id, received_ms)
        return anonymous_message(message, device_id), device_id

    def record(self, source: str, message: Mapping[str, Any], device_id: str | None, verdict: Verdict) -> None:
        """Count and log a stored message's verdict (after the spool took the request)."""
        if verdict is ALLOW:
            return
        if verdict.bot is not None:
            self.metrics.bots_by(source, verdict.bot, "true" if verdict.reason == "bot" else "false").inc()
        if verdict.reason is not None:
            self.metrics.events_withheld_by(source, verdict.reason).inc()
            outcome = "withheld"
        elif verdict.anonymous:
            self.metrics.events_anonymised_by(source).inc()
            outcome = "anonymous"
        elif verdict.bot is not None:
            outcome = "delivered"
        else:
            return
        event = message.get("event") if message.get("type") == "track" else message.get("name")
        self.log.add(Decision(int(time.time() * 1000), source, str(message.get("messageId")), str(message.get("type")),
                              event if isinstance(event, str) else None, device_id, outcome, verdict.reason,
                              verdict.consent, verdict.bot))
