"""Logging: one JSON object per line in production, readable text on a terminal.

Never log secrets or whole cookies: handlers log ids and reasons, not headers.
"""

from __future__ import annotations

import logging
import sys
from datetime import datetime, timezone

import orjson


# What every LogRecord has; anything else on a record came from ``extra=`` and is a field.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and key not in entry:
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


def client_error(logger: logging.Logger, reason: str, client: str | None, detail: str = "") -> None:
    """A client's mistake (bad gzip, a connection lost mid-body, a body too slow): one warning
    line with the reason and the address, never a traceback (those are for our own bugs)."""
    logger.warning("client error from %s: %s%s", client or "?", reason, f" ({detail})" if detail else "",
                   extra={"client": client, "reason": reason})


def configure(fmt: str = "auto", level: int = logging.INFO) -> None:
    handler = logging.StreamHandler(sys.stderr)
    use_json = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    handler.setFormatter(JsonFormatter() if use_json else logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
