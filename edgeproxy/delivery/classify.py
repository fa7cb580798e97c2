"""What to do with each item of a batch after Amplitude answered: pure rules, no I/O.

Why a pure function: Amplitude's answers are many (2xx, event-level and request-level 400s,
413, 429 with per-device throttling, 5xx, HTML error pages, timeouts), and the delivery
guarantees hinge on getting each one right. As a function of (endpoint, status, body,
batch size) every shape in the reference is a one-line test, and the worker only carries
out the verdict.

Every index of the batch lands in exactly one bucket of the verdict: ``ack``, ``dead``,
``resend`` (send again now, in the given sub-batches), ``backoff`` (retry later with
exponential backoff) or ``pause`` (the device/user is throttled: retry after ``pause_s``).
That partition is what guarantees progress: nothing is forgotten, nothing is sent twice in
one verdict, and every ``resend`` sub-batch is strictly smaller than the batch it came from.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any, Mapping

import orjson

# Seconds to pause a throttled device/user (reference 2.5): 30 s on the HTTP V2 API,
# 15 s on /batch and /identify (and, lacking guidance, on the other form endpoints).
PAUSE_SECONDS: Mapping[str, float] = {"httpapi": 30.0}
DEFAULT_PAUSE_SECONDS = 15.0

# The event-level 400 fields: each maps a field name to the indexes of the events at fault.
EVENT_ERROR_FIELDS: Mapping[str, str] = {
    "events_with_invalid_fields": "invalid_fields",
    "events_with_missing_fields": "missing_fields",
    "events_with_invalid_id_lengths": "invalid_id_lengths",
}

BODY_EXCERPT = 500  # characters of a response body kept in reasons and the response log


@dataclass(frozen=True)
class DeadReason:
    """Why an item is dead-lettered: ``code`` is a low-cardinality metrics label."""

    code: str
    text: str


@dataclass(frozen=True)
class Verdict:
    """The fate of each index of a batch. ``outcome`` is the metrics label of the response."""

    outcome: str  # ok / retry / split / throttled / dead (the worker adds "sink")
    ack: tuple[int, ...] = ()
    dead: Mapping[int, DeadReason] = field(default_factory=dict)
    resend: tuple[tuple[int, ...], ...] = ()
    backoff: tuple[int, ...] = ()
    pause: tuple[int, ...] = ()
    pause_s: float = 0.0
    throttled_devices: frozenset[str] = frozenset()
    throttled_users: frozenset[str] = frozenset()
    error: str = ""  # a short description for last_error and logs
    config_problem: bool = False  # e.g. an invalid API key: the operator must act
    # Seconds the upstream asked to wait (Segment's 429 Retry-After): ``backoff`` items are
    # retried after it, and the target sends nothing until then, instead of the exponential step.
    retry_after: float | None = None


def pause_seconds(endpoint: str) -> float:
    return PAUSE_SECONDS.get(endpoint, DEFAULT_PAUSE_SECONDS)


def backoff_delay(attempts: int, base: float, cap: float, rng: random.Random | None = None) -> float:
    """Seconds before retry number ``attempts`` (1 = first retry): exponential, capped, jittered.

    "Equal jitter": half the exponential step is fixed, half random, so retries of many
    batches spread out (no thundering herd after an outage) yet never come back sooner than
    half the step.
    """
    if attempts < 1:
        attempts = 1
    step = min(cap, base * (2 ** min(attempts - 1, 62)))
    r = (rng or random).random()
    return step / 2 + r * step / 2


def body_excerpt(body: bytes | str | None) -> str:
    """A printable prefix of a response body (never raises on binary or invalid UTF-8)."""
    if body is None:
        return ""
    text = body if isinstance(body, str) else body.decode("utf-8", errors="replace")
    return text[:BODY_EXCERPT]


def parse_json_body(body: bytes | str | None) -> dict[str, Any] | None:
    """The body as a JSON object, or None for HTML pages, plain text, empty bodies, arrays…"""
    if not body:
        return None
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    return data if isinstance(data, dict) else None


def _indexes(value: Any, n: int) -> list[int]:
    """Valid indexes from a list of ints or a single int (the V2 page says "index of the first event")."""
    values = value if isinstance(value, list) else [value]
    return [v for v in values if isinstance(v, int) and not isinstance(v, bool) and 0 <= v < n]


def _error_text(status: int, data: dict[str, Any] | None, body: bytes | str | None) -> str:
    if data is not None:
        error = data.get("error")
        text = str(error) if error else f"HTTP {status}"
        if data.get("missing_field"):
            text += f" (missing_field: {data['missing_field']})"
        return text
    excerpt = body_excerpt(body).strip()
    return f"HTTP {status}" + (f": {excerpt[:200]}" if excerpt else " with an empty body")


def _remaining(n: int, taken: set[int]) -> tuple[int, ...]:
    return tuple(i for i in range(n) if i not in taken)


def _classify_400(endpoint: str, n: int, data: dict[str, Any] | None, body: bytes | str | None) -> Verdict:
    error = _error_text(400, data, body)
    dead: dict[int, DeadReason] = {}
    if data is not None:
        for key, code in EVENT_ERROR_FIELDS.items():
            per_field = data.get(key)
            if not isinstance(per_field, dict):
                continue
            for field_name, value in per_field.items():
                for i in _indexes(value, n):
                    if i in dead:
                        dead[i] = DeadReason(dead[i].code, f"{dead[i].text}; {key}: {field_name}")
                    else:
                        dead[i] = DeadReason(code, f"{error} ({key}: {field_name})")
        # "Events silenced for device_id": Amplitude has blocked these devices as spam.
        for i in _indexes(data.get("silenced_events", []), n):
            dead.setdefault(i, DeadReason("silenced", f"{error} (silenced_events)"))
    if dead:
        rest = _remaining(n, set(dead))
        return Verdict("dead", dead=dead, resend=(rest,) if rest else (), error=error)
    # Request level: nothing in the batch can succeed as sent (bad key, bad JSON, missing
    # api_key/events). Retrying cannot help; the reference's rule is to dead-letter.
    config_problem = "api key" in error.lower()
    code = "invalid_api_key" if config_problem else "request_rejected"
    reason = DeadReason(code, f"{error} (request-level 400 from /{endpoint})")
    return Verdict("dead", dead={i: reason for i in range(n)}, error=error, config_problem=config_problem)


def _classify_429(endpoint: str, n: int, data: dict[str, Any] | None, body: bytes | str | None) -> Verdict:
    error = _error_text(429, data, body)
    devices: frozenset[str] = frozenset()
    users: frozenset[str] = frozenset()
    throttled: list[int] = []
    if data is not None:
        throttled = sorted(set(_indexes(data.get("throttled_events", []), n)))
        names: dict[str, set[str]] = {"devices": set(), "users": set()}
        for key in ("throttled_devices", "exceeded_daily_quota_devices"):
            if isinstance(data.get(key), dict):
                names["devices"].update(str(k) for k in data[key])
        for key in ("throttled_users", "exceeded_daily_quota_users"):
            if isinstance(data.get(key), dict):
                names["users"].update(str(k) for k in data[key])
        devices, users = frozenset(names["devices"]), frozenset(names["users"])
    if not throttled:
        # No usable index list (plain-text 429, or a project-wide limit): pause everything.
        throttled = list(range(n))
    rest = _remaining(n, set(throttled))
    return Verdict(
        "throttled",
        pause=tuple(throttled),
        pause_s=pause_seconds(endpoint),
        resend=(rest,) if rest else (),
        throttled_devices=devices,
        throttled_users=users,
        error=error,
    )


def bisect(n: int, status: int, error: str, code: str) -> Verdict:
    """Halve the batch; a single item that is refused alone is dead-lettered."""
    if n <= 1:
        return Verdict("dead", dead={0: DeadReason(code, f"{error} (HTTP {status} for a single item)")} if n else {}, error=error)
    mid = n // 2
    return Verdict("split", resend=(tuple(range(mid)), tuple(range(mid, n))), error=error)


def classify(endpoint: str, status: int | None, body: bytes | str | None, n: int, *, transport_error: str = "") -> Verdict:
    """The verdict for a batch of ``n`` items sent to ``endpoint``.

    ``status`` is None when no response came back (timeout, connection refused or reset):
    ``transport_error`` then says what happened. Bodies that are not JSON objects (HTML
    pages, plain text, empty) are classified by status alone.
    """
    if status is None:
        return Verdict("retry", backoff=tuple(range(n)), error=transport_error or "no response")
    if 200 <= status < 300:
        return Verdict("ok", ack=tuple(range(n)))
    data = parse_json_body(body)
    if status == 400:
        return _classify_400(endpoint, n, data, body)
    if status == 413:
        return bisect(n, status, _error_text(status, data, body), "too_large")
    if status == 403:
        # Amplitude's WAF refuses requests with bad header/body values: a poisoned event
        # would block every batch it rides in, so bisect until it is alone, then drop it.
        return bisect(n, status, _error_text(status, data, body), "forbidden")
    if status == 429:
        return _classify_429(endpoint, n, data, body)
    # 5xx, 408, and anything unexpected (a 404 from a wrong endpoint_url, a proxy's 401):
    # the item is not at fault, so keep it and retry later. Same insert_id: no double count.
    error = _error_text(status, data, body)
    return Verdict("retry", backoff=tuple(range(n)), error=error, config_problem=status in (401, 404, 405))
