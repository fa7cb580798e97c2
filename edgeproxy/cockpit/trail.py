"""The event trail: each recent message as the edge handled it, and what its deliveries met.

Why in memory and bounded: an operator asks "what happened to this event" about the last
minutes, and the answer must cost nothing measurable on the hot path. An entry holds the
message and its payloads as compact JSON (orjson, a few µs), not the request's object trees:
kept alive for a thousand requests, those trees made every request allocate and free cold
memory (an old entry's ~100 objects, 6.7 KiB, freed at each call), while one bytes object per
payload is freed in one step. The few fields a search reads are kept as they
are. The delivery worker appends each attempt's outcome to the entries of the items it sent.
What falls out of the ring is still in the spool (``/debug/sessions/<device>``). Per process:
behind nginx, each process has its own trail.
"""

from __future__ import annotations

import collections
import json
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import orjson

from edgeproxy.cockpit.devices import ClientSessions
from edgeproxy.identity.service import event_time_ms

MAX_EXCERPT = 400  # of an upstream answer, per attempt
MAX_ATTEMPTS = 20  # per entry: a message retried for days keeps its last ones


@dataclass(slots=True)
class Attempt:
    """One delivery request that carried one of the entry's items."""

    at_ms: int
    target: str
    endpoint: str
    status: int | None  # None: no answer (timeout, connection error)
    outcome: str  # for this item: delivered, dead: <code>, retry, throttled, resent
    answer: str  # the relevant part of the upstream's answer
    next_ms: int | None  # when it is tried again, if it is


UNKEPT = b'"(not kept: too deep to encode)"'


def compact(value: Any) -> bytes:
    """``value`` as JSON bytes; what orjson refuses (an integer past 64 bits) goes through json,
    and what neither can encode is said, never raised: the trail must not fail a request."""
    try:
        return kept(orjson.dumps(value))
    except TypeError:
        try:
            return json.dumps(value, default=str).encode()
        except (TypeError, ValueError, RecursionError):
            return UNKEPT


def _item(item: Any) -> bytes:
    """A spool item's JSON, shared with the queue; one it cannot encode the queue refuses too."""
    try:
        return kept(item.item_json())
    except TypeError:
        return UNKEPT


def kept(data: bytes) -> bytes:
    """A copy of exactly ``data``'s size to keep: orjson's output keeps its whole working
    buffer (16 KiB for a 1.2 KB message, measured with tracemalloc), fine for a value that
    is written and dropped, 13× too much for one the ring holds."""
    return memoryview(data).tobytes()


def _loads(data: bytes) -> Any:
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:  # a big integer orjson cannot read back
        return json.loads(data)


def _field(msg: Any, *names: str) -> Any:
    if not isinstance(msg, dict):
        return None
    for name in names:
        value = msg.get(name)
        if value is not None:
            return value
    return None


@dataclass(slots=True)
class TrailEntry:
    seq: int
    received_ms: int
    source: str
    message_id: str | None
    outcome: str  # accepted, withheld: <reason>, anonymised, rejected: <why>
    message_json: bytes  # the message as normalised (as received, for a rejected one)
    type: Any = None  # the fields a search and the list read, kept as they came
    event: Any = None
    user_id: Any = None
    anonymous_id: Any = None
    device_id: str | None = None
    web: bool = False
    device_from: str = ""
    session_how: str = ""
    session_id: int | None = None
    payloads: tuple[tuple[str, str, bytes], ...] = ()  # (target, endpoint, item JSON): Amplitude's and the relay's
    dead: Sequence[Any] = ()  # DeadLetters: what the mapping refused (rare: kept as they are)
    attempts: list[Attempt] = field(default_factory=list)

    @property
    def message(self) -> Any:
        return _loads(self.message_json)

    def matches(self, needle: str) -> bool:
        """``needle`` (lower case) is in one of the ids or the event's name."""
        for value in (self.message_id, self.device_id, self.user_id, self.anonymous_id, self.event, self.type):
            if isinstance(value, str) and needle in value.lower():
                return True
        return False

    def summary(self) -> dict[str, Any]:
        """The row of the trail's list."""
        last = self.attempts[-1] if self.attempts else None
        return {
            "seq": self.seq, "received_ms": self.received_ms, "source": self.source, "message_id": self.message_id,
            "type": self.type, "event": self.event, "user_id": self.user_id,
            "device_id": self.device_id, "session_id": self.session_id, "outcome": self.outcome,
            "amplitude": sum(1 for target, _, _ in self.payloads if target == "amplitude"),
            "relay": any(target == "segment" for target, _, _ in self.payloads),
            "delivery": _delivery_state(self),
            "last_attempt": None if last is None else {"status": last.status, "outcome": last.outcome},
        }

    def as_dict(self) -> dict[str, Any]:
        """The whole entry: message, identity decision, payloads, attempts."""
        return {
            **self.summary(),
            "identity": {"web": self.web, "device_from": self.device_from, "session": self.session_how,
                         "session_id": self.session_id},
            "message": self.message,
            "amplitude_payloads": [{"endpoint": endpoint, "item": _loads(item)}
                                   for target, endpoint, item in self.payloads if target == "amplitude"],
            "relay_payload": next((_loads(item) for target, _, item in self.payloads if target == "segment"), None),
            "refused": [{"reason": d.reason, "payload": d.payload} for d in self.dead],
            "attempts": [{"at_ms": a.at_ms, "target": a.target, "endpoint": a.endpoint, "status": a.status,
                          "outcome": a.outcome, "answer": a.answer, "next_ms": a.next_ms} for a in self.attempts],
        }


def item_outcomes(verdict: Any, sink: bool) -> dict[int, str]:
    """Each index's fate in a delivery verdict (``delivery.classify.Verdict``), in words."""
    out: dict[int, str] = {}
    for indexes in verdict.resend:
        for i in indexes:
            out[i] = "resent at once"
    for i in verdict.backoff:
        out[i] = "retry"
    for i in verdict.pause:
        out[i] = "throttled"
    for i, reason in verdict.dead.items():
        out[i] = f"dead: {reason.code}"
    for i in verdict.ack:
        out[i] = "delivered to the local sink" if sink else "delivered"
    return out


def _delivery_state(entry: TrailEntry) -> str:
    """Where the entry's items stand, from its attempts: one word for the list."""
    if not entry.payloads:
        return "refused" if entry.dead else "nothing to send"
    finals: dict[str, str] = {}
    for a in entry.attempts:
        finals[a.target] = a.outcome
    if not finals:
        return "queued"
    if all(o.startswith("delivered") for o in finals.values()) and len(finals) == len({target for target, _, _ in entry.payloads}):
        return "delivered"
    if any(o.startswith("dead") for o in finals.values()):
        return "dead"
    return "retrying" if any(not o.startswith("delivered") for o in finals.values()) else "partly delivered"


class Trail:
    """The last ``size`` messages, found by message id and searchable by ids and event name."""

    def __init__(self, size: int, devices: ClientSessions | None = None):
        self.size = size
        self._ring: collections.deque[TrailEntry] = collections.deque()
        self._by_id: dict[str, TrailEntry] = {}
        self._seq = 0
        self.devices = devices if devices is not None else ClientSessions()

    def __len__(self) -> int:
        return len(self._ring)

    @property
    def last_seq(self) -> int:
        return self._seq

    def _add(self, entry: TrailEntry) -> None:
        if len(self._ring) >= self.size:
            old = self._ring.popleft()
            if old.message_id is not None and self._by_id.get(old.message_id) is old:
                del self._by_id[old.message_id]
        self._ring.append(entry)
        if entry.message_id is not None:
            self._by_id[entry.message_id] = entry

    def record(self, source: str, msg: dict[str, Any], result: Any, items: Sequence[Any], dead: Sequence[Any],
               outcome: str, received_ms: int, session_id: int | None) -> None:
        """An accepted message (``result``: its ``IdentityResult``), once it is in the spool."""
        self._seq += 1
        device_id = result.device_id or (items[0].device_id if items else None)
        payloads = tuple((i.target, i.endpoint, _item(i)) for i in items)  # the queue stores the same bytes
        self._add(TrailEntry(self._seq, received_ms, source, msg.get("messageId"), outcome, compact(msg),
                             msg.get("type"), msg.get("event") or msg.get("name"), msg.get("userId"),
                             msg.get("anonymousId"), device_id, result.web, result.device_from, result.session_how,
                             session_id, payloads, tuple(dead)))
        if not result.web:
            self.devices.record(source, msg, device_id, session_id, event_time_ms(msg, received_ms))  # a mobile batch comes late

    def rejected(self, source: str, raw: Any, why: str, received_ms: int) -> None:
        """A message the tracking API refused (the client got the reason too)."""
        self._seq += 1
        message_id = raw.get("messageId") if isinstance(raw, dict) else None
        self._add(TrailEntry(self._seq, received_ms, source, message_id if isinstance(message_id, str) else None,
                             "rejected: " + why, compact(raw), _field(raw, "type"), _field(raw, "event", "name"),
                             _field(raw, "userId"), _field(raw, "anonymousId")))

    def attempted(self, message_ids: Iterable[str | None], attempt: Attempt, outcomes: dict[int, str] | None = None,
                  upcoming: dict[str, int | None] | None = None) -> None:
        """A delivery request's outcome for each of its items (``outcomes``: by index, else
        ``attempt.outcome``); ``upcoming``: when items of an outcome ("retry", "throttled") go again."""
        if not self._by_id:
            return
        for index, message_id in enumerate(message_ids):
            entry = self._by_id.get(message_id) if message_id is not None else None
            if entry is None:
                continue
            outcome = outcomes.get(index, attempt.outcome) if outcomes else attempt.outcome
            next_ms = (upcoming or {}).get(outcome, attempt.next_ms)
            own = Attempt(attempt.at_ms, attempt.target, attempt.endpoint, attempt.status, outcome, attempt.answer, next_ms)
            entry.attempts.append(own)
            if len(entry.attempts) > MAX_ATTEMPTS:
                del entry.attempts[0]

    def mark(self, message_id: str | None, outcome: str) -> None:
        """A recorded message was not stored after all (the append failed): say so."""
        entry = self._by_id.get(message_id) if message_id is not None else None
        if entry is not None:
            entry.outcome = outcome

    def get(self, message_id: str) -> TrailEntry | None:
        return self._by_id.get(message_id)

    def find(self, query: str = "", *, limit: int = 100, after_seq: int = 0, source: str | None = None) -> list[TrailEntry]:
        """Most recent first; ``query`` a case-insensitive part of an id or of the event's name."""
        needle = query.strip().lower()
        out: list[TrailEntry] = []
        for entry in reversed(self._ring):
            if entry.seq <= after_seq or len(out) >= limit:
                break
            if source is not None and entry.source != source:
                continue
            if not needle or entry.matches(needle):
                out.append(entry)
        return out


def open_trail(size: int) -> Trail | None:
    """The trail ``[debug] trail_size`` asks for: None when it is 0 (the trail is off)."""
    return Trail(size) if size else None
