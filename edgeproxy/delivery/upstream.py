"""What the delivery worker remembers of the services' answers: closed endpoints, paused ids.

Two rules, both keyed by target and source (one project's trouble never holds up another's):

- An endpoint is closed after a server failure (5xx, timeout, connection error) for an
  exponentially growing, jittered backoff, or for exactly the ``Retry-After`` the service
  asked for; any other answer reopens it. While it is closed the worker sends nothing there,
  so an outage costs one probe per delay, not one request per batch.
- A throttled device or user (Amplitude's 429 names them; else the items' own ids) is
  paused until a given time; its items wait while the rest of a batch goes.

Pure state and time in, no I/O, so the worker's loop stays about claiming and sending.
"""

from __future__ import annotations

import random

from edgeproxy.delivery.classify import Verdict, backoff_delay
from edgeproxy.delivery.records import ClaimedItem

EndpointKey = tuple[str, str, str]  # (target, source, endpoint)
Scope = tuple[str, str]  # (target, source): the project a throttle applies to
IdentityKey = tuple[str, str, str, str]  # (target, source, "device"|"user", id)


def identities(scope: Scope, c: ClaimedItem) -> list[IdentityKey]:
    """The device and user an item counts against in its project's throttling (Amplitude's)."""
    out = []
    item = c.item
    device, user = item.get("device_id") or c.device_id, item.get("user_id") or c.user_id
    if device:
        out.append((*scope, "device", str(device)))
    if user:
        out.append((*scope, "user", str(user)))
    return out


class Upstream:
    """Closed endpoints and paused identities, with the backoff settings that size them."""

    def __init__(self, retry_base: float, retry_max: float, rng: random.Random) -> None:
        self.retry_base, self.retry_max, self._rng = retry_base, retry_max, rng
        self._failures: dict[EndpointKey, int] = {}  # consecutive server failures
        self._closed_until: dict[EndpointKey, int] = {}  # no request before (ms)
        self._paused: dict[IdentityKey, int] = {}  # paused until (ms)

    def closed_until(self, key: EndpointKey) -> int:
        """0, or the time (ms) before which nothing is sent to the endpoint."""
        return self._closed_until.get(key, 0)

    def note(self, key: EndpointKey, verdict: Verdict, t: int) -> None:
        """Close the endpoint for a backoff after a server failure, or for the Retry-After the
        service asked for; any other answer reopens it."""
        if verdict.retry_after is not None:
            self._closed_until[key] = t + int(verdict.retry_after * 1000)
        elif verdict.outcome == "retry":
            failures = self._failures[key] = self._failures.get(key, 0) + 1
            delay = backoff_delay(failures, self.retry_base, self.retry_max, self._rng)
            self._closed_until[key] = t + int(delay * 1000)
        else:
            self._failures.pop(key, None)
            self._closed_until.pop(key, None)

    def pause(self, scope: Scope, verdict: Verdict, items: list[ClaimedItem], until: int) -> None:
        """A 429's throttled devices and users wait until ``until``; when the body named none,
        the throttled items' own device and user do."""
        named = [(kind, name) for kind, names in (("device", verdict.throttled_devices), ("user", verdict.throttled_users))
                 for name in names]
        for kind, name in named:
            self._paused[(*scope, kind, name)] = until
        if not named:
            for c in items:
                for key in identities(scope, c):
                    self._paused[key] = until

    def any_paused(self, t: int) -> bool:
        """Forget the pauses that ended; whether any is still running (else no pass over rows)."""
        if self._paused:
            self._paused = {k: v for k, v in self._paused.items() if v > t}
        return bool(self._paused)

    def paused_until(self, scope: Scope, c: ClaimedItem, t: int) -> int:
        """0, or when the pause of the item's throttled device/user ends."""
        return max((u for u in (self._paused.get(k, 0) for k in identities(scope, c)) if u > t), default=0)
