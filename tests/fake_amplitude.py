"""A local stand-in for Amplitude's ingestion API: the only one the tests use (the network is closed).

It answers like the real service as described in ``tracking-and-amplitude-apis.md`` section 2 and
``amplitude-actions.md`` (copied facts, not read at run time): the same paths, limits, 400/413/429
bodies and dedupe, so delivery code is tested against Amplitude's behaviour, not our assumptions.
Where the reference is silent the choice is marked ``[unverified]`` and leans to the stricter
reading, so that a proxy that passes here is unlikely to fail against the real service.

Use it in-process (``await FakeAmplitude().start()`` or the ``fake_amplitude`` fixture) or as a
process: ``python tests/fake_amplitude.py --port 0`` prints its base URL; ``GET /_test/ingested``
shows what was ingested and ``POST /_test/{fail_next,drop_next,delay,fail_for,reset}`` injects
faults: status sequences (``fail_next`` queues in order), dropped connections, latency, an
outage window, plus ``set_limits`` (size limits) and ``eps_threshold`` (throttling).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import dataclasses
import math
import signal
import time
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qsl

import orjson
import pytest
from aiohttp import web
from multidict import CIMultiDict


HOLD_MAX_S = 30.0  # the longest hold() keeps a request waiting


@dataclass(frozen=True)
class EndpointRules:
    """What one endpoint accepts; ``form_field`` None means a JSON body with ``events``."""

    path: str
    form_field: str | None
    max_bytes: int  # largest accepted body, after gzip decoding (413 above it)
    max_items: int  # largest accepted number of events/identifications/mappings (413 above it)
    required: tuple[tuple[str, ...], ...]  # per item: at least one field of each group
    id_fields: tuple[str, ...]  # held to min_id_length and the always-invalid ids
    throttled: bool  # counted against eps_threshold
    deduped: bool  # insert_id dedupe applies


_EVENT_REQUIRED = (("event_type",), ("user_id", "device_id"))
_IDS = ("user_id", "device_id")
# 1 MB is read as 10**6 bytes, the stricter reading. /identify limits are not documented
# [unverified]: it follows /2/httpapi ("same guidance as V2"). /usermap's id rules [unverified].
ENDPOINTS: dict[str, EndpointRules] = {
    "httpapi": EndpointRules("/2/httpapi", None, 1_000_000 - 1, 1999, _EVENT_REQUIRED, _IDS, True, True),
    "batch": EndpointRules("/batch", None, 20_000_000, 2000, _EVENT_REQUIRED, _IDS, True, True),
    "identify": EndpointRules("/identify", "identification", 1_000_000 - 1, 1999, (_IDS,), _IDS, True, True),
    "groupidentify": EndpointRules(
        "/groupidentify", "identification", 1_000_000, 1024, (("group_type",), ("group_value",)), (), False, True
    ),
    "usermap": EndpointRules(
        "/usermap", "mapping", 1_000_000, 2000, (("user_id",), ("global_user_id", "unmap")),
        ("user_id", "global_user_id"), False, False,
    ),
}
PATH_TO_ENDPOINT = {rules.path: name for name, rules in ENDPOINTS.items()}

MAX_STRING = 1024  # every string value [doc AMP-V2]; a longer one is a 400 here [unverified: the stricter choice]
MAX_DEPTH = 40  # nesting of property objects [doc AMP-V2]
# Compared case-insensitively [unverified]; '""' is the two-character string the docs list.
ALWAYS_INVALID_IDS = frozenset({
    "anonymous", "nil", "none", "null", "n/a", "na", "undefined", "unknown", '""', "",
    "00000000-0000-0000-0000-000000000000", "{}", "lmy47d", "0", "-1",
})


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


_STRINGS = (
    "event_type user_id device_id insert_id app_version platform os_name os_version device_brand "
    "device_manufacturer device_model carrier country region city dma language ip idfa idfv adid android_id "
    "android_app_set_id user_agent productId revenueType currency library group_type global_user_id"
).split()
# Field -> check of its value when present (null counts as absent). Unknown fields pass, as in Amplitude.
FIELD_RULES: dict[str, Callable[[Any], bool]] = {
    **{f: lambda v: isinstance(v, str) for f in _STRINGS},
    **{f: _is_int for f in ("time", "session_id", "event_id", "quantity")},
    **{f: _is_number for f in ("price", "revenue", "location_lat", "location_lng")},
    **{f: lambda v: isinstance(v, dict) for f in ("event_properties", "user_properties", "groups", "group_properties")},
}
# Error text of a 400 by the first kind of problem found; an Amplitude maintainer confirmed missing
# ids use the request-level text (analytics-go#71).
ITEM_ERRORS = {
    "events_with_missing_fields": "Request missing required field",
    "events_with_invalid_fields": "Invalid field values on some events",
    "events_with_invalid_id_lengths": "Invalid id length for user_id or device_id",
}
DEFAULT_ERRORS = {403: "Forbidden", 413: "Payload too large", 429: "Too many requests for some devices and users"}


def _too_long_or_deep(value: Any, depth: int = 0) -> bool:
    """A string over MAX_STRING, or containers nested deeper than MAX_DEPTH (bounds the recursion)."""
    if isinstance(value, str):
        return len(value) > MAX_STRING
    if isinstance(value, (dict, list)):
        if depth >= MAX_DEPTH:
            return True
        children = value.values() if isinstance(value, dict) else value
        return any(_too_long_or_deep(v, depth + 1) for v in children)
    return False


def _bad_id(value: Any, min_id_length: int) -> bool:
    return isinstance(value, str) and (len(value) < min_id_length or value.lower() in ALWAYS_INVALID_IDS)


def validate_items(rules: EndpointRules, items: list[dict[str, Any]], min_id_length: int) -> dict[str, Any]:
    """The 400 body Amplitude gives for these items, or {} when all pass.

    Index lists name every offending item (the SDKs' tests use full lists). A too-short id fails
    the request even when the other id is valid: observed behaviour, not the docs' "removed".
    """
    found: dict[str, dict[str, list[int]]] = {kind: {} for kind in ITEM_ERRORS}
    for i, item in enumerate(items):
        for group in rules.required:
            if all(item.get(f) is None for f in group):
                for f in group:
                    found["events_with_missing_fields"].setdefault(f, []).append(i)
        for key, value in item.items():
            check = FIELD_RULES.get(key)
            if value is None:
                continue
            if (check is not None and not check(value)) or _too_long_or_deep(value):
                found["events_with_invalid_fields"].setdefault(key, []).append(i)
            elif key in rules.id_fields and _bad_id(value, min_id_length):
                found["events_with_invalid_id_lengths"].setdefault(key, []).append(i)
    problems = {kind: fields for kind, fields in found.items() if fields}
    if not problems:
        return {}
    return {"code": 400, "error": ITEM_ERRORS[next(iter(problems))], **problems}


class _Reject(Exception):
    """An error answer; raised from deep in the parsing so the handler has one exit for errors."""

    def __init__(self, status: int, error: str, **fields: Any) -> None:
        super().__init__(error)
        self.status, self.body = status, {"code": status, "error": error, **fields}


class WindowCounter:
    """Counts per id over a sliding window kept in fixed buckets: memory is buckets × max_ids."""

    def __init__(self, window: float, buckets: int, max_ids: int = 100_000) -> None:
        self.window, self.step, self.max_ids = window, window / buckets, max_ids
        self._ids: OrderedDict[str, deque[list[float]]] = OrderedDict()

    def total(self, key: str, now: float) -> float:
        buckets = self._ids.get(key)
        while buckets and buckets[0][0] + self.step <= now - self.window:  # wholly out of the window
            buckets.popleft()
        return sum(count for _, count in buckets) if buckets else 0

    def add(self, key: str, count: int, now: float) -> None:
        self.total(key, now)  # prune
        start = now - now % self.step
        buckets = self._ids.setdefault(key, deque())
        self._ids.move_to_end(key)
        if buckets and buckets[-1][0] == start:
            buckets[-1][1] += count
        else:
            buckets.append([start, count])
        if len(self._ids) > self.max_ids:
            self._ids.popitem(last=False)


@dataclass
class Fault:
    """An injected answer for the next ``times`` matching requests; ``status`` None drops the connection."""

    status: int | None
    body: bytes
    content_type: str
    endpoint: str | None
    times: int
    ingest: bool  # process the request normally first (an accepted request whose answer is lost)


@dataclass
class RecordedRequest:
    method: str
    path: str
    endpoint: str | None
    headers: CIMultiDict[str]
    raw: bytes
    body: Any = None  # parsed JSON, or the form with its JSON fields parsed
    status: int | None = None  # None: the connection was dropped
    response: bytes = b""
    at: float = dataclasses.field(default_factory=time.monotonic)  # when it arrived (monotonic seconds)


@dataclass(frozen=True)
class Ingested:
    endpoint: str
    api_key: str
    item: dict[str, Any]


def _encode_body(status: int, body: Any) -> bytes:
    if body is None:
        return orjson.dumps({"code": status, "error": DEFAULT_ERRORS.get(status, HTTPStatus(status).phrase)})
    if isinstance(body, bytes):
        return body
    return body.encode() if isinstance(body, str) else orjson.dumps(body)


# The key the project's tests configure edgeproxy with (the `amp` fixture in conftest.py).
TEST_API_KEY = "test-api-key-0001"
DELETIONS = "deletions"
DELETIONS_PATH = "/api/2/deletions/users"


class FakeAmplitude:
    """An aiohttp server that ingests like Amplitude. Public attributes are read per request, so a
    test may change ``api_keys``, ``eps_threshold`` etc. while it runs."""

    def __init__(
        self,
        api_keys: Iterable[str] = ("test-key",),
        min_id_length: int = 5,
        eps_threshold: float | None = None,
        throttle_window: float = 30.0,
        daily_quota: int | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.api_keys = set(api_keys)
        self.secret_keys: dict[str, str] = {}  # api key -> its project's secret key (User Privacy API)
        self.min_id_length = min_id_length
        self.eps_threshold = eps_threshold
        self.daily_quota = daily_quota  # /batch only, per device and user over a rolling 24 h
        self.clock = clock
        # /batch averages over 30 s [doc]; V2 says "a recent window" [unverified: the same 30 s].
        self.throttle_window = throttle_window
        self.reset()
        self._runner: web.AppRunner | None = None
        self._stopping = asyncio.Event()
        self.base_url = ""

    # ---- what was ingested ----
    def ingested(self, *endpoints: str, api_key: str | None = None) -> list[dict[str, Any]]:
        """Items ingested in order, from the given endpoints (all when none) and api key."""
        return [
            r.item for r in self.log
            if (not endpoints or r.endpoint in endpoints) and (api_key is None or r.api_key == api_key)
        ]

    @property
    def events(self) -> list[dict[str, Any]]:
        return self.ingested("httpapi", "batch")

    @property
    def identifications(self) -> list[dict[str, Any]]:
        return self.ingested("identify", "groupidentify")

    @property
    def usermaps(self) -> list[dict[str, Any]]:
        return self.ingested("usermap")

    # ---- fault injection ----
    def fail_next(
        self, status: int, body: Any = None, content_type: str = "application/json",
        times: int = 1, endpoint: str | None = None, ingest: bool = False,
    ) -> None:
        """Answer the next ``times`` requests (to ``endpoint``, or any) with ``status`` and ``body``
        (None: Amplitude's JSON for that status; str/bytes: sent as is; else JSON-encoded)."""
        if not 100 <= status <= 599:
            raise ValueError(f"fail_next: status must be an HTTP status (100-599), got {status}")
        self._add_fault(Fault(status, _encode_body(status, body), content_type, endpoint, times, ingest))

    def drop_next(self, times: int = 1, endpoint: str | None = None, ingest: bool = False) -> None:
        """Close the connection without an answer on the next ``times`` requests."""
        self._add_fault(Fault(None, b"", "", endpoint, times, ingest))

    def fail_for(self, seconds: float, status: int = 503, body: Any = None, content_type: str = "application/json",
                 endpoint: str | None = None) -> None:
        """An outage: answer every request (to ``endpoint``, or any) with ``status`` for ``seconds``
        from now, then recover. Nothing sent during the outage is ingested."""
        if not 100 <= status <= 599 or seconds < 0:
            raise ValueError(f"fail_for: needs an HTTP status and seconds >= 0, got {status}, {seconds}")
        if endpoint is not None and endpoint not in ENDPOINTS:
            raise ValueError(f"unknown endpoint {endpoint!r}; use one of {sorted(ENDPOINTS)}")
        self._outage = (self.clock() + seconds, endpoint, status, _encode_body(status, body), content_type)

    def set_limits(self, endpoint: str, *, max_bytes: int | None = None, max_items: int | None = None) -> None:
        """Tighten an endpoint's size limits (413 above them), e.g. to see batches split on a real 413."""
        rules = self.rules[endpoint]
        self.rules[endpoint] = dataclasses.replace(
            rules, max_bytes=rules.max_bytes if max_bytes is None else max_bytes,
            max_items=rules.max_items if max_items is None else max_items)

    def set_delay(self, seconds: float) -> None:
        """Wait this long before handling each request (0 turns it off); simulates timeouts.
        The request is still processed after the wait, as a slow server would."""
        self.delay = seconds

    def hold(self) -> None:
        """Keep every request waiting (before it is handled) until ``release()``: a window in
        which the sender's batch is in flight for as long as a test needs to look at it."""
        self._held = True

    def release(self) -> None:
        self._held = False

    def reset(self) -> None:
        """Forget faults (outage, tightened limits), delay, records, dedupe and throttle state (the
        constructor's configuration stays)."""
        self._eps = WindowCounter(self.throttle_window, 30)
        self._daily = WindowCounter(86_400.0, 24)  # "hourly steps" [doc AMP-BATCH]
        self.delay = 0.0
        self._held = False
        self.requests: list[RecordedRequest] = []
        self.log: list[Ingested] = []
        self.duplicates = 0
        self._faults: list[Fault] = []
        self._seen: set[tuple[str, str | None, str]] = set()
        self._outage: tuple[float, str | None, int, bytes, str] | None = None
        self.rules: dict[str, EndpointRules] = dict(ENDPOINTS)
        self.deletions: list[dict[str, Any]] = []  # accepted User Privacy API requests (bodies)

    def _add_fault(self, fault: Fault) -> None:
        if fault.endpoint is not None and fault.endpoint not in ENDPOINTS and fault.endpoint != DELETIONS:
            raise ValueError(f"unknown endpoint {fault.endpoint!r}; use one of {sorted(ENDPOINTS)}")
        if fault.times < 1:
            raise ValueError(f"times must be at least 1, got {fault.times}")
        self._faults.append(fault)

    def _take_fault(self, endpoint: str | None) -> Fault | None:
        if self._outage is not None and endpoint is not None:
            until, only, status, body, content_type = self._outage
            if self.clock() >= until:
                self._outage = None
            elif only in (None, endpoint):
                return Fault(status, body, content_type, endpoint, 1, False)
        for fault in self._faults:
            if endpoint is not None and fault.endpoint in (None, endpoint):
                fault.times -= 1
                if fault.times == 0:
                    self._faults.remove(fault)
                return fault
        return None

    # ---- server ----
    async def start(self, port: int = 0, host: str = "127.0.0.1") -> str:
        """Listen on ``host:port`` (0: a free port) and return the base URL."""
        self._stopping = asyncio.Event()
        app = web.Application(client_max_size=64 * 1024 * 1024)  # our 413s, not aiohttp's
        app.router.add_get("/_test/ingested", self._inspect)
        app.router.add_post("/_test/{action}", self._control)
        app.router.add_post(DELETIONS_PATH, self._deletions)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, shutdown_timeout=1.0, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, host, port).start()
        self.base_url = f"http://{host}:{self._runner.addresses[0][1]}"
        return self.base_url

    async def stop(self) -> None:
        self._stopping.set()  # wakes delayed handlers so shutdown is bounded
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        endpoint = PATH_TO_ENDPOINT.get(request.path) if request.method == "POST" else None
        record = RecordedRequest(request.method, request.path, endpoint, CIMultiDict(request.headers),
                                 await request.read())
        self.requests.append(record)
        fault = self._take_fault(endpoint)
        for _ in range(int(HOLD_MAX_S / 0.01)):  # bounded: a test that forgets release() still ends
            if not self._held or self._stopping.is_set():
                break
            await asyncio.sleep(0.01)
        if self.delay > 0:
            try:
                await asyncio.wait_for(self._stopping.wait(), self.delay)
            except TimeoutError:
                pass
        status, content_type, body = 0, "", b""
        if fault is not None and not fault.ingest and endpoint is not None:
            with contextlib.suppress(_Reject):  # record what was sent even though it is not processed
                record.body = _parse_body(self.rules[endpoint], request.content_type, record.raw)
        if fault is None or fault.ingest:
            try:
                status, content_type, body = self._process(endpoint, request.content_type, record)
            except _Reject as rejected:
                status, content_type, body = rejected.status, "application/json", orjson.dumps(rejected.body)
        if fault is not None:
            if fault.status is None:
                self._drop(request)
            status, content_type, body = fault.status, fault.content_type, fault.body
        record.status, record.response = status, body
        return web.Response(status=status, body=body, headers={"Content-Type": content_type})

    async def _deletions(self, request: web.Request) -> web.StreamResponse:
        """The User Privacy API (v1): Basic auth ``api_key:secret_key`` (a known api key and the
        secret in ``secret_keys``, any non-empty one when it lists none), a JSON body with
        ``user_ids`` and/or ``amplitude_ids`` (1-100 ids in all) and a ``requester``."""
        record = RecordedRequest("POST", request.path, DELETIONS, CIMultiDict(request.headers), await request.read())
        self.requests.append(record)
        fault = self._take_fault(DELETIONS)
        if fault is not None:
            if fault.status is None:
                self._drop(request)
            return web.Response(status=fault.status, body=fault.body, headers={"Content-Type": fault.content_type})
        try:
            scheme, _, encoded = request.headers.get("Authorization", "").partition(" ")
            api_key, _, secret = base64.b64decode(encoded, validate=True).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            scheme, api_key, secret = "", "", ""
        expected = self.secret_keys.get(api_key)
        if scheme != "Basic" or api_key not in self.api_keys or not secret or expected not in (None, secret):
            return web.json_response({"error": "Invalid API key or secret key"}, status=401)
        try:
            body = orjson.loads(record.raw)
        except orjson.JSONDecodeError:
            return web.json_response({"error": "Request body is not valid JSON"}, status=400)
        ids = [*(body.get("user_ids") or []), *(body.get("amplitude_ids") or [])] if isinstance(body, dict) else []
        if not ids or len(ids) > 100 or not isinstance(body.get("requester", ""), str):
            return web.json_response({"error": "Provide 1 to 100 user_ids or amplitude_ids, and a requester"}, status=400)
        record.body = body
        self.deletions.append(body)
        day = time.strftime("%Y-%m-%d", time.gmtime())
        jobs = [{"amplitude_id": abs(hash(str(i))) % 10**12, "requested_on_day": day, "requester": body.get("requester")}
                for i in ids]
        return web.json_response([{"day": day, "amplitude_ids": jobs, "status": "staging"}])

    @staticmethod
    def _drop(request: web.Request) -> None:
        if request.transport is not None:
            request.transport.abort()
        raise asyncio.CancelledError  # aiohttp ends the handler quietly; the client sees a disconnect

    def _process(self, endpoint: str | None, content_type: str, record: RecordedRequest) -> tuple[int, str, bytes]:
        """Validate, throttle, dedupe and ingest one request, as Amplitude would, in its order."""
        if endpoint is None:
            # The docs list "Invalid request path" among the 400 errors [doc AMP-V2 400].
            raise _Reject(400, "Invalid request path")
        rules, raw = self.rules[endpoint], record.raw
        if len(raw) > rules.max_bytes:
            raise _Reject(413, "Payload too large")
        body = record.body = _parse_body(rules, content_type, raw)
        items_field = rules.form_field or "events"
        for name in ("api_key", items_field):
            if body.get(name) in (None, "", []):  # an empty list counts as missing [unverified]
                raise _Reject(400, "Request missing required field", missing_field=name)
        api_key, items = body["api_key"], body[items_field]
        if not isinstance(api_key, str) or api_key not in self.api_keys:
            raise _Reject(400, f"Invalid API key: {api_key}")
        if isinstance(items, dict) and rules.form_field == "identification":
            items = [items]  # /identify takes a single object as well as an array [doc AMP-IDENT]
        if not isinstance(items, list) or not all(isinstance(item, dict) for item in items):
            raise _Reject(400, "Invalid event JSON")
        if len(items) > rules.max_items:
            raise _Reject(413, "Payload too large")
        invalid = validate_items(rules, items, self._min_id_length(body.get("options")))
        if invalid:
            raise _Reject(400, **{k: v for k, v in invalid.items() if k != "code"})
        if rules.throttled:
            self._throttle(endpoint, items)
        for item in items:
            insert_id = item.get("insert_id")
            if rules.deduped and isinstance(insert_id, str):
                key = (api_key, item.get("device_id"), insert_id)  # per device when present [doc AMP-V2]
                if key in self._seen:
                    self.duplicates += 1  # silently dropped; the answer does not say so
                    continue
                self._seen.add(key)
            self.log.append(Ingested(endpoint, api_key, item))
        if rules.form_field is not None:
            return 200, "text/plain", b"success"  # observed for /identify; the others [unverified]
        return 200, "application/json", orjson.dumps({
            "code": 200, "events_ingested": len(items), "payload_size_bytes": len(raw),
            "server_upload_time": int(time.time() * 1000),
        })

    def _min_id_length(self, options: Any) -> int:
        """``options.min_id_length``; the literal "undefined" Segment sends means none [doc SEG-AMP]."""
        if options in (None, "undefined") or (isinstance(options, dict) and "min_id_length" not in options):
            return self.min_id_length
        value = options.get("min_id_length") if isinstance(options, dict) else None
        if not _is_int(value) or value < 1:
            raise _Reject(400, f"Invalid options: min_id_length must be a positive integer, got {value!r}")
        return value

    def _throttle(self, endpoint: str, items: list[dict[str, Any]]) -> None:
        """429 when a device or user would exceed eps_threshold (or /batch's daily quota); the
        whole request is then rejected and not counted. Accepted events are counted."""
        now, per_id = self.clock(), {}  # type: dict[tuple[str, str], list[int]]
        for i, item in enumerate(items):
            for kind in ("device_id", "user_id"):
                if isinstance(item.get(kind), str):
                    per_id.setdefault((kind, item[kind]), []).append(i)
        throttled: dict[str, dict[str, int]] = {"device_id": {}, "user_id": {}}
        over_quota: dict[str, dict[str, int]] = {"device_id": {}, "user_id": {}}
        indexes: set[int] = set()
        for (kind, value), idx in per_id.items():
            key = f"{kind}:{value}"
            if self.eps_threshold is not None:
                eps = (self._eps.total(key, now) + len(idx)) / self.throttle_window
                if eps > self.eps_threshold:
                    throttled[kind][value] = math.ceil(eps)
                    indexes.update(idx)
            if self.daily_quota is not None and endpoint == "batch":
                day = int(self._daily.total(key, now)) + len(idx)
                if day > self.daily_quota:
                    over_quota[kind][value] = day
                    indexes.update(idx)
        if indexes:
            body: dict[str, Any] = {"eps_threshold": self.eps_threshold, "throttled_devices": throttled["device_id"],
                                    "throttled_users": throttled["user_id"], "throttled_events": sorted(indexes)}
            if endpoint == "batch":
                body |= {"exceeded_daily_quota_devices": over_quota["device_id"],
                         "exceeded_daily_quota_users": over_quota["user_id"]}
            raise _Reject(429, DEFAULT_ERRORS[429], **body)
        for (kind, value), idx in per_id.items():
            self._eps.add(f"{kind}:{value}", len(idx), now)
            if endpoint == "batch":
                self._daily.add(f"{kind}:{value}", len(idx), now)

    # ---- /_test routes, for tests that run edgeproxy (and this server) as processes ----
    async def _inspect(self, request: web.Request) -> web.Response:
        return web.json_response({
            "events": self.events, "identifications": self.identifications, "usermaps": self.usermaps,
            "by_endpoint": {name: self.ingested(name) for name in ENDPOINTS}, "duplicates": self.duplicates,
            "requests": [{"method": r.method, "path": r.path, "status": r.status} for r in self.requests],
        }, dumps=lambda obj: orjson.dumps(obj).decode())

    async def _control(self, request: web.Request) -> web.Response:
        """POST /_test/fail_next|drop_next|delay|reset with the method's keyword arguments as JSON."""
        actions = {"fail_next": self.fail_next, "drop_next": self.drop_next, "delay": self.set_delay,
                   "fail_for": self.fail_for, "reset": self.reset}
        action = actions.get(request.match_info["action"])
        try:
            kwargs = orjson.loads(await request.read() or b"{}")
            if action is None or not isinstance(kwargs, dict):
                raise ValueError(f"use POST /_test/<{'|'.join(actions)}> with a JSON object of arguments")
            action(**kwargs)
        except (ValueError, TypeError) as exc:  # orjson.JSONDecodeError is a ValueError
            return web.json_response({"error": str(exc)}, status=400)
        return web.json_response({"ok": True})


def _parse_body(rules: EndpointRules, content_type: str, raw: bytes) -> dict[str, Any]:
    return _parse_json(content_type, raw) if rules.form_field is None else _parse_form(rules, content_type, raw)


def _parse_json(content_type: str, raw: bytes) -> dict[str, Any]:
    if not raw.strip():
        raise _Reject(400, "Missing request body")
    # "Content-Type: application/json is required" [doc]; the answer to others [unverified].
    if content_type != "application/json":
        raise _Reject(400, "Invalid JSON request body")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise _Reject(400, "Invalid JSON request body") from None
    if not isinstance(body, dict):
        raise _Reject(400, "Invalid JSON request body")
    return body


def _parse_form(rules: EndpointRules, content_type: str, raw: bytes) -> dict[str, Any]:
    """A urlencoded form with its JSON fields parsed. Other content types read as an empty form,
    so they fail on the missing api_key (multipart form-data is not supported by this fake)."""
    if content_type != "application/x-www-form-urlencoded":
        return {}
    try:
        form: dict[str, Any] = dict(parse_qsl(raw.decode(), keep_blank_values=True))
    except UnicodeDecodeError:
        raise _Reject(400, "Invalid request body: not UTF-8") from None
    for name in (rules.form_field, "options"):
        if form.get(name) not in (None, "", "undefined"):
            try:
                form[name] = orjson.loads(form[name])
            except orjson.JSONDecodeError:
                raise _Reject(400, "Invalid JSON request body", invalid_field=name) from None
    return form


@pytest.fixture
async def fake_amplitude() -> AsyncIterator[FakeAmplitude]:
    """A started FakeAmplitude (api key "test-key"), stopped after the test."""
    fake = FakeAmplitude()
    await fake.start()
    try:
        yield fake
    finally:
        await fake.stop()


async def _serve(args: argparse.Namespace) -> None:
    fake = FakeAmplitude(args.api_key or ["test-key"], args.min_id_length, args.eps_threshold,
                         args.throttle_window, args.daily_quota)
    print(await fake.start(args.port, args.host), flush=True)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    await stop.wait()
    await fake.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="A local fake of Amplitude's ingestion API, for tests.")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port (the URL is printed)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--api-key", action="append", help="an accepted api key (repeatable; default test-key)")
    parser.add_argument("--min-id-length", type=int, default=5)
    parser.add_argument("--eps-threshold", type=float, default=None)
    parser.add_argument("--throttle-window", type=float, default=30.0)
    parser.add_argument("--daily-quota", type=int, default=None)
    asyncio.run(_serve(parser.parse_args(argv)))


if __name__ == "__main__":
    main()
