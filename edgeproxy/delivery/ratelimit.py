"""Keep outgoing events under the plan's events/s (``delivery.rate_limit``).

Why a reservation scheduler (GCRA) rather than a bucket that refuses: a batch must go out
whole, and a batch may be larger than one second's allowance. Each reservation of ``n``
events is given a start time no earlier than the end of the previous one; the events then
"occupy" ``n / rate`` seconds. Over any window the events sent stay within
``rate * window + one batch``, which is what Amplitude's per-project limit measures.
"""

from __future__ import annotations


class RateLimiter:
    """``reserve(n, now)`` returns how long to wait before sending ``n`` events; 0 rate = unlimited."""

    def __init__(self, rate: float) -> None:
        if rate < 0:
            raise ValueError(f"rate must be 0 (unlimited) or positive, got {rate!r}")
        self.rate = rate
        self._next_free = 0.0  # monotonic seconds when the allowance is free again

    def reserve(self, n: int, now: float) -> float:
        if self.rate == 0 or n <= 0:
            return 0.0
        start = max(now, self._next_free)
        self._next_free = start + n / self.rate
        return start - now
