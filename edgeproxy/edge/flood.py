"""A flood from one client address gets 429s, not the whole process's attention.

GCRA per client IP (the address aiohttp-remotes resolved, so behind nginx it is the visitor's,
not nginx's): each request occupies ``1 / rate`` seconds of the address's allowance and up to
``burst`` requests may be ahead of schedule. O(1) per request, one float per address, and a
bounded table (least recently seen addresses are forgotten first). analytics.js and the mobile
libraries retry a 429 after its ``Retry-After``, so nothing is lost.
"""

from __future__ import annotations

import math
from collections import OrderedDict


class FloodGuard:
    def __init__(self, rate: float, burst: int, max_addresses: int = 100_000) -> None:
        self.rate = rate
        self.burst = max(1, burst)
        self.max_addresses = max_addresses
        self._tat: OrderedDict[str, float] = OrderedDict()  # address -> theoretical arrival time

    @property
    def enabled(self) -> bool:
        return self.rate > 0

    def retry_after(self, address: str, now: float) -> float:
        """0 when the request may proceed (and is counted), else seconds until it may."""
        if not self.enabled:
            return 0.0
        interval = 1.0 / self.rate
        tat = max(self._tat.get(address, now), now)
        if tat - now > (self.burst - 1) * interval:
            return tat - now - (self.burst - 1) * interval
        self._tat[address] = tat + interval
        self._tat.move_to_end(address)
        if len(self._tat) > self.max_addresses:
            self._tat.popitem(last=False)
        return 0.0


def retry_after_header(seconds: float) -> str:
    return str(max(1, math.ceil(seconds)))
