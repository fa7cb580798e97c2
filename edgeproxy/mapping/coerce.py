"""JavaScript value rules the reference depends on: ``Number()``, ``String()``, dayjs dates.

Why reproduce them: the reference runs on Node, and its outputs (``"98765"`` from a numeric
user id, ``-8089218415000`` from a numeric group timestamp misread by dayjs) come from these
exact conversions. Each function states which JavaScript expression it mirrors.
"""

from __future__ import annotations

import email.utils
import math
import re
from datetime import datetime, timedelta, timezone
from functools import lru_cache
from typing import Any

# Possessive quantifiers: the same strings as ``\d+\.?\d*(?:[eE][+-]?\d+)?``, but a timestamp such as
# "2024-03-14T..." (checked on every event) fails at once instead of backtracking through its digits.
_JS_NUMBER = re.compile(r"^[+-]?(?:\d++(?:\.\d*+)?+(?:[eE][+-]?+\d++)?+|\.\d++(?:[eE][+-]?+\d++)?+|Infinity)$")
# dayjs's REGEX_PARSE: strings it splits into parts itself instead of handing to Date().
_DAYJS_PARSE = re.compile(r"^(\d{4})[-/]?(\d{1,2})?[-/]?(\d{0,2})[Tt\s]*(\d{1,2})?:?(\d{1,2})?:?(\d{1,2})?[.:]?(\d+)?$")
_MAX_MS = 8.64e15  # ECMAScript's time value limit
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_ONE_MS = timedelta(milliseconds=1)


def js_number(text: str) -> float | None:
    """``Number(text)`` for a string: None where JavaScript gives NaN."""
    s = text.strip()
    if s == "":
        return 0.0
    if s[:2].lower() in ("0x", "0o", "0b"):
        try:
            return float(int(s, 0))
        except ValueError:
            return None
    if not _JS_NUMBER.match(s):
        return None
    return float(s.replace("Infinity", "inf"))


def number_to_string(value: int | float) -> str:
    """``String(number)``: integral values without a decimal point, JavaScript exponent style."""
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    if value.is_integer() and abs(value) < 1e21:
        return str(int(value))
    text = repr(value)
    if "e" in text:
        mantissa, exp = text.split("e")
        mantissa = mantissa[:-2] if mantissa.endswith(".0") else mantissa
        sign = "-" if exp.startswith("-") else "+"
        return f"{mantissa}e{sign}{exp.lstrip('+-').lstrip('0') or '0'}"
    return text


def normalize_number(value: int | float) -> int | float:
    """JSON has one number type: 2.0 and 2 are the same value, keep ints where exact."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return int(value)
    return value


def _date_utc(year: int, month0: int, day: int, hour: int, minute: int, second: int, ms: int) -> int | None:
    """``Date.UTC(...)`` including its overflow normalisation (month 42 rolls into later years)."""
    if 0 <= year <= 99:
        year += 1900
    year += month0 // 12
    month0 %= 12
    days = _days_from_civil(year, month0 + 1, 1) + day - 1
    total = days * 86_400_000 + hour * 3_600_000 + minute * 60_000 + second * 1000 + ms
    return total if abs(total) <= _MAX_MS else None


def _days_from_civil(y: int, m: int, d: int) -> int:
    """Days since 1970-01-01 for a proleptic Gregorian date (any year)."""
    y -= m <= 2
    era = (y if y >= 0 else y - 399) // 400
    yoe = y - era * 400
    doy = (153 * (m + (-3 if m > 2 else 9)) + 2) // 5 + d - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146097 + doe - 719468


def _parse_js_date_string(text: str) -> int | None:
    """``new Date(text).valueOf()`` for the forms V8 accepts that matter here (ISO 8601, RFC 2822)."""
    s = text.strip()
    iso = s[:-1] + "+00:00" if s[-1:] in ("Z", "z") else s
    try:
        dt = datetime.fromisoformat(iso)
    except ValueError:
        dt = None
    if dt is None:
        try:
            dt = email.utils.parsedate_to_datetime(s)
        except (TypeError, ValueError, IndexError):
            return None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    # Aware subtraction never leaves the calendar (utctimetuple() overflowed for year 1 or 9999
    # with an offset that crosses the year's edge: V8 reads those dates, so do we).
    ms = (dt - _EPOCH) // _ONE_MS
    return ms if abs(ms) <= _MAX_MS else None


def dayjs_utc_ms(value: Any) -> int | None:
    """``dayjs.utc(value).valueOf()``, or None where dayjs says Invalid Date."""
    if type(value) is str:  # the usual case (an ISO timestamp) first: none of the tests below holds for it
        return _dayjs_string_ms(value)
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, float)):
        if isinstance(value, float) and not math.isfinite(value):
            return None
        ms = int(value)
        return ms if abs(ms) <= _MAX_MS else None
    if not isinstance(value, str):
        return None
    return _dayjs_string_ms(value)


@lru_cache(maxsize=1024)
def _dayjs_string_ms(value: str) -> int | None:
    """``dayjs_utc_ms`` for a string, cached: one event's timestamp is checked by validation
    (``is_date_like``) and converted again by the action, and parsing is the costly part."""
    if not value.endswith(("Z", "z")):
        m = _DAYJS_PARSE.match(value)
        if m:
            y, mo, d, h, mi, sec, frac = m.groups()
            return _date_utc(int(y), int(mo or 1) - 1, int(d or 1), int(h or 0), int(mi or 0), int(sec or 0), int((frac or "0")[:3]))
    return _parse_js_date_string(value)


def is_date_like(value: Any) -> bool:
    """actions-core's ``date-like`` format: a numeric string or anything dayjs can parse."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return True
    if not isinstance(value, str):
        return False
    # A colon (an ISO time of day: every event's timestamp) never appears in a string Number()
    # accepts, so js_number would say NaN: skip its regex and go straight to dayjs.
    if ":" not in value:
        number = js_number(value)
        if number:  # Number(data) is truthy
            return abs(number) <= _MAX_MS
    return dayjs_utc_ms(value) is not None


def format_session_id(value: Any) -> int | float | None:
    """``formatSessionId``: a digit string is already epoch ms, anything else goes through dayjs."""
    if isinstance(value, str) and value.isdigit() and value.isascii():
        return int(value)
    return dayjs_utc_ms(value)
