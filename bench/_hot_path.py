"""``_inproc.py hot-path``: the compiled modules' own work, timed alone, best of 5.

``segment.normalize`` of an analytics.js track call, ``sessions.touch`` of a returning
visitor's session, then the default mapping of the message (less the JSON parse, timed apart);
the relay's request body per message (``segment_api.request_body``); and a returning
visitor's cookies for one call (``identity.cookies``, not compiled: read, the session's
signed, written). Run once compiled and once with ``EDGEPROXY_PURE_PYTHON=1``.
"""

from __future__ import annotations

import time
import timeit
import uuid
from datetime import datetime, timezone
from typing import Any

import orjson
from _wrk import USER_AGENT, track_event

TIMEOUT_MS = 30 * 60 * 1000
LIBRARY = "analytics.js"


def hot_path(events: int) -> dict[str, Any]:
    """µs an event of the compiled modules' work (normalise, touch, map, less the JSON parse),
    of the relay's request body per message, and of a returning visitor's cookies per call."""
    from edgeproxy import compiled, segment, segment_api
    from edgeproxy.identity import sessions
    from edgeproxy.mapping import Mapper
    from edgeproxy.pipeline import relay_record

    mapper = Mapper({}, strict_settings=False)  # the default presets, as a server maps (no settings check)
    bodies = [orjson.dumps(track_event(str(uuid.uuid4()), f"ajs-next-{i}", time.time())) for i in range(100)]
    now = datetime.now(timezone.utc)
    state, _ = sessions.touch(None, int(now.timestamp() * 1000), TIMEOUT_MS, library=LIBRARY, user_agent=USER_AGENT)

    def parse_only() -> None:
        for body in bodies:
            orjson.loads(body)

    def work() -> None:
        t = int(now.timestamp() * 1000)
        for body in bodies:
            msg = segment.normalize(orjson.loads(body), path_type="track", received=now)
            sessions.touch(state, t, TIMEOUT_MS, library=LIBRARY, user_agent=USER_AGENT, user_id=msg.get("userId"))
            mapper.map(msg, device_id=msg["anonymousId"])

    # The relay's request body: the messages as stored (normalized, sentAt last), waited 300 ms.
    now_ms = int(now.timestamp() * 1000)
    stored = [(orjson.dumps(relay_record(segment.normalize(orjson.loads(b), path_type="track", received=now), write_key="wk",
                                         device_id=None, session_id=None, received_ms=now_ms - 300).item), now_ms - 300)
              for b in bodies]

    def relay_body() -> None:
        segment_api.request_body(stored, now_ms)

    cookie_work = _cookie_work(now_ms)

    loops = max(1, events // len(bodies))
    parse = min(timeit.repeat(parse_only, number=loops, repeat=5)) / (loops * len(bodies))
    total = min(timeit.repeat(work, number=loops, repeat=5)) / (loops * len(bodies))
    relay = min(timeit.repeat(relay_body, number=loops, repeat=5)) / (loops * len(bodies))
    calls = loops * len(bodies)
    cookie = min(timeit.repeat(cookie_work, number=calls, repeat=5)) / calls
    return {"status": compiled.status(), "us_per_event": (total - parse) * 1e6, "relay_body_us": relay * 1e6,
            "cookies_us": cookie * 1e6}


def _cookie_work(now_ms: int) -> Any:
    """A returning visitor's cookies through ``identity.cookies`` for one tracking call: the two
    signed cookies read from a Cookie header (both remembered, as a server's are), the moved-on
    session cookie signed, and the three Set-Cookie values written."""
    from edgeproxy.identity.cookies import (
        READABLE_LAST_ACCESS_COOKIE,
        READABLE_SESSION_COOKIE,
        CookieCodec,
        CookiePolicy,
        cookie_values,
    )
    from edgeproxy.identity.sessions import SessionState

    codec, policy = CookieCodec(["bench-signing-key-" * 2], max_age_s=400 * 86400), CookiePolicy(secure=False)
    device = str(uuid.uuid4())
    state = SessionState(session_id=now_ms - 60_000, last_event_ms=now_ms - 1_000, event_count=3, user_id=None,
                         first_seen=now_ms - 60_000)
    header = (f'ajs_anonymous_id=%22{device}%22; ajs_user_id=null; {policy.device_cookie}={codec.dump_device(device)}; '
              f"{policy.session_cookie}={codec.dump_session(device, state)}; {READABLE_SESSION_COOKIE}={state.session_id}")
    names = (policy.device_cookie, policy.session_cookie)
    step = iter(range(1, 10**9))

    def work() -> list[str]:
        values = cookie_values(header, names)
        loaded = codec.load_device_signed(values[policy.device_cookie])
        assert loaded is not None
        session = codec.load_session(values[policy.session_cookie], loaded[0])
        assert session is not None
        moved = SessionState(session_id=session.session_id, last_event_ms=session.last_event_ms + next(step),
                             event_count=session.event_count + 1, user_id=None, first_seen=session.first_seen)
        out = [policy.signed(policy.session_cookie, codec.dump_session(loaded[0], moved)),
               policy.readable(READABLE_SESSION_COOKIE, moved.session_id),
               policy.readable(READABLE_LAST_ACCESS_COOKIE, moved.last_event_ms)]
        return [c.header_value() for c in out]

    return work
