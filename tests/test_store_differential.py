"""The Redis store's Lua touch against the Python rule, on random request sequences.

``RedisSessionStore.touch`` restates ``TouchRequest.apply`` (``sessions.reconcile`` then
``sessions.touch``) in Lua so that a touch is one round trip. Two copies of a rule drift
unless something compares them: each example here applies one random sequence of touch
requests to a memory store and to a Redis store and requires the same ``(old, new,
started)`` at every step, then the same stored state.

The sequences aim at the rule's edges: gaps of exactly the timeout and one either side,
late (out-of-order) events, adopted ids valid and not (before ``MIN_EPOCH_MS``, after the
event, beyond 2**53), carried cookie states newer, older, equal or absent, optional strings
None, empty or awkward for JSON and Lua, and epoch values up to just below 2**53 (Lua's
numbers are doubles).
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import event, given, note
from hypothesis import settings as hsettings
from hypothesis import strategies as hst

from edgeproxy.identity.redis_store import RedisSessionStore
from edgeproxy.identity.sessions import ADOPT_LEEWAY_MS, MIN_EPOCH_MS, SessionState
from edgeproxy.identity.store import MemorySessionStore, TouchRequest

T0 = 1_780_000_000_000
STORE_TIMEOUT_MS = 30 * 60_000
EXAMPLES = 400

BASES = [MIN_EPOCH_MS, T0, 2**41 + 7, 2**52 + 12_345, 2**53 - 10**11]
TIMEOUTS = [1, 1_000, 60_000, 30 * 60_000, 9_999_991]
STRINGS = hst.one_of(
    hst.none(),
    hst.sampled_from(["", "a", "Alice", "analytics.js", "user/é", '"q"\\', "😀", "\x00\n\t\x7f", "x" * 600, "null",
                      "1"]),
    hst.text(max_size=12),
)


@pytest.fixture(scope="module")
def redis_runner(tmp_path_factory):
    """An event loop that outlives the examples, and a Redis store bound to it."""
    from redis_server import redis_server

    with redis_server(Path(tmp_path_factory.mktemp("differential-redis"))) as url:
        runner = asyncio.Runner()
        store = runner.run(_open(url))
        try:
            yield runner, store
        finally:
            runner.run(store.close())
            runner.close()


async def _open(url: str) -> RedisSessionStore:
    return RedisSessionStore.from_url(url, timeout_ms=STORE_TIMEOUT_MS, prefix=f"diff{uuid.uuid4().hex[:8]}:")


class Draws:
    """The strategies of one example, built once (building them per draw dominated the run)."""

    def __init__(self, data, timeout: int):
        self.data = data
        edges = [0, 1, -1, timeout, timeout + 1, timeout - 1, -timeout, -timeout - 1, 2 * timeout + 1]
        # An offset that is often on an edge of the rule (0, ±1, ±timeout, ±timeout±1).
        self.delta = hst.one_of(hst.sampled_from(edges), hst.integers(-3 * timeout, 3 * timeout))
        self.first_seen_shift = hst.sampled_from([0, -1, 1, -timeout])
        self.fresh_first_seen = hst.sampled_from([0, 1, timeout, 10**9])
        # Adopted ids: relative to the event (valid up to ADOPT_LEEWAY_MS after it, invalid beyond) or fixed
        # (the MIN_EPOCH_MS boundary, an 18-digit id beyond 2**53, garbage).
        self.adopt = hst.one_of(
            hst.none(),
            hst.tuples(hst.just("rel"), hst.one_of(self.delta, hst.sampled_from(
                [ADOPT_LEEWAY_MS - 1, ADOPT_LEEWAY_MS, ADOPT_LEEWAY_MS + 1]))),
            hst.tuples(hst.just("abs"),
                       hst.sampled_from([MIN_EPOCH_MS, MIN_EPOCH_MS - 1, MIN_EPOCH_MS + 1, 10**18 - 1, 1])),
        )

    def draw(self, strategy, label: str):
        return self.data.draw(strategy, label=label)

    def adopt_id(self, t: int) -> int | None:
        drawn = self.draw(self.adopt, "adopt")
        if drawn is None:
            return None
        kind, value = drawn
        return t + value if kind == "rel" else value

    def carried(self, state: SessionState | None, t: int) -> SessionState | None:
        kind = self.draw(CARRIED_KINDS, "carried")
        if kind == "none" or (state is None and kind in ("equal", "mutated")):
            return None
        if kind == "equal":
            return state
        if kind == "mutated":  # the store's state as a cookie might carry it: newer, older, same
            return replace(
                state,
                session_id=state.session_id + self.draw(self.delta, "carried.session_id"),
                last_event_ms=state.last_event_ms + self.draw(self.delta, "carried.last_event_ms"),
                event_count=max(0, state.event_count + self.draw(COUNT_SHIFT, "carried.count")),
                first_seen=state.first_seen + self.draw(self.first_seen_shift, "carried.first_seen"),
                user_id=state.user_id if self.draw(KEEP, "keep user_id") else self.draw(STRINGS, "carried.user_id"),
                library=state.library if self.draw(KEEP, "keep library") else self.draw(STRINGS, "carried.library"),
                user_agent=state.user_agent if self.draw(KEEP, "keep ua") else self.draw(STRINGS, "carried.user_agent"),
                consent=state.consent if self.draw(KEEP, "keep consent") else self.draw(CONSENTS, "carried.consent"),
            )
        session_id = t + self.draw(self.delta, "fresh.session_id")
        return SessionState(
            session_id=session_id,
            last_event_ms=session_id + abs(self.draw(self.delta, "fresh.last")),
            event_count=self.draw(COUNTS, "fresh.count"),
            user_id=self.draw(STRINGS, "fresh.user_id"),
            first_seen=session_id - self.draw(self.fresh_first_seen, "fresh.first_seen"),
            library=self.draw(STRINGS, "fresh.library"),
            user_agent=self.draw(STRINGS, "fresh.user_agent"),
            consent=self.draw(CONSENTS, "fresh.consent"),
        )


CONSENTS = hst.sampled_from([None, "", "granted", "denied", "absent", "gpc", "not_required"])
CARRIED_KINDS = hst.sampled_from(["none", "equal", "mutated", "fresh"])
COUNT_SHIFT = hst.integers(-3, 3)
COUNTS = hst.integers(0, 1_000)
KEEP = hst.booleans()
BASE = hst.sampled_from(BASES)
TIMEOUT = hst.one_of(hst.sampled_from(TIMEOUTS), hst.integers(1, 10**7))
STEPS = hst.integers(1, 30)
DEVICE = hst.integers(0, 1)


def outcomes(old: SessionState | None, request: TouchRequest, new: SessionState, started: bool):
    """Labels for the rule's edges this step hit (reported with --hypothesis-show-statistics)."""
    carried, t, adopt = request.carried, request.t_ms, request.adopt_session_id
    stored = old is not None
    return [
        ("gap exactly the timeout", stored and t - old.last_event_ms == request.timeout_ms),
        ("rotated past the timeout", started and stored and carried is None),
        ("late event", stored and t < old.last_event_ms),
        ("adopted a client id", started and adopt is not None and new.session_id == adopt != t),
        ("carried a newer session", carried is not None and stored and carried.session_id > old.session_id),
        ("carried the same session, further on", carried is not None and stored
         and carried.session_id == old.session_id
         and (carried.last_event_ms > old.last_event_ms or carried.event_count > old.event_count)),
        ("carried an older session", carried is not None and stored and carried.session_id < old.session_id),
        ("empty-string field", "" in (request.user_id, request.library, request.user_agent)),
        ("beyond 2**52", t > 2**52),
    ]


@hsettings(max_examples=EXAMPLES)
@given(data=hst.data())
def test_redis_touch_agrees_with_the_python_rule(redis_runner, data):
    runner, redis = redis_runner
    base = data.draw(BASE, label="base")
    timeout = data.draw(TIMEOUT, label="timeout")
    steps = data.draw(STEPS, label="steps")
    draws = Draws(data, timeout)
    devices = [f"dev-{uuid.uuid4()}", f"dev-{uuid.uuid4()}"]  # fresh keys: no flush between examples

    async def run() -> None:
        memory = MemorySessionStore(timeout_ms=STORE_TIMEOUT_MS, clock=lambda: T0 / 1000)
        latest = {d: base for d in devices}  # latest event time so far per device
        for step in range(steps):
            device = devices[draws.draw(DEVICE, "device")] if step else devices[0]
            t = latest[device] + draws.draw(draws.delta, "gap")
            latest[device] = max(latest[device], t)
            state = await memory.get(device)
            request = TouchRequest(
                t_ms=t,
                timeout_ms=timeout,
                carried=draws.carried(state, t),
                adopt_session_id=draws.adopt_id(t),
                user_id=draws.draw(STRINGS, "user_id"),
                library=draws.draw(STRINGS, "library"),
                user_agent=draws.draw(STRINGS, "user_agent"),
                consent=draws.draw(CONSENTS, "consent"),
            )
            note(f"step {step}: {device[:6]} {request}")
            expected = await memory.touch(device, request)
            assert await redis.touch(device, request) == expected, f"step {step}"
            old, new, started = expected
            for label, seen in outcomes(old, request, new, started):
                if seen:
                    event(label)  # --hypothesis-show-statistics: how often each edge was hit
        for device in devices:
            assert await redis.get(device) == await memory.get(device)

    runner.run(run())

