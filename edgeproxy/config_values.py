"""How a configuration value is read: durations (``"30m"``), sizes (``"512MB"``) and the
declared type of each key, from TOML or from an environment string.

Apart from ``config`` because these rules are the same for the top-level sections and for
each ``[[sources]]`` entry (``sources`` uses them too), and they depend on nothing else.
"""

from __future__ import annotations

import re
from typing import Any

# Keys whose values are durations (seconds as float).
DURATION_KEYS = {
    ("sessions", "timeout"),
    ("sessions", "device_cookie_max_age"),
    ("sessions", "ajs_cookie_max_age"),
    ("delivery", "flush_interval"),
    ("delivery", "request_timeout"),
    ("delivery", "retry_base"),
    ("delivery", "retry_max"),
    ("delivery", "claim_idle"),
    ("origin", "timeout"),
    ("server", "shutdown_grace"),
    ("server", "header_timeout"),
    ("server", "idle_timeout"),
    ("server", "body_timeout"),
    ("cdn", "browser_batch_timeout"),
}

# Keys whose values are sizes in bytes.
SIZE_KEYS = {("delivery", "max_spool_size")}

_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]i?b?|b)?\s*$", re.IGNORECASE)


def parse_size(value: Any) -> int:
    """``"512MB"``, ``"2GB"``, ``"64KiB"`` (binary units: 1 MB = 1024 KB) or a number of bytes."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    if isinstance(value, str):
        m = _SIZE_RE.match(value)
        if m:
            unit = (m.group(2) or "b")[0].lower()
            return int(float(m.group(1)) * 1024 ** "bkmgt".index(unit))
    raise ValueError(f"expected a size such as \"512MB\", \"2GB\" or a number of bytes, got {value!r}")


_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


def parse_duration(value: Any) -> float:
    """``"30m"``, ``"2s"``, ``"500ms"`` or a number of seconds, as seconds."""
    if isinstance(value, bool):
        raise ValueError(f"expected a duration such as \"30m\", \"2s\" or 10, got {value!r}")
    if isinstance(value, (int, float)):
        if value < 0:
            raise ValueError(f"a duration cannot be negative, got {value!r}")
        return float(value)
    if isinstance(value, str):
        m = _DURATION_RE.match(value)
        if m:
            return float(m.group(1)) * _UNITS[m.group(2)]
    raise ValueError(f"expected a duration such as \"30m\", \"2s\", \"500ms\" or 10, got {value!r}")


def coerce(section: str, key: str, value: Any, default: Any, from_env: bool) -> Any:
    """Coerce ``value`` to the type of ``default``; environment strings are parsed."""
    if (section, key) in DURATION_KEYS:
        return parse_duration(value)
    if (section, key) in SIZE_KEYS:
        return parse_size(value)
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
        if from_env and isinstance(value, str) and value.lower() in {"1", "true", "yes", "on", "0", "false", "no", "off"}:
            return value.lower() in {"1", "true", "yes", "on"}
        raise ValueError(f"expected true or false, got {value!r}")
    if isinstance(default, int):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if from_env and isinstance(value, str) and re.fullmatch(r"-?\d+", value.strip()):
            return int(value)
        raise ValueError(f"expected an integer, got {value!r}")
    if isinstance(default, float):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if from_env and isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ValueError(f"expected a number, got {value!r}")
    if isinstance(default, str):
        if isinstance(value, str):
            return value
        raise ValueError(f"expected a string, got {value!r}")
    if isinstance(default, list):
        if from_env and isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                import orjson

                try:
                    value = orjson.loads(text)
                except orjson.JSONDecodeError as exc:
                    raise ValueError(f"expected a JSON list or comma-separated values: {exc}") from None
            else:
                value = [part.strip() for part in text.split(",") if part.strip()]
        if not isinstance(value, list):
            raise ValueError(f"expected a list, got {value!r}")
        return value
    return value
