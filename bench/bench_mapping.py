"""µs per event of the mapping for a typical analytics.js track event.

Reported with a reference figure measured in the same run: a plain
``orjson.loads(orjson.dumps(event))`` round trip of the same event, so the ratio is
comparable across machines. Run: ``python bench/bench_mapping.py [--seconds 2]``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from edgeproxy.mapping import Mapper  # noqa: E402

EVENT = {
    "type": "track", "event": "Signup Button Clicked", "properties": {"button": "hero", "plan": "team", "seats": 5},
    "anonymousId": "a1b2c3d4-0000-4000-8000-00000000a001", "userId": "user_8812", "messageId": "ajs-next-0001-5b7a1d0e",
    "timestamp": "2024-03-14T15:09:26.535Z", "sentAt": "2024-03-14T15:09:26.600Z", "receivedAt": "2024-03-14T15:09:27.012Z",
    "context": {
        "library": {"name": "analytics.js", "version": "npm:next-1.70.0"}, "locale": "en-US",
        "page": {"path": "/pricing", "referrer": "https://www.google.com/", "search": "", "title": "Pricing - Acme",
                 "url": "https://www.acme.test/pricing"},
        "campaign": {"source": "newsletter", "medium": "email", "name": "spring"},
        "userAgent": "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36",
        "userAgentData": {"brands": [{"brand": "Chromium", "version": "124"}], "mobile": False, "platform": "Windows"},
        "ip": "203.0.113.42",
    },
    "integrations": {"Actions Amplitude": {"session_id": 1710428966000}},
}


def per_call_us(fn, seconds: float) -> float:
    n, start = 0, time.perf_counter()
    batch = 200
    while time.perf_counter() - start < seconds:
        for _ in range(batch):
            fn()
        n += batch
    return (time.perf_counter() - start) / n * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="time per measurement")
    args = parser.parse_args()
    mapper = Mapper({"api_key": "k", "secret_key": "s"})
    assert mapper.map(EVENT).outputs, "the bench event must map"
    mapping = per_call_us(lambda: mapper.map(EVENT, device_id="a1b2c3d4"), args.seconds)
    reference = per_call_us(lambda: orjson.loads(orjson.dumps(EVENT)), args.seconds)
    print(f"mapping (preset Track Calls -> logEventV2): {mapping:.1f} µs/event")
    print(f"reference orjson loads(dumps(event)):       {reference:.2f} µs/event")
    print(f"ratio mapping / orjson round trip:          {mapping / reference:.1f}x")


if __name__ == "__main__":
    main()
