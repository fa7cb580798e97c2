"""Segment's tracking API as a delivery target: the relayed message, the request, the verdict.

The facts both ingest and delivery need about relaying to ``POST {relay_url}/v1/batch``
(reference: tracking-and-amplitude-apis.md section 1), beside ``amplitude_api.py``:

- ``relay_message``: what is stored for the relay when a message is accepted. It is the
  message as the client sent it (batch envelope merged in, as Segment itself merges it),
  with only what identity enrichment adds: the server's session id in
  ``integrations["Actions Amplitude"].session_id``, ``context.ip``, and a ``messageId``
  when the client sent none (so retries dedupe at Segment). Segment's own server fields
  (``receivedAt``, ``originalTimestamp``, the skew-corrected ``timestamp``) are not sent:
  Segment computes them, and sending a corrected ``timestamp`` would correct it twice.
- ``request_body``: a batch of stored messages, at send time. Each ``sentAt`` (the client's
  clock when its request left) moves forward by the time the message waited here, since
  that is when the relayed request leaves; so Segment's ``receivedAt − (sentAt −
  timestamp)`` gives the event the same time it would have had arriving directly, however
  long a retry took. gzip and Basic auth are the target's (``delivery/targets.py``).
- ``classify``: Segment's answers (200; 400 with a message; 429 with ``Retry-After``;
  5xx; no answer) as the same ``Verdict`` the worker carries out for Amplitude.
"""

from __future__ import annotations

import base64
import email.utils
from datetime import datetime, timedelta, timezone
from typing import Any, Mapping, Sequence

import orjson

from edgeproxy.delivery.classify import DeadReason, Verdict, bisect, body_excerpt, parse_json_body
from edgeproxy.segment import MAX_BATCH_BYTES, MAX_MESSAGE_BYTES, format_iso, parse_iso

ENDPOINT = "batch"  # the one endpoint the relay uses: POST {relay_url}/v1/batch
PATH = "/v1/batch"
MAX_ITEM_BYTES = MAX_MESSAGE_BYTES  # Segment refuses a request holding a message over 32 KB
MAX_BODY_BYTES = MAX_BATCH_BYTES - 4 * 1024  # room for {"batch":[…],"sentAt":…}
MAX_ITEMS = 2_500  # Segment drops the messages of a larger batch (with a 200)
DEFAULT_RETRY_AFTER_S = 10.0  # a 429 without a usable Retry-After
MAX_RETRY_AFTER_S = 600.0
# Segment's server fields, and the write key: the relayed request authenticates with Basic
# auth (the source's key), so a message-level key of another source cannot contradict it.
_SERVER_FIELDS = ("receivedAt", "originalTimestamp", "writeKey")


def relay_message(msg: dict[str, Any]) -> dict[str, Any]:
    """The message to relay, from the normalized and enriched one (``segment.normalize`` +
    identity): the client's own timestamps back in place of Segment's server fields.

    ``normalize`` keeps the client's ``timestamp`` as ``originalTimestamp`` and keeps
    ``sentAt`` (the message's or the batch's); without a client timestamp the normalized
    ``timestamp`` is the receive time on the server's clock, which must then not be paired
    with a client ``sentAt``.
    """
    out = {k: v for k, v in msg.items() if k not in _SERVER_FIELDS}
    sent_at = out.pop("sentAt", None)
    original = msg.get("originalTimestamp")
    if original is not None:
        out["timestamp"] = original
        if sent_at is not None:
            out["sentAt"] = sent_at  # the last key: request_body moves it on in the stored bytes
    return out


def url(relay_url: str) -> str:
    return relay_url.rstrip("/") + PATH


def basic_auth(write_key: str) -> str:
    """``Authorization`` for a write key: Basic base64(key + ":"), as Segment documents it."""
    return "Basic " + base64.b64encode(f"{write_key}:".encode()).decode()


def _shift(sent_at: Any, waited: timedelta) -> Any:
    try:
        return format_iso(parse_iso(sent_at, "sentAt") + waited)
    except (ValueError, OverflowError):  # not a date, or past year 9999 once shifted
        return sent_at  # Segment judges it as the client sent it


def request_body(items: Sequence[tuple[bytes, int]], now_ms: int) -> bytes:
    """``{"batch": [...], "sentAt": now}`` from stored (message JSON, received_ms) pairs.

    Each message's ``sentAt`` moves on by its wait. ``relay_message`` stores it as the last
    key, so the new value is spliced in: the body is joined once from views of the stored
    bytes around it (a relayed batch had paid a JSON round trip per message, ~2 µs of
    ~1-2 KB, and then a copy of each message per splice)."""
    parts: list[bytes | memoryview] = [b'{"batch":[']
    waits: dict[int, timedelta] = {}  # the rows of one append share a wait: one timedelta each
    for raw, received_ms in items:
        waited = max(0, now_ms - received_ms)
        wait = waits.get(waited)
        if wait is None:
            wait = waits[waited] = timedelta(milliseconds=waited)
        start, value = _last_sent_at(raw)
        if start:
            parts += (memoryview(raw)[:start], _shift(value.decode(), wait).encode(), b'"},')
        else:
            parts += (_shifted(raw, wait), b",")
    if len(parts) > 1:
        parts[-1] = parts[-1][:-1]  # no comma after the last message
    sent = format_iso(datetime.fromtimestamp(now_ms / 1000, timezone.utc))
    parts += (b'],"sentAt":', orjson.dumps(sent), b"}")
    return b"".join(parts)


_LAST_SENT_AT = b',"sentAt":"'


def _last_sent_at(raw: bytes) -> tuple[int, bytes]:
    """Where the value of a top-level ``sentAt`` that is the message's last member starts, and
    the value; ``(0, b"")`` when there is none.

    The bytes end ``,"sentAt":"<value>"}`` with no quote or backslash in a non-empty value only
    when that is the top-level object's last member: a nested object's would end ``}}``, and
    JSON escapes every quote inside a string. (``bytes.rfind`` to look: a sixth of ``in``'s cost.)"""
    start = raw.rfind(_LAST_SENT_AT) + len(_LAST_SENT_AT)
    if start < len(_LAST_SENT_AT) or start >= len(raw) - 2 or not raw.endswith(b'"}'):
        return 0, b""
    value = raw[start:-2]
    return (0, b"") if b'"' in value or b"\\" in value else (start, value)


def _shifted(raw: bytes, wait: timedelta) -> bytes:
    """The round trip, for what ``_last_sent_at`` does not find: a message stored by an older
    version, a sentAt that is not a plain string, or none."""
    if raw.rfind(b'"sentAt"') < 0:
        return raw
    msg = orjson.loads(raw)
    if msg.get("sentAt") in (None, ""):
        return raw
    msg["sentAt"] = _shift(msg["sentAt"], wait)
    return orjson.dumps(msg)


def retry_after_seconds(headers: Mapping[str, str] | None) -> float:
    """``Retry-After`` (seconds or an HTTP date), else ``X-RateLimit-Reset`` (seconds), capped."""
    headers = headers or {}
    for name in ("Retry-After", "X-RateLimit-Reset"):
        value = headers.get(name)
        if not value:
            continue
        try:
            seconds = float(value)
        except ValueError:
            try:
                moment = email.utils.parsedate_to_datetime(value)
            except (TypeError, ValueError):
                continue
            seconds = (moment - datetime.now(timezone.utc)).total_seconds()
        return min(MAX_RETRY_AFTER_S, max(0.0, seconds))
    return DEFAULT_RETRY_AFTER_S


def _message(status: int, body: bytes | str | None) -> str:
    data = parse_json_body(body)
    if data is not None and data.get("message"):
        return str(data["message"])
    excerpt = body_excerpt(body).strip()
    return f"HTTP {status}" + (f": {excerpt[:200]}" if excerpt else " with an empty body")


def classify(status: int | None, body: bytes | str | None, n: int, headers: Mapping[str, str] | None = None,
             *, transport_error: str = "") -> Verdict:
    """The verdict for a batch of ``n`` messages relayed to Segment.

    A 400 names no message: Segment refuses the whole request for one bad message (over
    32 KB, not JSON) or for a bad write key. The write key is a configuration problem that
    every message shares, so all are dead-lettered at once; otherwise the batch is halved
    until the refused message is alone, and only it is dead-lettered with Segment's reason.
    A 429 is the workspace's rate limit, not a device's: everything waits ``Retry-After``.
    """
    if status is None:
        return Verdict("retry", backoff=tuple(range(n)), error=transport_error or "no response")
    if 200 <= status < 300:
        return Verdict("ok", ack=tuple(range(n)))
    error = _message(status, body)
    if status == 400:
        if "write key" in error.lower():
            reason = DeadReason("invalid_write_key", f"Segment: {error} (request-level 400)")
            return Verdict("dead", dead={i: reason for i in range(n)}, error=error, config_problem=True)
        if n <= 1:
            return Verdict("dead", dead={0: DeadReason("rejected", f"Segment: {error}")} if n else {}, error=error)
        return bisect(n, status, error, "rejected")
    if status == 413:
        return bisect(n, status, error, "too_large")
    if status == 429:
        return Verdict("throttled", backoff=tuple(range(n)), retry_after=retry_after_seconds(headers),
                       error=f"rate limited (429): {error}")
    return Verdict("retry", backoff=tuple(range(n)), error=error, config_problem=status in (401, 403, 404, 405))
