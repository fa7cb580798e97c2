"""Logging: one JSON object per line in production, readable text on a terminal.

Never log secrets or whole cookies: handlers log ids and reasons, not headers.
"""

from __future__ import annotations

import logging
import sys
from datetime import datetime, timezone
from time import perf_counter

import orjson
from aiohttp.abc import AbstractAccessLogger
from aiohttp.typedefs import Handler
from aiohttp.web import BaseRequest, Request, StreamResponse, middleware

ACCESS_LOGGER = "edgeproxy.access"
MAX_LOGGED_PATH = 512
STARTED_KEY = "edgeproxy.started"  # perf_counter() when the request reached the app (access_timing)


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


class AccessLogger(AbstractAccessLogger):
    """``[server] access_log``: one line per request with fields an operator filters on.

    Only the path (a query string can carry tokens or personal data; headers, cookies and
    Authorization are never read here). The client is the address after the trusted-proxy
    rewrite, the route the matched resource (so one line per route template can be counted).
    """

    def log(self, request: BaseRequest, response: StreamResponse, time: float) -> None:
        route = "unmatched"
        match_info = getattr(request, "match_info", None)
        resource = getattr(getattr(match_info, "route", None), "resource", None)
        if resource is not None:
            route = resource.canonical
        path = request.path if len(request.path) <= MAX_LOGGED_PATH else request.path[:MAX_LOGGED_PATH] + "…"
        started = request.get(STARTED_KEY) if isinstance(request, Request) else None
        # aiohttp's ``time`` comes from the loop clock, which uvloop advances once per loop
        # turn (a whole fast request reads 0); the middleware's perf_counter does not.
        duration_ms = round(((perf_counter() - started) if started is not None else time) * 1000, 3)
        size = response.body_length
        self.logger.info("%s %s %d %dB %.3fms", request.method, path, response.status, size, duration_ms,
                         extra={"method": request.method, "path": path, "status": response.status, "bytes": size,
                                "duration_ms": duration_ms, "client": request.remote, "route": route})

    @property
    def enabled(self) -> bool:
        return self.logger.isEnabledFor(logging.INFO)


@middleware
async def access_timing(request: Request, handler: Handler) -> StreamResponse:
    """First middleware when the access log is on: when the request reached the app."""
    request[STARTED_KEY] = perf_counter()
    return await handler(request)
