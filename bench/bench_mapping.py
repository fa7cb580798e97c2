"""µs per event of the mapping for typical analytics.js track, page and identify events.

Each case goes through the default presets (Track Calls / Page Calls -> logEventV2, Identify
Calls -> identifyUser). As in real traffic, every event has its own timestamp and message id
(a ring of ``RING`` variants, more than any cache in the mapping holds), while the user agent
repeats (a site sees few distinct browsers); ``--same-event`` maps one event over and over
instead, as the first version of this bench did. Reported with a reference figure measured in
the same run: a plain ``orjson.loads(orjson.dumps(event))`` round trip of the track event, so
the ratio is comparable across machines. Run:
``python bench/bench_mapping.py [--seconds 2] [--repeat 3] [--same-event]``; each figure is the
best of ``--repeat`` runs (the least disturbed by other processes).
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from edgeproxy.mapping import Mapper, useragent  # noqa: E402

_CONTEXT = {
    "library": {"name": "analytics.js", "version": "npm:next-1.70.0"}, "locale": "en-US",
    "page": {"path": "/pricing", "referrer": "https://www.google.com/", "search": "", "title": "Pricing - Acme",
             "url": "https://www.acme.test/pricing"},
    "campaign": {"source": "newsletter", "medium": "email", "name": "spring"},
    "userAgent": "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36",
    "userAgentData": {"brands": [{"brand": "Chromium", "version": "124"}], "mobile": False, "platform": "Windows"},
    "ip": "203.0.113.42",
}
_COMMON = {
    "anonymousId": "a1b2c3d4-0000-4000-8000-00000000a001", "userId": "user_8812",
    "timestamp": "2024-03-14T15:09:26.535Z", "sentAt": "2024-03-14T15:09:26.600Z", "receivedAt": "2024-03-14T15:09:27.012Z",
    "context": _CONTEXT,
    "integrations": {"Actions Amplitude": {"session_id": 1710428966000}},
}
EVENT = {
    "type": "track", "event": "Signup Button Clicked", "properties": {"button": "hero", "plan": "team", "seats": 5},
    "messageId": "ajs-next-0001-5b7a1d0e", **_COMMON,
}
PAGE = {
    "type": "page", "name": "Pricing", "messageId": "ajs-next-0002-5b7a1d0e",
    "properties": {"path": "/pricing", "referrer": "https://www.google.com/", "search": "", "title": "Pricing - Acme",
                   "url": "https://www.acme.test/pricing", "name": "Pricing"},
    **_COMMON,
}
IDENTIFY = {
    "type": "identify", "messageId": "ajs-next-0003-5b7a1d0e",
    "traits": {"email": "ada@acme.test", "plan": "team", "name": "Ada Lovelace", "createdAt": "2024-01-02T03:04:05Z"},
    **_COMMON,
}
CASES = [
    ("track    (Track Calls -> logEventV2)", EVENT),
    ("page     (Page Calls -> logEventV2)", PAGE),
    ("identify (Identify Calls -> identifyUser)", IDENTIFY),
]


RING = 4096


def variants(event: dict) -> list[dict]:
    """``RING`` shallow copies of ``event``, each with its own timestamp and message id."""
    base = 1710428966535
    out = []
    for i in range(RING):
        ms = base + i * 1234
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms // 1000)) + f".{ms % 1000:03d}Z"
        out.append({**event, "timestamp": stamp, "messageId": f"{event['messageId']}-{i}"})
    return out


def per_call_us(fn, seconds: float) -> float:
    n, start = 0, time.perf_counter()
    batch = 200
    while time.perf_counter() - start < seconds:
        for _ in range(batch):
            fn()
        n += batch
    return (time.perf_counter() - start) / n * 1e6


def best_of(fn, seconds: float, repeat: int) -> float:
    return min(per_call_us(fn, seconds) for _ in range(repeat))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="time per measurement")
    parser.add_argument("--repeat", type=int, default=3, help="measurements per figure; the best one is printed")
    parser.add_argument("--same-event", action="store_true", help="map one event repeatedly (caches warm)")
    args = parser.parse_args()
    mapper = Mapper({"api_key": "k", "secret_key": "s"})
    reference = best_of(lambda: orjson.loads(orjson.dumps(EVENT)), args.seconds, args.repeat)
    for label, event in CASES:
        mapped = mapper.map(event)
        assert mapped.outputs and not mapped.errors, f"the bench event {label} must map: {mapped.errors}"
        ring = itertools.repeat(event) if args.same_event else itertools.cycle(variants(event))
        us = best_of(lambda ring=ring: mapper.map(next(ring), device_id="a1b2c3d4"), args.seconds, args.repeat)
        print(f"mapping {label:<42} {us:6.1f} µs/event  ({us / reference:.1f}x orjson round trip)")
    # User agents as real traffic mixes them: the 496 of the conformance cases, each parsed
    # once (a miss: uap-core plus the rule table), then a track event cycling through them
    # (the parse cache holds them all, as it holds a site's browsers).
    agents = user_agents()
    cold = best_of(lambda it=itertools.cycle(agents): useragent._parse.__wrapped__(next(it)), args.seconds, args.repeat)
    print(f"user-agent parse, uncached ({len(agents)} distinct agents) {'':<12}{cold:6.1f} µs/agent")
    mixed = [{**e, "context": {**e["context"], "userAgent": a}} for e, a in zip(variants(EVENT), itertools.cycle(agents))]
    ring = itertools.cycle(mixed)
    us = best_of(lambda: mapper.map(next(ring), device_id="a1b2c3d4"), args.seconds, args.repeat)
    print(f"mapping track, {len(agents)} user agents in turn (cached) {'':<11}{us:6.1f} µs/event  "
          f"({us / reference:.1f}x orjson round trip)")
    print(f"reference orjson loads(dumps(track event)) {'':<26}{reference:6.2f} µs/event")


def user_agents() -> list[str]:
    cases = Path(__file__).resolve().parent.parent / "tests" / "conformance" / "useragent-cases.jsonl"
    agents = (orjson.loads(line)["event"]["context"].get("userAgent") for line in cases.read_text().splitlines() if line)
    return [a for a in dict.fromkeys(agents) if isinstance(a, str) and a]


if __name__ == "__main__":
    main()
