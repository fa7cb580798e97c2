"""The session rules, as pure functions of a state, an event time and a timeout.

Why pure: the rules are the product (SPEC section 3), and a function with no clock, no
store and no I/O can be tested exhaustively (property tests) and called from inside an
atomic read-modify-write of any store backend (the memory store runs them in Python; Redis
runs them as one Lua script, which tests/test_store_differential.py holds to these rules).

Definitions (Amplitude's): a session id is the epoch-ms time of the session's first event.
A session ends when the gap between an event and the latest event seen exceeds the idle
timeout. Events that arrive late (event time before the latest seen) never rotate a session.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from edgeproxy.segment import library_name

# The integration key under which Segment's plugins (web and mobile) carry the session id.
AMPLITUDE_KEY = "Actions Amplitude"

# Amplitude's "no session" marker; the React Native and Swift plugins send it before their
# first session exists. It is never adopted, never replaced on non-web events, and on web
# events it is replaced by the server's id without counting as a mismatch (the client
# claimed no session, so there is nothing to disagree with).
OUT_OF_SESSION = -1

# Session ids below this (2001-09-09) are not epoch milliseconds a real clock produced; a
# client sending one is broken, so it is not adopted.
MIN_EPOCH_MS = 1_000_000_000_000

# How far after its first event a plugin's session id may be and still be adopted. The
# plugin stamps when it runs, after analytics.js created the event (and its timestamp):
# tens of ms on a normal page load, seconds while plugins load; the skew correction leaves
# the event time in the server's clock, so honest browsers' small clock drift is in it too.
# Refusing such an id made the first events of every fast visitor count as a mismatch.
# Shorter than any idle timeout, so an adopted id never overtakes the session after it.
ADOPT_LEEWAY_MS = 60_000

WEB_LIBRARY = "analytics.js"


@dataclass(frozen=True, slots=True)
class SessionState:
    """What the server knows about one device's current session.

    Slotted: the memory store holds one per live visitor (a third of the size with a dict).
    """

    session_id: int  # epoch ms of the session's first event (Amplitude's definition)
    last_event_ms: int  # latest event time seen in this session
    event_count: int  # events seen in this session
    user_id: str | None
    first_seen: int  # epoch ms the device was first seen
    library: str | None = None
    user_agent: str | None = None
    consent: str | None = None  # the latest event's consent state (privacy.consent.STATES), for /debug

    def to_dict(self) -> dict[str, Any]:
        """Plain form for stores and /debug (short keys are not worth the obscurity here)."""
        return {
            "session_id": self.session_id,
            "last_event_ms": self.last_event_ms,
            "event_count": self.event_count,
            "user_id": self.user_id,
            "first_seen": self.first_seen,
            "library": self.library,
            "user_agent": self.user_agent,
            "consent": self.consent,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SessionState:
        """Inverse of ``to_dict``; raises ValueError naming the field that is wrong."""
        ints: dict[str, int] = {}
        for name in ("session_id", "last_event_ms", "event_count", "first_seen"):
            value = data.get(name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise ValueError(f"session state field {name!r} must be an integer, got {value!r}")
            ints[name] = value
        strs: dict[str, str | None] = {}
        for name in ("user_id", "library", "user_agent", "consent"):
            value = data.get(name)
            if value is not None and not isinstance(value, str):
                raise ValueError(f"session state field {name!r} must be a string or null, got {value!r}")
            strs[name] = value
        return cls(session_id=ints["session_id"], last_event_ms=ints["last_event_ms"], event_count=ints["event_count"],
                   user_id=strs["user_id"], first_seen=ints["first_seen"], library=strs["library"],
                   user_agent=strs["user_agent"], consent=strs["consent"])


def duration_text(ms: int) -> str:
    """An idle gap as a person reads it: "41 min 12 s", "2 h 5 min"."""
    seconds = max(0, int(ms)) // 1000
    hours, rest = divmod(seconds, 3600)
    return f"{hours} h {rest // 60} min" if hours else f"{rest // 60} min {rest % 60} s"


def is_web(message: Mapping[str, Any], has_edge_cookies: bool) -> bool:
    """A web event comes from analytics.js or carries the proxy's own (verified) cookies."""
    return has_edge_cookies or library_name(message) == WEB_LIBRARY


def parse_session_id(value: Any) -> int | None:
    """A session id as Segment's plugins write it: an int, or a string of digits (or ``-1``).

    Returns the integer, ``OUT_OF_SESSION`` for -1, or None for anything else (absent,
    booleans, floats, dates, garbage): such values are not a usable session id.
    """
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if value > 0 or value == OUT_OF_SESSION else None
    if isinstance(value, str):
        text = value.strip()
        if text == "-1":
            return OUT_OF_SESSION
        if text.isascii() and text.isdigit() and len(text) <= 18:
            number = int(text)
            return number if number > 0 else None
    return None


def client_session_value(message: Mapping[str, Any]) -> tuple[bool, Any]:
    """``(present, raw value)`` of ``integrations["Actions Amplitude"].session_id``."""
    integrations = message.get("integrations")
    if not isinstance(integrations, dict):
        return False, None
    entry = integrations.get(AMPLITUDE_KEY)
    if not isinstance(entry, dict) or "session_id" not in entry or entry["session_id"] is None:
        return False, None
    return True, entry["session_id"]


def client_session_claim(message: Mapping[str, Any]) -> tuple[bool, int | None]:
    """``(present, parse_session_id(raw value))`` of the client's session id.

    The identity service reads the claim once per event and answers both questions below
    from it (``adoptable_claim``, ``claim_mismatches``) instead of parsing it twice.
    """
    present, raw = client_session_value(message)
    return (True, parse_session_id(raw)) if present else (False, None)


def adoptable_claim(present: bool, parsed: int | None) -> int | None:
    """``adoptable_session_id`` of an already read claim."""
    if not present or parsed is None or parsed < MIN_EPOCH_MS:
        return None
    return parsed


def claim_mismatches(present: bool, parsed: int | None, server_session_id: int) -> bool:
    """``is_mismatch`` of an already read claim."""
    if not present or parsed == OUT_OF_SESSION:
        return False
    return parsed != server_session_id


def adoptable_session_id(message: Mapping[str, Any]) -> int | None:
    """The browser plugin's session id when it may seed a new server session, else None."""
    return adoptable_claim(*client_session_claim(message))


def is_mismatch(message: Mapping[str, Any], server_session_id: int) -> bool:
    """Whether the client claimed a session other than the server's (so it will be replaced).

    An absent value or ``-1`` claims nothing; an unparseable value claims something wrong.
    """
    return claim_mismatches(*client_session_claim(message), server_session_id)


def may_stamp(message: Mapping[str, Any]) -> bool:
    """Whether the event lets a session id be written into its integrations.

    Mirrors the browser plugin: ``integrations.All == false`` without an ``Actions Amplitude``
    key means every destination is off. ``"Actions Amplitude": false`` is an explicit opt-out
    of this destination, which the plugin would overwrite; the server keeps the opt-out.
    """
    integrations = message.get("integrations")
    if not isinstance(integrations, dict):
        return True
    if AMPLITUDE_KEY not in integrations:
        return integrations.get("All") is not False
    return integrations[AMPLITUDE_KEY] is not False


def stamp_session_id(message: dict[str, Any], session_id: int) -> None:
    """Write ``integrations["Actions Amplitude"].session_id``, creating dicts as needed."""
    integrations = message.get("integrations")
    if not isinstance(integrations, dict):
        integrations = message["integrations"] = {}
    entry = integrations.get(AMPLITUDE_KEY)
    if not isinstance(entry, dict):
        entry = integrations[AMPLITUDE_KEY] = {}
    entry["session_id"] = session_id


def adoptable_at(adopt_session_id: int | None, t_ms: int) -> bool:
    """Whether a plugin's id may start the session of an event at ``t_ms``: an id a clock
    produced, and not later than the event allows for the plugin's stamping (``ADOPT_LEEWAY_MS``)."""
    return adopt_session_id is not None and MIN_EPOCH_MS <= adopt_session_id <= t_ms + ADOPT_LEEWAY_MS


def touch(
    state: SessionState | None,
    t_ms: int,
    timeout_ms: int,
    *,
    adopt_session_id: int | None = None,
    user_id: str | None = None,
    library: str | None = None,
    user_agent: str | None = None,
    consent: str | None = None,
) -> tuple[SessionState, bool]:
    """Apply one event at time ``t_ms``; return the new state and whether a session started.

    - no state: adopt ``adopt_session_id`` (the browser plugin's id) when ``adoptable_at``,
      else start at ``t_ms``; an id adopted from just after the event also moves
      ``last_event_ms`` to it (the plugin saw the visitor active then), so a session never
      ends before it started;
    - ``t_ms - last_event_ms > timeout_ms``: a new session at ``t_ms`` (exactly the timeout
      is still the same session);
    - otherwise the current session, ``last_event_ms = max(last_event_ms, t_ms)``: a late
      event never rotates a session and never moves ``last_event_ms`` back.

    ``user_id``, ``library``, ``user_agent`` and ``consent`` overwrite the stored values when given.
    """
    if state is None:
        session_id = adopt_session_id if adopt_session_id is not None and adoptable_at(adopt_session_id, t_ms) else t_ms
        return (
            SessionState(
                session_id=session_id,
                last_event_ms=max(session_id, t_ms),
                event_count=1,
                user_id=user_id,
                first_seen=min(session_id, t_ms),
                library=library,
                user_agent=user_agent,
                consent=consent,
            ),
            True,
        )
    # Built directly, not with dataclasses.replace: this runs on every event and replace()
    # costs several times the constructor.
    user_id = user_id if user_id is not None else state.user_id
    library = library if library is not None else state.library
    user_agent = user_agent if user_agent is not None else state.user_agent
    consent = consent if consent is not None else state.consent
    first_seen = min(state.first_seen, t_ms)
    if t_ms - state.last_event_ms > timeout_ms:
        return SessionState(t_ms, t_ms, 1, user_id, first_seen, library, user_agent, consent), True
    return (
        SessionState(state.session_id, max(state.last_event_ms, t_ms), state.event_count + 1, user_id, first_seen,
                     library, user_agent, consent),
        False,
    )


def reconcile(stored: SessionState | None, carried: SessionState | None) -> SessionState | None:
    """Merge the store's state with the one a signed cookie carried; the newer wins.

    Why: the cookie lets a restarted process, a cold replica or a store that evicted the
    device continue the same session. When both exist (normally equal), a later session
    (larger id) wins; within one session the counters take the maximum. An old cookie
    replayed by a client therefore never moves a session back.
    """
    if carried is None:
        return stored
    if stored is None:
        return carried
    if carried.session_id > stored.session_id:
        return SessionState(
            carried.session_id, carried.last_event_ms, carried.event_count, carried.user_id or stored.user_id,
            min(stored.first_seen, carried.first_seen), carried.library or stored.library,
            carried.user_agent or stored.user_agent, carried.consent or stored.consent,
        )
    if carried.session_id == stored.session_id and (
        carried.last_event_ms > stored.last_event_ms or carried.event_count > stored.event_count
    ):
        return SessionState(
            stored.session_id, max(stored.last_event_ms, carried.last_event_ms),
            max(stored.event_count, carried.event_count), stored.user_id, min(stored.first_seen, carried.first_seen),
            stored.library, stored.user_agent, stored.consent,
        )
    return stored

