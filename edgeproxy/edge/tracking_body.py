"""The body of a tracking call: read within its time and size limits, inflated, parsed.

Why a module of its own: every way a body can be unusable (too slow, too large once
inflated, a Content-Encoding it does not have, a client gone mid-body, not JSON, not an
object) gets its own counted reason and Segment's wording, and none of that is the
handler's flow (``ingest.py``), which starts from a parsed object.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import orjson
from aiohttp import web
from aiohttp.web import RequestPayloadError

from edgeproxy import segment
from edgeproxy.logs import client_error
from edgeproxy.metrics import Metrics

log = logging.getLogger("edgeproxy.ingest")


def tracking_json(status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> web.Response:
    """A tracking API answer: JSON, as Segment's API answers (``{"success": …}``)."""
    return web.Response(status=status, body=orjson.dumps(body), content_type="application/json", headers=headers)


def tracking_error(status: int, message: str, code: str = "invalid_request", **extra: Any) -> web.Response:
    """A refusal: ``success`` false, what was wrong in ``message``, a stable ``code`` for programs."""
    return tracking_json(status, {"success": False, "message": message, "code": code, **extra})


async def read_body(request: web.Request, limit: int, timeout: float, metrics: Metrics) -> dict[str, Any] | web.Response:
    """The decompressed body as a JSON object, or the error response (Segment's wording).

    ``timeout``: ``server.body_timeout``, for a body that did not come with the headers."""
    try:
        if request.content.is_eof():  # the whole body came with the headers (the usual call): no wait
            raw = await request.read()  # aiohttp inflates gzip; client_max_size bounds the inflated size
        else:
            async with asyncio.timeout(timeout):  # a trickled body holds a connection
                raw = await request.read()
    except TimeoutError:
        metrics.events_rejected_by("body_timeout").inc()
        client_error(log, "body_timeout", request.remote, f"no complete body in {timeout:g} s")
        response = tracking_error(408, f"the body did not arrive within {timeout:g} s (server.body_timeout)",
                                  code="timeout")
        response.force_close()
        return response
    except web.HTTPRequestEntityTooLarge:
        metrics.events_rejected_by("too_large").inc()
        return tracking_error(400, f"Exceed payload limit: the body is over {limit} bytes once decompressed")
    except RequestPayloadError as exc:  # e.g. Content-Encoding: gzip on a body that is not gzip
        metrics.events_rejected_by("bad_encoding").inc()
        encoding = request.headers.get("Content-Encoding", "")
        client_error(log, "bad_encoding", request.remote, f"Content-Encoding {encoding!r}")
        response = tracking_error(400, f"the body cannot be decoded as Content-Encoding {encoding!r}: {exc}",
                                  code="invalid_encoding")
        response.force_close()  # the rest of the body cannot be read either: no keep-alive drain
        return response
    except ConnectionError:  # the client went away mid-body: nobody reads the answer
        metrics.events_rejected_by("connection_lost").inc()
        client_error(log, "connection_lost", request.remote, "closed while sending the body")
        response = tracking_error(400, "the connection was lost while reading the body")
        response.force_close()
        return response
    if len(raw) > limit:
        metrics.events_rejected_by("too_large").inc()
        return tracking_error(400, f"Exceed payload limit: the body is {len(raw)} bytes, at most {limit} allowed")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        metrics.events_rejected_by("invalid_json").inc()
        return tracking_error(400, f"Invalid JSON: {exc}", code="invalid_json")
    if not isinstance(body, dict):
        metrics.events_rejected_by("invalid_json").inc()
        return tracking_error(400, "Invalid JSON: the body must be a JSON object", code="invalid_json")
    return body


def check_message_size(raw: Any) -> None:
    """Segment's 32 KB per message inside a batch, measured as the message's own JSON."""
    try:
        size = len(orjson.dumps(raw))
    except orjson.JSONEncodeError as exc:  # deeper than the encoder's 254 levels
        raise segment.Rejected("message", f"cannot be stored: {exc}") from None
    if size > segment.MAX_MESSAGE_BYTES:
        raise segment.Rejected("message", f"Exceed payload limit: {size} bytes, at most {segment.MAX_MESSAGE_BYTES}")
