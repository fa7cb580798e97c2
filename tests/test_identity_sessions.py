"""The pure session rules (SPEC section 3): touch, reconcile, and the message helpers."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgeproxy.identity.sessions import (
    ADOPT_LEEWAY_MS,
    MIN_EPOCH_MS,
    OUT_OF_SESSION,
    SessionState,
    adoptable_session_id,
    client_session_value,
    is_mismatch,
    is_web,
    may_stamp,
    parse_session_id,
    reconcile,
    stamp_session_id,
    touch,
)

T0 = 1_780_000_000_000  # an epoch-ms instant in 2026
TIMEOUT = 30 * 60 * 1000

times = st.integers(min_value=T0, max_value=T0 + 10 * 86_400_000)
timeouts = st.integers(min_value=1, max_value=3 * 3_600_000)


def state(session_id=T0, last=T0, count=1, user_id=None, first_seen=T0, **kw) -> SessionState:
    return SessionState(session_id=session_id, last_event_ms=last, event_count=count, user_id=user_id, first_seen=first_seen, **kw)


# --- touch: the examples SPEC names -------------------------------------------------


def test_no_state_starts_a_session_at_the_event_time():
    new, started = touch(None, T0 + 5, TIMEOUT)
    assert started
    assert new == SessionState(session_id=T0 + 5, last_event_ms=T0 + 5, event_count=1, user_id=None, first_seen=T0 + 5)


def test_no_state_adopts_the_plugin_session_id():
    new, started = touch(None, T0 + 60_000, TIMEOUT, adopt_session_id=T0)
    assert started
    assert (new.session_id, new.last_event_ms, new.first_seen) == (T0, T0 + 60_000, T0)


def test_adoption_allows_the_plugin_stamping_just_after_the_event():
    # analytics.js creates the event (its timestamp), then the plugin stamps Date.now():
    # a real first page view claims an id ~20 ms after the event. Refusing it was a mismatch.
    new, _ = touch(None, T0, TIMEOUT, adopt_session_id=T0 + 23)
    assert (new.session_id, new.last_event_ms, new.first_seen) == (T0 + 23, T0 + 23, T0)
    new, _ = touch(None, T0, TIMEOUT, adopt_session_id=T0 + ADOPT_LEEWAY_MS)
    assert new.session_id == T0 + ADOPT_LEEWAY_MS


def test_adoption_refused_for_an_id_long_after_its_first_event():
    new, _ = touch(None, T0, TIMEOUT, adopt_session_id=T0 + ADOPT_LEEWAY_MS + 1)
    assert new.session_id == T0


def test_adoption_refused_for_values_no_clock_produces():
    new, _ = touch(None, T0, TIMEOUT, adopt_session_id=MIN_EPOCH_MS - 1)
    assert new.session_id == T0
    new, _ = touch(None, T0, TIMEOUT, adopt_session_id=MIN_EPOCH_MS)
    assert new.session_id == MIN_EPOCH_MS


def test_adoption_ignored_when_state_exists():
    current = state(session_id=T0, last=T0 + 1000)
    new, started = touch(current, T0 + 2000, TIMEOUT, adopt_session_id=T0 + 500)
    assert not started and new.session_id == T0


def test_exactly_the_timeout_is_the_same_session():
    current = state(last=T0 + 1000)
    new, started = touch(current, T0 + 1000 + TIMEOUT, TIMEOUT)
    assert not started
    assert (new.session_id, new.last_event_ms, new.event_count) == (T0, T0 + 1000 + TIMEOUT, 2)


def test_one_ms_past_the_timeout_is_a_new_session():
    current = state(last=T0 + 1000, count=7, user_id="u1", first_seen=T0 - 5)
    new, started = touch(current, T0 + 1001 + TIMEOUT, TIMEOUT)
    assert started
    assert (new.session_id, new.last_event_ms, new.event_count) == (T0 + 1001 + TIMEOUT, T0 + 1001 + TIMEOUT, 1)
    assert new.user_id == "u1" and new.first_seen == T0 - 5


def test_rotation_ignores_an_adoptable_client_id():
    current = state(last=T0)
    new, started = touch(current, T0 + TIMEOUT + 10, TIMEOUT, adopt_session_id=T0 + 5)
    assert started and new.session_id == T0 + TIMEOUT + 10


def test_late_event_never_rotates_and_never_moves_last_event_back():
    current = state(session_id=T0 + 10 * TIMEOUT, last=T0 + 10 * TIMEOUT)
    new, started = touch(current, T0, TIMEOUT)  # ten timeouts late
    assert not started
    assert (new.session_id, new.last_event_ms, new.event_count) == (T0 + 10 * TIMEOUT, T0 + 10 * TIMEOUT, 2)
    assert new.first_seen == T0


def test_user_library_and_agent_overwrite_when_given_and_persist_otherwise():
    current = state(user_id="a", library="analytics.js", user_agent="UA1")
    new, _ = touch(current, T0 + 1, TIMEOUT)
    assert (new.user_id, new.library, new.user_agent) == ("a", "analytics.js", "UA1")
    new, _ = touch(new, T0 + 2, TIMEOUT, user_id="b", library="analytics-kotlin", user_agent="UA2")
    assert (new.user_id, new.library, new.user_agent) == ("b", "analytics-kotlin", "UA2")


# --- touch: properties ----------------------------------------------------------------


def split_sessions(sorted_times: list[int], timeout: int) -> list[int]:
    """Independent oracle for in-order arrivals: session id of each event by gap splitting."""
    ids, start = [], None
    for i, t in enumerate(sorted_times):
        if i == 0 or t - sorted_times[i - 1] > timeout:
            start = t
        ids.append(start)
    return ids


@given(st.lists(times, min_size=1, max_size=40), timeouts)
def test_in_order_events_split_exactly_at_gaps_longer_than_the_timeout(ts, timeout):
    ts = sorted(ts)
    s, got = None, []
    for t in ts:
        s, _ = touch(s, t, timeout)
        got.append(s.session_id)
    assert got == split_sessions(ts, timeout)


@given(st.lists(times, min_size=1, max_size=40), timeouts, st.one_of(st.none(), times))
def test_invariants_for_any_arrival_order(ts, timeout, adopt):
    s, running_max = None, None
    for i, t in enumerate(ts):
        new, started = touch(s, t, timeout, adopt_session_id=adopt if i == 0 else None)
        if s is None:
            assert started
        else:
            rotated = t - s.last_event_ms > timeout
            assert started == rotated
            assert (new.session_id != s.session_id) == rotated
            assert new.last_event_ms >= s.last_event_ms  # monotonic
            assert new.session_id >= s.session_id
            assert new.event_count == (1 if rotated else s.event_count + 1)
            assert new.first_seen <= s.first_seen
            if t <= s.last_event_ms:
                assert not started  # out of order never rotates
        if started:
            assert new.session_id <= t + ADOPT_LEEWAY_MS  # never beyond the plugin's stamping delay
        running_max = max(t, new.session_id) if running_max is None else max(running_max, t)
        assert new.last_event_ms == running_max
        assert new.session_id <= new.last_event_ms
        assert new.first_seen <= new.session_id
        s = new


@given(times, timeouts, st.integers(min_value=0, max_value=4 * 3_600_000))
def test_boundary_for_any_gap(last, timeout, gap):
    new, started = touch(state(session_id=last, last=last, first_seen=last), last + gap, timeout)
    assert started == (gap > timeout)


@given(times, st.integers(min_value=-10**13, max_value=10**13))
def test_adoption_only_within_plausible_past(t, adopt):
    new, started = touch(None, t, TIMEOUT, adopt_session_id=adopt)
    assert started
    expected = adopt if MIN_EPOCH_MS <= adopt <= t + ADOPT_LEEWAY_MS else t
    assert new.session_id == expected
    assert new.last_event_ms == max(t, expected)


# --- reconcile ------------------------------------------------------------------------


def test_reconcile_with_one_side_missing():
    a = state()
    assert reconcile(a, None) is a
    assert reconcile(None, a) is a
    assert reconcile(None, None) is None


def test_reconcile_prefers_a_later_session_but_keeps_known_user():
    stored = state(session_id=T0, last=T0 + 5, user_id="u", library="analytics.js", first_seen=T0 - 100)
    carried = state(session_id=T0 + TIMEOUT * 2, last=T0 + TIMEOUT * 2, first_seen=T0 + TIMEOUT * 2)
    out = reconcile(stored, carried)
    assert (out.session_id, out.last_event_ms, out.user_id, out.library, out.first_seen) == (
        T0 + TIMEOUT * 2, T0 + TIMEOUT * 2, "u", "analytics.js", T0 - 100,
    )


def test_reconcile_same_session_takes_maxima():
    stored = state(last=T0 + 10, count=3, user_id="u")
    carried = state(last=T0 + 20, count=2)
    out = reconcile(stored, carried)
    assert (out.last_event_ms, out.event_count, out.user_id) == (T0 + 20, 3, "u")


def test_reconcile_ignores_an_older_replayed_cookie():
    stored = state(session_id=T0 + TIMEOUT * 3, last=T0 + TIMEOUT * 3)
    old_cookie = state(session_id=T0, last=T0 + 100, count=50)
    assert reconcile(stored, old_cookie) is stored


session_states = st.builds(
    lambda sid, extra, count, fs: SessionState(sid, sid + extra, count, None, min(fs, sid)),
    times, st.integers(0, 10**7), st.integers(1, 1000), times,
)


@given(session_states, session_states)
def test_reconcile_never_moves_a_session_back(a, b):
    out = reconcile(a, b)
    assert out.session_id == max(a.session_id, b.session_id)
    if a.session_id == b.session_id:
        assert out.last_event_ms == max(a.last_event_ms, b.last_event_ms)
        assert out.event_count == max(a.event_count, b.event_count)
    assert reconcile(out, b) == out  # idempotent


# --- message helpers --------------------------------------------------------------------


@pytest.mark.parametrize(
    "value, expected",
    [
        (T0, T0), (str(T0), T0), (f" {T0} ", T0), (-1, OUT_OF_SESSION), ("-1", OUT_OF_SESSION),
        (0, None), (-5, None), ("0", None), (True, None), (False, None), (1.5e12, None),
        ("2026-01-01T00:00:00Z", None), ("abc", None), (None, None), ({}, None), ("1" * 19, None),
        ("١٢٣", None),  # non-ASCII digits are not a session id
    ],
)
def test_parse_session_id(value, expected):
    assert parse_session_id(value) == expected


def msg(session_id=None, *, present=True, **extra):
    m = {"type": "track", **extra}
    if present:
        m["integrations"] = {"Actions Amplitude": {"session_id": session_id}}
    return m


def test_client_session_value():
    assert client_session_value(msg(T0)) == (True, T0)
    assert client_session_value(msg(None)) == (False, None)
    assert client_session_value({"integrations": {"Actions Amplitude": True}}) == (False, None)
    assert client_session_value({"integrations": "x"}) == (False, None)
    assert client_session_value({}) == (False, None)


@pytest.mark.parametrize(
    "value, expected",
    [(T0, T0), (str(T0), T0), (-1, None), (MIN_EPOCH_MS - 1, None), ("x", None), (None, None)],
)
def test_adoptable_session_id(value, expected):
    assert adoptable_session_id(msg(value)) == expected


@pytest.mark.parametrize(
    "message, expected",
    [
        (msg(T0), False), (msg(str(T0)), False), (msg(T0 + 1), True), (msg(-1), False),
        (msg("garbage"), True), (msg(present=False), False), (msg(None), False),
    ],
)
def test_is_mismatch(message, expected):
    assert is_mismatch(message, T0) == expected


@pytest.mark.parametrize(
    "integrations, expected",
    [
        (None, True), ("junk", True), ({}, True), ({"All": False}, False), ({"All": True}, True),
        ({"All": False, "Actions Amplitude": {}}, True), ({"All": False, "Actions Amplitude": True}, True),
        ({"Actions Amplitude": False}, False), ({"Actions Amplitude": {"session_id": 1}}, True),
    ],
)
def test_may_stamp(integrations, expected):
    m = {} if integrations is None else {"integrations": integrations}
    assert may_stamp(m) == expected


@pytest.mark.parametrize(
    "before",
    [{}, {"integrations": None}, {"integrations": "x"}, {"integrations": {"Actions Amplitude": True}},
     {"integrations": {"Actions Amplitude": {"session_id": 5, "other": 1}, "Mixpanel": False}}],
)
def test_stamp_session_id_creates_what_is_missing_and_keeps_the_rest(before):
    m = dict(before)
    stamp_session_id(m, T0)
    assert m["integrations"]["Actions Amplitude"]["session_id"] == T0
    if before.get("integrations") and isinstance(before["integrations"], dict) and "Mixpanel" in before["integrations"]:
        assert m["integrations"]["Mixpanel"] is False
        assert m["integrations"]["Actions Amplitude"]["other"] == 1


@pytest.mark.parametrize(
    "message, cookies, expected",
    [
        ({"context": {"library": {"name": "analytics.js"}}}, False, True),
        ({"context": {"library": {"name": "analytics-kotlin"}}}, False, False),
        ({"context": {"library": {"name": "analytics-kotlin"}}}, True, True),
        ({"context": {"library": "analytics.js"}}, False, False),
        ({"context": None}, False, False),
        ({}, False, False),
        ({}, True, True),
    ],
)
def test_is_web(message, cookies, expected):
    assert is_web(message, cookies) == expected


@given(session_states, st.one_of(st.none(), st.text(max_size=20)))
@settings(max_examples=50)
def test_state_round_trips_through_dict(s, user):
    s = SessionState(s.session_id, s.last_event_ms, s.event_count, user, s.first_seen, "lib", None)
    assert SessionState.from_dict(s.to_dict()) == s


@pytest.mark.parametrize(
    "patch, field",
    [({"session_id": "1"}, "session_id"), ({"event_count": True}, "event_count"), ({"user_id": 5}, "user_id"),
     ({"first_seen": None}, "first_seen")],
)
def test_state_from_dict_names_the_wrong_field(patch, field):
    data = {**state().to_dict(), **patch}
    with pytest.raises(ValueError, match=field):
        SessionState.from_dict(data)
