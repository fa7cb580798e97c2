"""wrk as the load generator: the request bodies, the Lua scripts and one checked run.

Why Lua everywhere: wrk's own summary rounds latencies to two digits and says nothing a
program can parse reliably, so every script ends with a ``done()`` that prints one JSON line
(requests, duration, every error counter, p50/p99 in microseconds). Scripts also give each
new visitor its own anonymousId and messageId, and the moderate-rate runs a per-request
``delay()`` (wrk has no rate option).

Bodies are shaped like analytics.js (next-1.84.3) sends them: ``text/plain`` JSON with
context.library, page, userAgent, locale, timezone, integrations, messageId, anonymousId,
timestamp, sentAt and writeKey, about 1.2 KB per event.
"""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from _servers import LOAD_CORE, BenchError, find_tool, pinned

USER_AGENT = ("Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) "
              "Chrome/131.0.0.0 Safari/537.36")
SITE = "https://www.shop.test"
BATCH_SIZE = 20
MODERATE_CONNECTIONS = 10
MODERATE_DELAY_MS = 10  # 10 connections, each waiting 10 ms on average between requests: ~1,000 req/s

# Placeholders substituted per request by the new-visitor script (never valid ids themselves).
ANON_MARK = "@@ANON@@"
MSG_MARK = "@@MSG@@"


def iso_ms(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t * 1000) % 1000:03d}Z"


def track_event(anonymous_id: str, message_id: str, t: float, *, seq: int = 0) -> dict[str, Any]:
    """One analytics.js track call (as analytics-next 1.84.3 builds it), ~1.2 KB of JSON."""
    session_ms = int(t * 1000) - 60_000
    return {
        "timestamp": iso_ms(t),
        "integrations": {"Actions Amplitude": {"session_id": session_ms}},
        "type": "track",
        "event": "Product Added",
        "properties": {"product_id": f"sku-{1000 + seq}", "name": "Merino Wool Runner", "category": "Shoes",
                       "price": 98.5, "quantity": 1, "currency": "USD", "cart_id": "c-7f3a9e21"},
        "context": {
            "page": {"path": "/products/merino-wool-runner", "referrer": "https://www.google.com/", "search": "?color=grey",
                     "title": "Merino Wool Runner - Shop", "url": f"{SITE}/products/merino-wool-runner?color=grey"},
            "userAgent": USER_AGENT,
            "userAgentData": {"brands": [{"brand": "Google Chrome", "version": "131"},
                                         {"brand": "Chromium", "version": "131"},
                                         {"brand": "Not_A Brand", "version": "24"}],
                              "mobile": False, "platform": "macOS"},
            "locale": "en-US",
            "timezone": "Europe/Berlin",
            "library": {"name": "analytics.js", "version": "next-1.84.3"},
        },
        "messageId": message_id,
        "anonymousId": anonymous_id,
        "writeKey": "bench-write-key",
        "userId": None,
        "sentAt": iso_ms(t + 0.012),
        "_metadata": {"bundled": ["Segment.io", "Actions Amplitude"], "unbundled": [], "bundledIds": ["amp-1"]},
    }


def single_body(t: float, anonymous_id: str = "0b7e5d7c-3f1a-4c1e-9a55-2f6d8c1b4e90",
                message_id: str = "ajs-next-1732366000000-6f0e2c71-8a4b-4a0f-b3c9-5d2e7f1a9c04") -> str:
    return json.dumps(track_event(anonymous_id, message_id, t), separators=(",", ":"))


def batch_body(t: float, anonymous_id: str = "0b7e5d7c-3f1a-4c1e-9a55-2f6d8c1b4e90", size: int = BATCH_SIZE) -> str:
    """What analytics.js's batching delivery strategy posts to /v1/b: ``size`` events of one
    visitor, without their own sentAt (the batch has one)."""
    events = [track_event(anonymous_id, f"ajs-next-{int(t * 1000)}-{uuid.UUID(int=i).hex}", t + i * 0.05, seq=i)
              for i in range(size)]
    for event in events:
        del event["sentAt"]
    return json.dumps({"batch": events, "sentAt": iso_ms(t + 1.1), "writeKey": "bench-write-key"}, separators=(",", ":"))


def _lua_str(text: str) -> str:
    """A Lua long string holding ``text`` exactly (JSON never contains ``]==]``)."""
    assert "]==]" not in text
    return f"[==[{text}]==]"


def _headers_lua(cookie: str | None, post: bool) -> str:
    headers = {"User-Agent": USER_AGENT, "Accept": "*/*", "Accept-Language": "en-US,en;q=0.9",
               "Accept-Encoding": "gzip, deflate, br"}
    if post:
        headers.update({"Content-Type": "text/plain", "Origin": SITE, "Referer": f"{SITE}/products/merino-wool-runner"})
    if cookie:
        headers["Cookie"] = cookie
    return "".join(f'wrk.headers["{k}"] = {_lua_str(v)}\n' for k, v in headers.items())


DONE_LUA = r"""
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests":%d,"duration_us":%d,"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d,' ..
    '"p50_us":%d,"p99_us":%d,"mean_us":%.1f}\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(99), latency.mean))
end
"""

# A random pause (0 to twice the mean, in whole ms) rather than a fixed one: with a fixed pause
# the connections stay in step and arrive as bursts of ten at once, so the figure measured
# queueing behind the burst. Visitors are independent; so are these connections.
DELAY_LUA = f"\ndelay = function() return math.random(0, {2 * MODERATE_DELAY_MS}) end\n"

NEW_VISITOR_LUA = r"""
local parts = {}
for piece in (BODY .. ANON):gmatch("(.-)" .. ANON) do parts[#parts + 1] = piece end
local n = 0
request = function()
  n = n + 1
  local id = string.format("%s-%012x", RUN, n)
  local body = table.concat(parts, id):gsub(MSG, "ajs-next-" .. id)
  return wrk.format(nil, nil, nil, body)
end
"""


def script(path: Path, *, body: str | None = None, cookie: str | None = None, new_visitors: bool = False,
           moderate: bool = False) -> Path:
    """Write a wrk script: POST ``body`` (or GET when None), new visitors, moderate rate."""
    lua = [_headers_lua(cookie, post=body is not None)]
    if body is not None:
        lua.append('wrk.method = "POST"\n')
        if new_visitors:
            # Each run gets its own id prefix, so no two requests of the whole bench share a visitor.
            run = uuid.uuid4().hex
            run_prefix = f"{run[:8]}-{run[8:12]}-4{run[13:16]}-8{run[17:20]}"
            lua.append(f"local BODY = {_lua_str(body)}\nlocal ANON = '{ANON_MARK}'\nlocal MSG = '{MSG_MARK}'\n"
                       f"local RUN = '{run_prefix}'\n")
            lua.append(NEW_VISITOR_LUA)
        else:
            lua.append(f"wrk.body = {_lua_str(body)}\n")
    if moderate:
        lua.append(DELAY_LUA)
    lua.append(DONE_LUA)
    path.write_text("".join(lua))
    return path


@dataclass(frozen=True)
class WrkResult:
    """One wrk run: achieved rate and latency percentiles (µs)."""

    rps: float
    p50_us: float
    p99_us: float
    requests: int


def run(url: str, script_path: Path, *, seconds: float, connections: int, label: str) -> WrkResult:
    """One wrk run on the load core; raises BenchError on any non-2xx answer or socket error.

    A figure measured on error responses (a 503 is cheap) or broken connections would flatter
    the server under test, so there is no tolerance at all.
    """
    argv = pinned([find_tool("wrk"), "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--timeout", "5s",
                   "-s", str(script_path), url], LOAD_CORE)
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("WRKJSON ")), None)
    if proc.returncode != 0 or line is None:
        raise BenchError(f"bench: wrk failed for {label} (exit {proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    stats = json.loads(line[len("WRKJSON "):])
    errors = {k: stats[k] for k in ("connect", "read", "write", "status", "timeout") if stats[k]}
    if errors or stats["requests"] == 0:
        raise BenchError(f"bench: {label}: the server under test failed under load "
                         f"({stats['requests']} requests, errors {errors}; 'status' = non-2xx/3xx answers):\n{proc.stdout}")
    return WrkResult(rps=stats["requests"] / (stats["duration_us"] / 1e6), p50_us=float(stats["p50_us"]),
                     p99_us=float(stats["p99_us"]), requests=int(stats["requests"]))
