"""Segment tracking-API rules: message types, limits, validation and clock-skew correction.

Pure functions of a parsed body and the receive time, so every rule is tested without a
server. The HTTP handler (``edge/ingest.py``) only reads bytes, calls these, and answers.
Facts come from Segment's HTTP API documentation (reference: tracking-and-amplitude-apis.md §1).
"""

from __future__ import annotations

import base64
import binascii
import re
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import lru_cache
from typing import Any, Mapping

MAX_MESSAGE_BYTES = 32 * 1024
MAX_BATCH_BYTES = 500 * 1024
MAX_BATCH_MESSAGES = 2500

TYPES = ("track", "page", "identify", "group", "alias", "screen")
# Path segment -> message type: analytics.js uses the first letter, libraries the full name.
PATH_TYPES = {t[0]: t for t in TYPES} | {t: t for t in TYPES}
BATCH_PATHS = frozenset({"b", "batch", "import"})

# Libraries that run on servers: their requests come from the customer's backend, so the
# request's IP is not the visitor's and must not become context.ip.
SERVER_LIBRARIES = frozenset(
    {
        "analytics-node",
        "@segment/analytics-node",
        "analytics-python",
        "analytics-ruby",
        "analytics-go",
        "analytics-java",
        "analytics-php",
        "analytics.NET",
        "analytics-dotnet",
        "analytics-csharp",
    }
)


class Rejected(ValueError):
    """A message (or request) that cannot be accepted; ``field`` names what was wrong."""

    def __init__(self, field: str, message: str, code: str = "invalid_request"):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message
        self.code = code

    def as_dict(self) -> dict[str, str]:
        return {"field": self.field, "message": self.message}


def parse_iso(value: Any, field: str) -> datetime:
    """An ISO-8601 timestamp as an aware UTC datetime; ``Rejected`` names the field otherwise."""
    if type(value) is str:
        # The usual text (``Date.toISOString()``'s, ending in "Z") first, as it is: Python
        # 3.11 reads the "Z" itself, and the general path's strip and rewrite cost more
        # than the parse. Anything it declines or reads in another zone goes the long way.
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            pass
        else:
            if parsed.tzinfo is timezone.utc:
                return parsed
    if not isinstance(value, str) or not value:
        raise Rejected(field, f"must be an ISO-8601 date string, got {type(value).__name__}")
    text = value.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise Rejected(field, f"not an ISO-8601 date: {value[:40]!r}") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    try:
        return parsed.astimezone(timezone.utc)
    except OverflowError:  # e.g. 0001-01-01T00:00:00+01:00: before year 1 in UTC
        raise Rejected(field, f"outside the years 1-9999 in UTC: {value[:40]!r}") from None


_MILLIS = tuple(f".{ms:03d}Z" for ms in range(1000))


def format_iso(moment: datetime) -> str:
    """Segment's timestamp format: UTC, millisecond precision (truncated), ``Z``.

    Written from the fields, the text up to the second remembered: ``isoformat`` with a
    timespec and an offset to cut off cost ~4 µs on the bench machine, this ~1 µs, and it
    runs once or twice for every event (the corrected timestamp, the receive time).
    """
    if moment.tzinfo is not timezone.utc:
        moment = moment.astimezone(timezone.utc)
    return _to_the_second(moment.year, moment.month, moment.day, moment.hour, moment.minute, moment.second) + \
        _MILLIS[moment.microsecond // 1000]


@lru_cache(maxsize=256)
def _to_the_second(year: int, month: int, day: int, hour: int, minute: int, second: int) -> str:
    """``YYYY-MM-DDTHH:MM:SS``: events of one request, and requests of one second, share it."""
    return f"{year:04d}-{month:02d}-{day:02d}T{hour:02d}:{minute:02d}:{second:02d}"


@lru_cache(maxsize=64)
def _received_iso(received: datetime) -> str:
    """``format_iso(received)``, remembered for a few receive times.

    Why: every message of a batch is stamped with its request's one receive time, so the
    string (formatting is most of the clock correction's cost) is made once per request, not
    once per message. Keyed by the datetime's value: equal aware datetimes are the same instant,
    which ``format_iso`` writes the same whatever their time zone.
    """
    return format_iso(received)


def write_key_from_basic(header: str | None) -> str | None:
    """The write key from ``Authorization: Basic base64(key:)`` (the colon is optional)."""
    if not header or not header[:6].lower() == "basic ":
        return None
    try:
        decoded = base64.b64decode(header[6:].strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    return decoded.split(":", 1)[0] or None


# Write keys as Segment issues them (32 letters and digits) and as people name test sources
# ("wk-staging"): letters, digits, '_' and '-', at most 64. No '.', '/' or '%': a write key
# becomes a CDN path, a cache key, a log field and a Basic auth header.
WRITE_KEY_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
WRITE_KEY_RULE = "1-64 letters, digits, '_' or '-', starting with a letter or digit"


def valid_write_key(key: Any) -> bool:
    return isinstance(key, str) and WRITE_KEY_RE.fullmatch(key) is not None


def resolve_write_key(body: dict[str, Any], authorization: str | None, allowed: list[str]) -> str:
    """Body key first, then Basic auth. None is Segment's 400 (its status and code, with a
    message that says what is missing: Segment's "An invalid write key was provided" sent
    newcomers looking for a typo in a key they never sent); unknown (with a list) a 401."""
    key = body.get("writeKey")
    if not isinstance(key, str) or not key:
        key = write_key_from_basic(authorization)
    if not key:
        raise Rejected("writeKey", "no write key: send the source's write key as writeKey in the body or as the "
                       "username of Basic auth", code="invalid_request")
    if not valid_write_key(key):
        raise Rejected("writeKey", f"An invalid write key was provided: a write key is {WRITE_KEY_RULE}, "
                       f"got {len(key)} characters", code="invalid_request")
    if allowed and key not in allowed:
        raise Rejected("writeKey", "unknown write key", code="unauthorized")
    return key


_OBJECT_FIELDS = ("context", "properties", "traits", "integrations")
_ID_FIELDS = ("userId", "anonymousId", "previousId", "groupId")
# Amplitude keeps a string value up to 1,024 characters: a longer id cannot be an Amplitude id,
# and the session store keeps ids per session (their length bounds its memory).
MAX_ID_LENGTH = 1024


def _device_id(context: Any) -> Any:
    device = context.get("device") if isinstance(context, dict) else None
    return device.get("id") if isinstance(device, dict) else None


@dataclass(frozen=True)
class Envelope:
    """What a batch contributes to each of its messages."""

    sent_at: Any = None
    context: dict[str, Any] | None = None
    integrations: dict[str, Any] | None = None


def normalize(raw: Any, *, path_type: str | None, received: datetime, envelope: Envelope = Envelope()) -> dict[str, Any]:
    """Validate one message and return Segment's normalized form (a new dict).

    Applies the batch envelope (its ``context``/``integrations`` under the message's own),
    skew correction ``timestamp = receivedAt − (sentAt − originalTimestamp)``, and a generated
    ``messageId``. Identity checks that need the device id happen after enrichment.
    """
    if not isinstance(raw, dict):
        raise Rejected("message", f"must be a JSON object, got {_json_type(raw)}")
    msg = dict(raw)
    mtype = msg.get("type", path_type)
    if mtype is None:
        raise Rejected("type", f"missing; must be one of {', '.join(TYPES)}")
    if mtype not in TYPES:
        raise Rejected("type", f"must be one of {', '.join(TYPES)}, got {str(mtype)[:40]!r}")
    msg["type"] = mtype

    for name in _OBJECT_FIELDS:
        value = msg.get(name)  # absent reads None: allowed like null
        if value is not None and not isinstance(value, dict):
            raise Rejected(name, f"must be an object, got {_json_type(value)}")
    for name in _ID_FIELDS:
        value = msg.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (str, int, float))):
            raise Rejected(name, f"must be a string, got {_json_type(value)}")
        if isinstance(value, str) and len(value) > MAX_ID_LENGTH:
            raise Rejected(name, f"{len(value)} characters, at most {MAX_ID_LENGTH} (Amplitude's limit for a string)")

    if envelope.context:
        msg["context"] = {**envelope.context, **(msg.get("context") or {})}
    if envelope.integrations:
        msg["integrations"] = {**envelope.integrations, **(msg.get("integrations") or {})}
    device_id = _device_id(msg.get("context"))
    if isinstance(device_id, str) and len(device_id) > MAX_ID_LENGTH:
        raise Rejected("context.device.id", f"{len(device_id)} characters, at most {MAX_ID_LENGTH} "
                       f"(Amplitude's limit for a string)")

    if mtype == "track" and (not isinstance(event := msg.get("event"), (str, int, float)) or event == ""):
        raise Rejected("event", "a track call needs a non-empty event name")
    if mtype == "group" and msg.get("groupId") in (None, ""):
        raise Rejected("groupId", "a group call needs a groupId")
    if mtype == "alias" and msg.get("userId") in (None, ""):
        raise Rejected("userId", "an alias call needs the new userId")

    message_id = msg.get("messageId")
    if message_id is None or message_id == "":
        msg["messageId"] = str(uuid.uuid4())
    elif not isinstance(message_id, str):
        raise Rejected("messageId", f"must be a string, got {_json_type(message_id)}")

    _correct_clock(msg, received, envelope.sent_at)
    return msg


def _correct_clock(msg: dict[str, Any], received: datetime, batch_sent_at: Any) -> None:
    """Segment's skew correction; records receivedAt and originalTimestamp."""
    sent_raw = msg.pop("sentAt", None) or batch_sent_at
    ts_raw = msg.get("timestamp")
    msg["receivedAt"] = _received_iso(received)
    if ts_raw in (None, ""):
        msg["timestamp"] = msg["receivedAt"]
        return
    original = parse_iso(ts_raw, "timestamp")
    msg["originalTimestamp"] = ts_raw
    if sent_raw not in (None, ""):
        sent = parse_iso(sent_raw, "sentAt")
        msg["sentAt"] = sent_raw
        try:
            msg["timestamp"] = format_iso(received - (sent - original))
        except OverflowError:  # e.g. a year-9999 timestamp sent at year 1: no such corrected time
            raise Rejected("sentAt", f"{str(sent_raw)[:40]!r} and timestamp {str(ts_raw)[:40]!r} are too far "
                           f"apart to correct the clock (the result is outside the years 1-9999)") from None
    else:
        msg["timestamp"] = format_iso(original)


def has_identity(msg: dict[str, Any], device_id: str | None) -> bool:
    """Amplitude needs a user or a device: userId, anonymousId or a (resolved) device id."""
    # Cheapest first, each value tested as ``v not in (None, "")`` (a plain chain rather than
    # any() over a generator: this runs for every message).
    for value in (msg.get("userId"), msg.get("anonymousId"), device_id):
        if value is not None and value != "":
            return True
    context = msg.get("context")
    device = context.get("device") if isinstance(context, dict) else None
    client_device = device.get("id") if isinstance(device, dict) else None
    return client_device is not None and client_device != ""


def library_name(msg: Mapping[str, Any]) -> str | None:
    """``context.library.name`` when it is a string: which Segment library sent the message."""
    context = msg.get("context")
    library = context.get("library") if isinstance(context, dict) else None
    name = library.get("name") if isinstance(library, dict) else None
    return name if isinstance(name, str) else None


def event_time_ms(msg: dict[str, Any]) -> int:
    """The skew-corrected event time in epoch ms (``normalize`` guarantees ``timestamp``)."""
    return int(parse_iso(msg["timestamp"], "timestamp").timestamp() * 1000)


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"
