"""A local stand-in for Segment's tracking API (api.segment.io), the sibling of fake_amplitude.py.

It answers like the real edge as ``tracking-and-amplitude-apis.md`` section 1 describes it (facts
copied here, not read at run time), so code that sends to Segment is tested against Segment's
behaviour, not our assumptions:

- Paths [doc SEG-HTTP, code AJS]: single messages at ``/v1/{track,page,identify,group,alias,screen}``
  and analytics.js's first-letter forms ``/v1/{t,p,i,g,a,s}``; batches at ``/v1/batch``, ``/v1/import``
  (legacy mobile) and ``/v1/b`` (analytics.js batching, kotlin, swift, React Native).
- The write key is the body's ``writeKey`` (the documented primary method) or ``Authorization: Basic
  base64(key:)``, colon optional. The edge does not check keys: any non-empty key gets 200 and unknown
  keys are dropped silently [observed]; only a missing or empty key is a 400.
- JSON is parsed whatever the Content-Type (analytics.js sends text/plain), and gzip bodies are
  inflated (kotlin, legacy android and iOS send them).
- Limits, measured after decompression [doc SEG-HTTP]: 32 KB per single-message request and per
  message in a batch, 500 KB per batch, both a 400 "Exceed payload limit" [observed text]. More than
  2,500 messages in a batch gets a 200, but the messages are rejected.
- Everything else is a 200 [doc SEG-HTTP "Errors"], even messages with neither userId nor anonymousId
  and tracks without an event [observed]: the live service drops them later. Here they are kept in
  ``dropped`` with a reason, so a test can see why it lost them.
- The server fills ``receivedAt`` and ``originalTimestamp`` and corrects ``timestamp`` for client
  clock skew [doc SEG-COMMON]. It deduplicates on ``messageId``, globally across sources.

Where the reference is silent the choice is marked ``[unverified]``.

Use it in-process (``await FakeSegment().start()`` or the ``fake_segment`` fixture) or as a process:
``python tests/fake_segment.py --port 0`` prints its base URL. ``GET /_test/messages`` shows what was
stored. ``POST /_test/{fail_next,drop_next,fail_for,delay,hold,release,rate_limit,reset}`` (the
method's keyword arguments as a JSON object) injects faults.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import contextlib
import math
import signal
import time
import uuid
import zlib
from collections import Counter, deque
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from http import HTTPStatus
from typing import Any

import orjson
import pytest
from aiohttp import web
from multidict import CIMultiDict

MAX_BATCH_BYTES = 500 * 1024  # a whole batch request [doc SEG-HTTP]; KB read as 1024 bytes
MAX_MESSAGE_BYTES = 32 * 1024  # a single-message request, or one message of a batch [doc SEG-HTTP]
MAX_BATCH_MESSAGES = 2500  # above it: 200, but the messages are rejected [doc SEG-HTTP "Errors"]
HOLD_MAX_S = 30.0  # the longest hold() keeps a request waiting

TYPES = ("track", "page", "identify", "group", "alias", "screen")
SINGLE_PATHS = {f"/v1/{t}": t for t in TYPES} | {f"/v1/{t[0]}": t for t in TYPES}
BATCH_PATHS = frozenset({"/v1/batch", "/v1/import", "/v1/b"})

INVALID_WRITE_KEY = "An invalid write key was provided"  # [observed] 400 text
EXCEED_PAYLOAD_LIMIT = "Exceed payload limit"  # [observed] 400 text for an oversized body or message
SUCCESS = orjson.dumps({"success": True})


class _Reject(Exception):
    """A 400-style answer, raised from deep in the parsing so the handler has one exit for errors."""

    def __init__(self, status: int, message: str, code: str = "invalid_request") -> None:
        super().__init__(message)
        self.status, self.body = status, orjson.dumps({"success": False, "message": message, "code": code})


@dataclass
class RecordedRequest:
    """One request as it arrived: what a test asserts about how a sender talks to Segment."""

    method: str
    path: str
    headers: CIMultiDict[str]  # Authorization, Content-Encoding, X-Retry-Count, ... as sent
    size: int  # bytes on the wire (gzip-compressed when the sender compressed)
    body: bytes = b""  # after gzip decoding (empty when it could not be decoded)
    write_key: str | None = None
    status: int | None = None  # the status answered; None: the connection was dropped
    at: float = 0.0  # the stand-in's clock when it arrived


@dataclass(frozen=True)
class Stored:
    """An accepted message with Segment's server-side fields, and the write key it came with."""

    write_key: str
    path: str
    message: dict[str, Any]


@dataclass(frozen=True)
class Dropped:
    """A message answered 200 but not kept (as the real edge does), with why."""

    reason: str  # unknown_write_key, too_many, not_an_object, invalid_type, no_user_or_anonymous_id, no_event,
    # no_group_id, no_user_id, no_previous_id, invalid_timestamp, invalid_sent_at
    write_key: str
    path: str
    message: Any  # as sent


@dataclass
class Fault:
    """An injected answer for the next ``times`` requests; ``status`` None drops the connection."""

    status: int | None
    body: bytes
    headers: dict[str, str]
    times: int
    ingest: bool  # process the request normally first (accepted, but the answer is lost or wrong)


def _encode_fault(status: int, body: Any, headers: dict[str, str] | None) -> tuple[bytes, dict[str, str]]:
    """The fault's body and headers. None: Segment-style JSON naming the status [unverified: the
    real 5xx bodies are undocumented]; str/bytes are sent as text; anything else as JSON."""
    if body is None:
        try:
            body = {"success": False, "message": HTTPStatus(status).phrase}
        except ValueError:  # a status Python has no name for, e.g. 599
            body = {"success": False, "message": "Error"}
    ctype = "text/plain" if isinstance(body, (str, bytes)) else "application/json"
    raw = body if isinstance(body, bytes) else body.encode() if isinstance(body, str) else orjson.dumps(body)
    return raw, {"Content-Type": ctype, **(headers or {})}


def _parse_iso(value: Any) -> datetime | None:
    """An ISO-8601 string as an aware datetime (naive read as UTC), None when it is not one."""
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value)  # 3.11: accepts "Z" and the usual ISO forms
    except ValueError:
        return None
    return parsed.replace(tzinfo=timezone.utc) if parsed.tzinfo is None else parsed


def format_iso(moment: datetime) -> str:
    """Segment's format: UTC, milliseconds, ``Z`` (what ``Date.toISOString()`` writes)."""
    return moment.astimezone(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _present(value: Any) -> bool:
    """An id counts when it is a non-empty string or a number (numeric ids are common)."""
    return (isinstance(value, str) and value != "") or (isinstance(value, (int, float)) and not isinstance(value, bool))


def write_key_of(body: dict[str, Any], authorization: str | None) -> str | None:
    """The body's ``writeKey``, else Basic auth's user name [unverified: which wins when both are
    set and differ; clients that send both send the same key]. Bearer (OAuth) needs the body key."""
    key = body.get("writeKey")
    if isinstance(key, str) and key:
        return key
    if authorization and authorization[:6].lower() == "basic ":
        try:
            decoded = base64.b64decode(authorization[6:].strip(), validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            return None
        return decoded.split(":", 1)[0] or None  # "key:" or, for backward compatibility, "key"
    return None


def _inflate(raw: bytes, encoding: str, limit: int) -> bytes:
    """The body after Content-Encoding, at most ``limit + 1`` bytes (enough to refuse it, and a
    gzip bomb cannot blow up memory). Errors are 400s [unverified: the real texts]."""
    encoding = encoding.strip().lower()
    if encoding in ("", "identity"):
        return raw
    if encoding not in ("gzip", "x-gzip", "deflate"):
        raise _Reject(400, f"Invalid JSON: unsupported Content-Encoding {encoding[:20]!r}")
    inflater = zlib.decompressobj(zlib.MAX_WBITS | (16 if "gzip" in encoding else 0))
    try:
        out = inflater.decompress(raw, limit + 1)
    except zlib.error:
        raise _Reject(400, f"Invalid JSON: could not decode the {encoding} body") from None
    if len(out) <= limit and not inflater.eof:
        raise _Reject(400, f"Invalid JSON: truncated {encoding} body")
    return out


def _normalize(item: Any, path_type: str | None, envelope: dict[str, Any], received: datetime
               ) -> tuple[dict[str, Any] | None, str]:
    """(Segment's stored form of one message, "") or (None, why it is dropped)."""
    if not isinstance(item, dict):
        return None, "not_an_object"  # [unverified: dropped, as "200 for all but size and JSON errors"]
    msg = {k: v for k, v in item.items() if k != "writeKey"}  # the key is kept beside the message
    msg["type"] = msg.get("type") or path_type  # the body's type wins; a single path implies one
    if msg["type"] not in TYPES:
        return None, "invalid_type"
    for name in ("context", "integrations"):  # the batch's, under the message's own (top level)
        outer, inner = envelope.get(name), msg.get(name)
        if isinstance(outer, dict):
            msg[name] = {**outer, **(inner if isinstance(inner, dict) else {})}
    if not _present(msg.get("userId")) and not _present(msg.get("anonymousId")):
        return None, "no_user_or_anonymous_id"  # [observed] 200, then dropped
    required = {"track": ("event", "no_event"), "group": ("groupId", "no_group_id"),
                "alias": ("userId", "no_user_id")}.get(msg["type"])
    if required and not (isinstance(msg.get(required[0]), str) and msg[required[0]]):
        return None, required[1]  # track [observed]; group, alias by the docs' required fields [unverified]
    if msg["type"] == "alias" and not _present(msg.get("previousId")):
        return None, "no_previous_id"
    # Clock skew [doc SEG-COMMON]: sentAt = message ?? batch; both: receivedAt - (sentAt - timestamp);
    # only a timestamp: kept (historical import); neither: receivedAt. Unparsable: dropped [unverified].
    msg["receivedAt"] = format_iso(received)
    sent_raw = msg.get("sentAt") or envelope.get("sentAt")
    ts_raw = msg.get("timestamp")
    if ts_raw in (None, ""):
        msg["timestamp"] = msg["receivedAt"]
    else:
        original = _parse_iso(ts_raw)
        if original is None:
            return None, "invalid_timestamp"
        msg["originalTimestamp"] = ts_raw
        if sent_raw:
            sent = _parse_iso(sent_raw)
            if sent is None:
                return None, "invalid_sent_at"
            msg["timestamp"] = format_iso(received - (sent - original))
    if sent_raw:
        msg["sentAt"] = sent_raw
    if not msg.get("messageId"):
        msg["messageId"] = str(uuid.uuid4())  # "the HTTP API assigns one" [doc duplicate-data guide]
    return msg, ""


class FakeSegment:
    """An aiohttp server that ingests like api.segment.io. Public attributes are read per request,
    so a test may change ``write_keys`` while it runs. ``clock`` is wall time in epoch seconds: it
    stamps ``receivedAt`` and times ``fail_for`` and the rate limit, so tests can inject one."""

    def __init__(self, write_keys: Iterable[str] | None = None, clock: Callable[[], float] = time.time,
                 rate_limit: float | None = None) -> None:
        self.write_keys: set[str] | None = None if write_keys is None else set(write_keys)
        self.clock = clock
        self._rate_limit_default = rate_limit
        self.reset()
        self._runner: web.AppRunner | None = None
        self._stopping = asyncio.Event()
        self.base_url = ""

    # ---- what arrived ----
    def messages(self, write_key: str | None = None, type: str | None = None) -> list[dict[str, Any]]:
        """Every accepted message in arrival order, duplicates included (Segment would deliver a
        messageId once: see ``unique_messages``), optionally of one write key or type."""
        return [s.message for s in self.log if (write_key is None or s.write_key == write_key)
                and (type is None or s.message["type"] == type)]

    def unique_messages(self, write_key: str | None = None) -> list[dict[str, Any]]:
        """The first of each messageId: what Segment's dedupe would pass on."""
        first: dict[str, dict[str, Any]] = {}
        for msg in self.messages(write_key):
            first.setdefault(msg["messageId"], msg)
        return list(first.values())

    def duplicates(self) -> list[str]:
        """The messageIds accepted more than once (globally: Segment's dedupe is not per source)."""
        return [mid for mid, n in Counter(s.message["messageId"] for s in self.log).items() if n > 1]

    def dropped_reasons(self) -> list[str]:
        return [d.reason for d in self.dropped]

    # ---- fault injection ----
    def fail_next(self, status: int, body: Any = None, headers: dict[str, str] | None = None,
                  times: int = 1, ingest: bool = False) -> None:
        """Answer the next ``times`` requests with ``status``, ``body`` and extra ``headers`` (e.g.
        ``{"Retry-After": "5"}`` on a 429). Queued faults apply in order; with ``ingest`` the
        messages are stored first (accepted, but the sender sees a failure)."""
        if not 100 <= status <= 599:
            raise ValueError(f"fail_next: status must be an HTTP status (100-599), got {status}")
        self._add_fault(Fault(status, *_encode_fault(status, body, headers), times, ingest))

    def drop_next(self, times: int = 1, ingest: bool = False) -> None:
        """Reset the connection without an answer on the next ``times`` requests; with ``ingest``
        the messages are stored first: the "accepted but the answer was lost" case."""
        self._add_fault(Fault(None, b"", {}, times, ingest))

    def fail_for(self, seconds: float, status: int = 503, body: Any = None,
                 headers: dict[str, str] | None = None) -> None:
        """An outage: answer every request with ``status`` for ``seconds`` of ``clock`` from now,
        then recover. Nothing sent during the outage is stored."""
        if not 100 <= status <= 599 or seconds < 0:
            raise ValueError(f"fail_for: needs an HTTP status and seconds >= 0, got {status}, {seconds}")
        self._outage = (self.clock() + seconds, Fault(status, *_encode_fault(status, body, headers), 1, False))

    def set_delay(self, seconds: float) -> None:
        """Wait this long before answering each request (0: off), to make senders time out. The
        request is still processed after the wait, as a slow server would."""
        self.delay = seconds

    def hold(self) -> None:
        """Keep every request waiting until ``release()`` (at most HOLD_MAX_S): a window in which a
        sender's request is in flight for as long as a test needs to look at it."""
        self._held = True

    def release(self) -> None:
        self._held = False  # held handlers notice within 10 ms

    def rate_limit(self, requests_per_s: float | None) -> None:
        """Above ``requests_per_s`` requests in any 1 s window answer 429 with ``Retry-After`` and
        ``X-RateLimit-Reset`` (seconds) [doc SEG-HTTP "Rate limits"]; None turns it off. Refused
        requests do not count, so a sender that waits as told gets through."""
        if requests_per_s is not None and requests_per_s < 1:
            raise ValueError(f"rate_limit: requests_per_s must be at least 1 (or None), got {requests_per_s}")
        self._rate = requests_per_s

    def reset(self) -> None:
        """Forget records, faults, delay, hold and dedupe state, and put the rate limit back to the
        constructor's; ``write_keys`` and ``clock`` stay."""
        self.requests: list[RecordedRequest] = []
        self.log: list[Stored] = []
        self.dropped: list[Dropped] = []
        self.delay = 0.0
        self._held = False
        self._faults: list[Fault] = []
        self._outage: tuple[float, Fault] | None = None
        self._rate = self._rate_limit_default
        self._window: deque[float] = deque()

    def _add_fault(self, fault: Fault) -> None:
        if fault.times < 1:
            raise ValueError(f"times must be at least 1, got {fault.times}")
        self._faults.append(fault)

    def _take_fault(self) -> Fault | None:
        if self._outage is not None:
            if self.clock() < self._outage[0]:
                return self._outage[1]
            self._outage = None
        fault = self._faults[0] if self._faults else None
        if fault is not None:
            fault.times -= 1
            if fault.times == 0:
                self._faults.pop(0)
        return fault

    def _rate_limited(self) -> tuple[int, bytes, dict[str, str]] | None:
        """The 429 when this request is over the rate limit; otherwise counts it."""
        if self._rate is None:
            return None
        now = self.clock()
        while self._window and self._window[0] <= now - 1.0:
            self._window.popleft()
        if len(self._window) + 1 > self._rate:
            wait = str(max(1, math.ceil(self._window[0] + 1.0 - now)))
            body = orjson.dumps({"success": False, "message": "Too Many Requests", "code": "rate_limited"})
            return 429, body, {"Content-Type": "application/json", "Retry-After": wait, "X-RateLimit-Reset": wait}
        self._window.append(now)
        return None

    # ---- server ----
    async def start(self, port: int = 0, host: str = "127.0.0.1") -> str:
        """Listen on ``host:port`` (0: a free port) and return the base URL."""
        self._stopping = asyncio.Event()
        app = web.Application(client_max_size=64 * 1024 * 1024)  # our 400s, not aiohttp's 413
        app.router.add_get("/_test/messages", self._inspect)
        app.router.add_post("/_test/{action}", self._control)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        # We inflate gzip ourselves: to record the wire size and bound the inflated size.
        self._runner = web.AppRunner(app, shutdown_timeout=1.0, access_log=None, auto_decompress=False)
        await self._runner.setup()
        await web.TCPSite(self._runner, host, port).start()
        self.base_url = f"http://{host}:{self._runner.addresses[0][1]}"
        return self.base_url

    async def stop(self) -> None:
        self._stopping.set()  # wakes held and delayed handlers so shutdown is bounded
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        record = RecordedRequest(request.method, request.path, CIMultiDict(request.headers), len(raw),
                                 at=self.clock())
        self.requests.append(record)
        is_api = request.path in SINGLE_PATHS or request.path in BATCH_PATHS
        fault = self._take_fault() if is_api else None
        limited = self._rate_limited() if is_api and fault is None else None
        for _ in range(int(HOLD_MAX_S / 0.01)):  # bounded: a test that forgets release() still ends
            if not self._held or self._stopping.is_set():
                break
            await asyncio.sleep(0.01)
        if self.delay > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self.delay)
        status, body, headers = 0, b"", {}
        if fault is not None and not fault.ingest:
            with contextlib.suppress(_Reject):  # record what was sent even though it is not processed
                record.body = _inflate(raw, request.headers.get("Content-Encoding", ""), MAX_BATCH_BYTES)
        else:
            status, body, headers = limited or self._process(request.method, request.path, raw, record)
        if fault is not None:
            if fault.status is None:
                self._drop(request)
            status, body, headers = fault.status, fault.body, fault.headers
        record.status = status
        return web.Response(status=status, body=body, headers=headers)

    @staticmethod
    def _drop(request: web.Request) -> None:
        if request.transport is not None:
            request.transport.abort()
        raise asyncio.CancelledError  # aiohttp ends the handler quietly; the client sees a disconnect

    def _process(self, method: str, path: str, raw: bytes,
                 record: RecordedRequest) -> tuple[int, bytes, dict[str, str]]:
        try:
            if path not in SINGLE_PATHS and path not in BATCH_PATHS:
                raise _Reject(404, "Not Found", "not_found")  # [unverified]
            self._ingest(method, path, raw, record)
        except _Reject as rejected:
            return rejected.status, rejected.body, {"Content-Type": "application/json"}
        return 200, SUCCESS, {"Content-Type": "application/json"}

    def _ingest(self, method: str, path: str, raw: bytes, record: RecordedRequest) -> None:
        """Check and store one request's messages: size, JSON, write key, each message's size, count."""
        if method != "POST":
            raise _Reject(400, "Invalid JSON: malformed JSON (POST a JSON body)")  # [observed] for GET
        is_batch = path in BATCH_PATHS
        limit = MAX_BATCH_BYTES if is_batch else MAX_MESSAGE_BYTES
        data = record.body = _inflate(raw, record.headers.get("Content-Encoding", ""), limit)
        if len(data) > limit:
            raise _Reject(400, EXCEED_PAYLOAD_LIMIT)
        try:
            doc = orjson.loads(data)
        except orjson.JSONDecodeError:
            raise _Reject(400, "Invalid JSON: malformed JSON") from None
        if not isinstance(doc, dict):
            raise _Reject(400, "Invalid JSON: the body must be a JSON object")
        key = record.write_key = write_key_of(doc, record.headers.get("Authorization"))
        if not key:
            raise _Reject(400, INVALID_WRITE_KEY)
        items: Any = doc.get("batch") if is_batch else [doc]
        if not isinstance(items, list):
            raise _Reject(400, "Invalid JSON: batch must be an array")  # [unverified]
        if is_batch and any(len(orjson.dumps(item)) > MAX_MESSAGE_BYTES for item in items):
            raise _Reject(400, EXCEED_PAYLOAD_LIMIT)  # one oversized message refuses the whole request
        refused = ("unknown_write_key" if self.write_keys is not None and key not in self.write_keys
                   else "too_many" if len(items) > MAX_BATCH_MESSAGES else "")
        received = datetime.fromtimestamp(record.at, timezone.utc)  # on arrival, before any hold or delay
        envelope = doc if is_batch else {}
        for item in items:
            msg, reason = (None, refused) if refused else _normalize(item, SINGLE_PATHS.get(path), envelope, received)
            if msg is None:
                self.dropped.append(Dropped(reason, key, path, item))
            else:
                self.log.append(Stored(key, path, msg))

    # ---- /_test routes, for tests that run the sender (and this server) as processes ----
    async def _inspect(self, request: web.Request) -> web.Response:
        return web.json_response({
            "messages": [asdict(s) for s in self.log],
            "dropped": [asdict(d) for d in self.dropped],
            "duplicates": self.duplicates(),
            "requests": [{"method": r.method, "path": r.path, "status": r.status, "size": r.size, "write_key":
                          r.write_key, "headers": {str(k): v for k, v in r.headers.items()}} for r in self.requests],
        }, dumps=lambda obj: orjson.dumps(obj).decode())

    async def _control(self, request: web.Request) -> web.Response:
        """POST /_test/<action> with the method's keyword arguments as a JSON object."""
        actions: dict[str, Callable[..., None]] = {
            "fail_next": self.fail_next, "drop_next": self.drop_next, "fail_for": self.fail_for,
            "delay": self.set_delay, "hold": self.hold, "release": self.release,
            "rate_limit": self.rate_limit, "reset": self.reset}
        action = actions.get(request.match_info["action"])
        try:
            kwargs = orjson.loads(await request.read() or b"{}")
            if action is None or not isinstance(kwargs, dict):
                raise ValueError(f"use POST /_test/<{'|'.join(actions)}> with a JSON object of arguments")
            action(**kwargs)
        except (ValueError, TypeError) as exc:  # orjson.JSONDecodeError is a ValueError
            return web.json_response({"error": str(exc)}, status=400)
        return web.json_response({"ok": True})


@pytest.fixture
async def fake_segment() -> AsyncIterator[FakeSegment]:
    """A started FakeSegment that takes any non-empty write key, stopped after the test."""
    fake = FakeSegment()
    await fake.start()
    try:
        yield fake
    finally:
        await fake.stop()


async def _serve(args: argparse.Namespace) -> None:
    fake = FakeSegment(args.write_key, rate_limit=args.rate_limit)
    print(await fake.start(args.port, args.host), flush=True)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    await stop.wait()
    await fake.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="A local fake of Segment's tracking API, for tests.")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port (the URL is printed)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--write-key", action="append", help="a known key (repeatable); others get 200 and are "
                        "dropped. Default: every key is known")
    parser.add_argument("--rate-limit", type=float, default=None, help="requests per second before 429s")
    asyncio.run(_serve(parser.parse_args(argv)))


if __name__ == "__main__":
    main()
