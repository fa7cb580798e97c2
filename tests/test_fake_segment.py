"""The Segment stand-in answers as the reference says api.segment.io does: every shape tested over HTTP."""

from __future__ import annotations

import asyncio
import base64
import gzip
import sys
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from fake_segment import FakeSegment, format_iso

KEY = "wk-test"
INVALID_KEY_BODY = {"success": False, "message": "An invalid write key was provided", "code": "invalid_request"}
TOO_LARGE_BODY = {"success": False, "message": "Exceed payload limit", "code": "invalid_request"}
T0 = 1_700_000_000.0  # 2023-11-14T22:13:20Z
# The reference's limits, written out here so that a wrong constant in the stand-in fails a test.
MAX_BATCH_BYTES, MAX_MESSAGE_BYTES = 500 * 1024, 32 * 1024


def track(i: int = 0, **fields: Any) -> dict[str, Any]:
    return {"type": "track", "event": "Viewed", "userId": f"user-{i}", "messageId": f"m-{i}", **fields}


def basic(key: str, colon: bool = True) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{key}{':' if colon else ''}".encode()).decode()}


async def post(base: str, path: str, *, json: Any = None, data: bytes | None = None,
               headers: dict[str, str] | None = None, method: str = "POST",
               timeout: float | None = None) -> tuple[int, Any, Any]:
    """Send and return (status, body parsed as JSON when possible, response headers)."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as session:
        body = orjson.dumps(json) if json is not None else data
        async with session.request(method, base + path, data=body, headers=headers) as resp:
            text = await resp.read()
            try:
                return resp.status, orjson.loads(text), resp.headers
            except orjson.JSONDecodeError:
                return resp.status, text.decode(), resp.headers


async def send_batch(base: str, batch: list[Any], path: str = "/v1/batch", timeout: float | None = None,
                     **extra: Any) -> tuple[int, Any]:
    status, body, _ = await post(base, path, json={"writeKey": KEY, "batch": batch, **extra}, timeout=timeout)
    return status, body


class Clock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def make_fake():
    """Start FakeSegment servers with a given configuration; stops them all afterwards."""
    started: list[FakeSegment] = []

    async def make(**kwargs: Any) -> tuple[FakeSegment, str]:
        fake = FakeSegment(**kwargs)
        started.append(fake)
        return fake, await fake.start()

    yield make
    for fake in started:
        await fake.stop()


def sized(messages: list[dict[str, Any]], total: int, envelope: dict[str, Any] | None = None) -> bytes:
    """A batch body of exactly ``total`` bytes, padded in the last message (ASCII pads are 1:1)."""
    messages[-1]["properties"] = {"pad": ""}
    doc = {"writeKey": KEY, **(envelope or {}), "batch": messages}
    messages[-1]["properties"]["pad"] = "x" * (total - len(orjson.dumps(doc)))
    raw = orjson.dumps(doc)
    assert len(raw) == total
    return raw


# ---- success, paths, auth ----

async def test_single_track_is_stored_with_server_fields(make_fake) -> None:
    fake, base = await make_fake(clock=Clock())
    status, body, headers = await post(base, "/v1/track", json={"writeKey": KEY, **track(1)},
                                       headers={"Content-Type": "application/json"})
    assert (status, body, headers["Content-Type"]) == (200, {"success": True}, "application/json")
    [msg] = fake.messages()
    assert msg == {**track(1), "receivedAt": "2023-11-14T22:13:20.000Z", "timestamp": "2023-11-14T22:13:20.000Z"}
    assert fake.log[0].write_key == KEY and fake.log[0].path == "/v1/track" and fake.dropped == []
    req = fake.requests[0]
    assert (req.method, req.path, req.status, req.write_key) == ("POST", "/v1/track", 200, KEY)
    assert req.size == len(req.body) == len(orjson.dumps({"writeKey": KEY, **track(1)}))


@pytest.mark.parametrize("path, mtype", [
    ("/v1/t", "track"), ("/v1/p", "page"), ("/v1/i", "identify"), ("/v1/g", "group"), ("/v1/a", "alias"),
    ("/v1/s", "screen"), ("/v1/page", "page"), ("/v1/identify", "identify"), ("/v1/group", "group"),
    ("/v1/alias", "alias"), ("/v1/screen", "screen"), ("/v1/track", "track"),
])
async def test_single_paths_infer_a_missing_type(fake_segment: FakeSegment, path: str, mtype: str) -> None:
    msg = {"writeKey": KEY, "userId": "u1", "event": "E", "groupId": "g1", "previousId": "anon-1"}
    assert (await post(fake_segment.base_url, path, json=msg))[0] == 200
    assert [m["type"] for m in fake_segment.messages()] == [mtype]


async def test_body_type_wins_over_the_path(fake_segment: FakeSegment) -> None:
    assert (await post(fake_segment.base_url, "/v1/t", json={"writeKey": KEY, "type": "identify",
                                                             "userId": "u1"}))[0] == 200
    assert fake_segment.messages(type="identify")[0]["userId"] == "u1" and fake_segment.messages(type="track") == []


@pytest.mark.parametrize("path", ["/v1/batch", "/v1/import", "/v1/b"])
async def test_batch_envelope_is_merged_under_each_message(fake_segment: FakeSegment, path: str) -> None:
    envelope = {"context": {"ip": "1.2.3.4", "library": {"name": "outer"}}, "integrations": {"All": False}}
    own = track(1, context={"library": {"name": "inner"}}, integrations={"Amplitude": True})
    assert await send_batch(fake_segment.base_url, [track(0), own], path=path, **envelope) == (200, {"success": True})
    first, second = fake_segment.messages()
    assert first["context"] == envelope["context"] and first["integrations"] == {"All": False}
    assert second["context"] == {"ip": "1.2.3.4", "library": {"name": "inner"}}
    assert second["integrations"] == {"All": False, "Amplitude": True}
    assert "writeKey" not in first and fake_segment.log[0].path == path


@pytest.mark.parametrize("headers, body_key, expect", [
    (basic("wk-basic"), None, "wk-basic"),
    (basic("wk-nocolon", colon=False), None, "wk-nocolon"),
    ({"Authorization": "Bearer some-oauth-token"}, "wk-body", "wk-body"),
    (basic("wk-header"), "wk-body", "wk-body"),
    ({}, "wk-body", "wk-body"),
])
async def test_write_key_sources(fake_segment: FakeSegment, headers: dict[str, str], body_key: str | None,
                                 expect: str) -> None:
    body = {"batch": [track(0)]} | ({"writeKey": body_key} if body_key else {})
    assert (await post(fake_segment.base_url, "/v1/batch", json=body, headers=headers))[0] == 200
    assert fake_segment.log[0].write_key == expect == fake_segment.requests[0].write_key
    assert fake_segment.requests[0].headers.get("Authorization") == headers.get("Authorization")


@pytest.mark.parametrize("headers, body", [
    ({}, {"batch": [track(0)]}),
    ({}, {"writeKey": "", "batch": [track(0)]}),
    (basic(""), {"batch": [track(0)]}),
    ({"Authorization": "Basic !!!not-base64"}, {"batch": [track(0)]}),
    ({"Authorization": "Bearer token-only"}, {"batch": [track(0)]}),
])
async def test_missing_or_empty_write_key_is_400(fake_segment: FakeSegment, headers: dict[str, str],
                                                 body: dict[str, Any]) -> None:
    assert (await post(fake_segment.base_url, "/v1/batch", json=body, headers=headers))[:2] == (400, INVALID_KEY_BODY)
    assert fake_segment.messages() == [] and fake_segment.requests[0].status == 400


async def test_unknown_write_key_is_200_but_dropped(make_fake) -> None:
    fake, base = await make_fake(write_keys={"known"})
    status, body, _ = await post(base, "/v1/batch", json={"batch": [track(0), track(1)]}, headers=basic("other"))
    assert (status, body) == (200, {"success": True})
    assert fake.messages() == [] and fake.dropped_reasons() == ["unknown_write_key"] * 2
    assert fake.dropped[0].write_key == "other" and fake.dropped[0].message == track(0)
    assert (await post(base, "/v1/t", json={"writeKey": "known", **track(2)}))[0] == 200
    assert fake.messages(write_key="known") == [fake.messages()[0]] and len(fake.messages()) == 1


# ---- body parsing ----

@pytest.mark.parametrize("ctype", ["text/plain", "application/json; charset=utf-8", None])
async def test_json_is_parsed_whatever_the_content_type(fake_segment: FakeSegment, ctype: str | None) -> None:
    headers = {"Content-Type": ctype} if ctype else {}
    raw = orjson.dumps({"writeKey": KEY, **track(0)})
    assert (await post(fake_segment.base_url, "/v1/t", data=raw, headers=headers))[0] == 200
    assert len(fake_segment.messages()) == 1


@pytest.mark.parametrize("encoding, compress", [("gzip", gzip.compress), ("deflate", zlib.compress)])
async def test_compressed_bodies_are_inflated_and_both_sizes_recorded(
        fake_segment: FakeSegment, encoding: str, compress: Callable[[bytes], bytes]) -> None:
    raw = orjson.dumps({"writeKey": KEY, "batch": [track(i) for i in range(50)]})
    packed = compress(raw)
    status, _, _ = await post(fake_segment.base_url, "/v1/import", data=packed, headers={"Content-Encoding": encoding})
    assert status == 200 and len(fake_segment.messages()) == 50
    req = fake_segment.requests[0]
    assert (req.size, req.body, req.headers["Content-Encoding"]) == (len(packed), raw, encoding)


async def test_unsupported_encoding_is_named(fake_segment: FakeSegment) -> None:
    status, body, _ = await post(fake_segment.base_url, "/v1/batch", data=b"{}", headers={"Content-Encoding": "br"})
    assert status == 400 and "unsupported Content-Encoding 'br'" in body["message"]


@pytest.mark.parametrize("raw, headers", [
    (b"", {}),
    (b'{"writeKey": "wk-test", "batch": [', {}),
    (b'[{"type": "track"}]', {}),
    (b'"just a string"', {}),
    (b'{"writeKey": "wk-test", "batch": {"type": "track"}}', {}),
    (b"\xff\xfe not utf-8", {}),
    (b"not gzip at all", {"Content-Encoding": "gzip"}),
    (gzip.compress(orjson.dumps({"writeKey": KEY, "batch": []}))[:-8], {"Content-Encoding": "gzip"}),
    (b"{}", {"Content-Encoding": "br"}),
])
async def test_invalid_json_is_400(fake_segment: FakeSegment, raw: bytes, headers: dict[str, str]) -> None:
    status, body, _ = await post(fake_segment.base_url, "/v1/batch", data=raw, headers=headers)
    assert status == 400 and body["success"] is False and body["code"] == "invalid_request"
    assert body["message"].startswith("Invalid JSON")


@pytest.mark.parametrize("path", ["/v1/track", "/v1/t", "/v1/batch", "/v1/import"])
async def test_get_is_a_malformed_json_400(fake_segment: FakeSegment, path: str) -> None:
    status, body, _ = await post(fake_segment.base_url, path, method="GET")
    assert status == 400 and "malformed JSON" in body["message"] and body["success"] is False
    valid = {"writeKey": KEY, **track(0), "batch": [track(0)]}
    assert (await post(fake_segment.base_url, path, method="GET", json=valid))[0] == 400  # even with a body
    assert fake_segment.messages() == []


async def test_unknown_path_is_404(fake_segment: FakeSegment) -> None:
    assert (await post(fake_segment.base_url, "/v1/x", json={"writeKey": KEY, **track(0)}))[0] == 404
    assert (await post(fake_segment.base_url, "/v2/batch", json={"writeKey": KEY, "batch": [track(0)]}))[0] == 404
    assert fake_segment.messages() == []


# ---- limits ----

async def test_batch_body_limit_is_500_kb_after_decompression(fake_segment: FakeSegment) -> None:
    def messages() -> list[dict[str, Any]]:
        return [track(i, properties={"pad": "x" * 30_000}) for i in range(17)]
    assert (await post(fake_segment.base_url, "/v1/batch", data=sized(messages(), MAX_BATCH_BYTES)))[0] == 200
    too_big = sized(messages(), MAX_BATCH_BYTES + 1)
    assert (await post(fake_segment.base_url, "/v1/batch", data=too_big))[:2] == (400, TOO_LARGE_BODY)
    status, body, _ = await post(fake_segment.base_url, "/v1/batch", data=gzip.compress(too_big),
                                 headers={"Content-Encoding": "gzip"})
    assert (status, body) == (400, TOO_LARGE_BODY) and len(gzip.compress(too_big)) < 10_000
    assert len(fake_segment.messages()) == 17


async def test_single_message_request_limit_is_32_kb(fake_segment: FakeSegment) -> None:
    def body(size: int) -> bytes:
        doc = {"writeKey": KEY, **track(0), "properties": {"pad": ""}}
        doc["properties"]["pad"] = "x" * (size - len(orjson.dumps(doc)))
        return orjson.dumps(doc)
    assert (await post(fake_segment.base_url, "/v1/t", data=body(MAX_MESSAGE_BYTES)))[0] == 200
    assert (await post(fake_segment.base_url, "/v1/t", data=body(MAX_MESSAGE_BYTES + 1)))[:2] == (400, TOO_LARGE_BODY)
    assert len(fake_segment.messages()) == 1


@pytest.mark.parametrize("extra, status", [(0, 200), (1, 400)])
async def test_one_oversized_message_refuses_the_whole_batch(fake_segment: FakeSegment, extra: int,
                                                             status: int) -> None:
    big = track(1, properties={"pad": ""})
    big["properties"]["pad"] = "x" * (MAX_MESSAGE_BYTES + extra - len(orjson.dumps(big)))
    assert (await send_batch(fake_segment.base_url, [track(0), big]))[0] == status
    assert len(fake_segment.messages()) == (2 if status == 200 else 0)


async def test_more_than_2500_messages_is_200_but_rejected(fake_segment: FakeSegment) -> None:
    assert await send_batch(fake_segment.base_url, [track(i) for i in range(2501)]) == (200, {"success": True})
    assert fake_segment.messages() == [] and set(fake_segment.dropped_reasons()) == {"too_many"}
    assert len(fake_segment.dropped) == 2501
    assert (await send_batch(fake_segment.base_url, [track(i) for i in range(2500)]))[0] == 200
    assert len(fake_segment.messages()) == 2500


# ---- messages the live edge accepts and drops ----

async def test_invalid_messages_are_200_and_dropped_with_a_reason(fake_segment: FakeSegment) -> None:
    bad = [
        ("not_an_object", "a string"), ("invalid_type", {"userId": "u"}), ("invalid_type", track(1, type="click")),
        ("no_user_or_anonymous_id", {"type": "page", "userId": ""}), ("no_event", track(2, event="")),
        ("no_event", {"type": "track", "anonymousId": "a1"}), ("no_group_id", {"type": "group", "userId": "u"}),
        ("no_user_id", {"type": "alias", "anonymousId": "a", "previousId": "p"}),
        ("no_previous_id", {"type": "alias", "userId": "u"}), ("invalid_timestamp", track(3, timestamp="yesterday")),
        ("invalid_sent_at", track(4, timestamp="2024-01-01T00:00:00Z", sentAt=12)),
    ]
    good = [track(0), {"type": "identify", "anonymousId": "anon", "traits": {}}, {"type": "page", "userId": 42}]
    assert await send_batch(fake_segment.base_url, [m for _, m in bad] + good) == (200, {"success": True})
    assert [(d.reason, d.message) for d in fake_segment.dropped] == bad
    assert [m["type"] for m in fake_segment.messages()] == ["track", "identify", "page"]


# ---- timestamps and messageId ----

async def test_clock_skew_correction(make_fake) -> None:
    fake, base = await make_fake(clock=Clock())
    received = "2023-11-14T22:13:20.000Z"
    batch = [
        track(0, timestamp="2023-11-14T22:00:00.000Z"),  # batch sentAt 22:00:05: 5 s in flight on the client clock
        track(1, timestamp="2023-11-14T22:00:00.000Z", sentAt="2023-11-14T22:00:02.500Z"),  # its own sentAt wins
        track(2), track(3, timestamp="2023-11-14T23:59:59.000+02:00"),  # 21:59:59Z: 6 s before sentAt
        track(6, timestamp="2023-11-14T22:00:03"),  # no zone: read as UTC
    ]
    assert (await send_batch(base, batch, sentAt="2023-11-14T22:00:05.000Z"))[0] == 200
    assert (await post(base, "/v1/t", json={"writeKey": KEY, **track(4, timestamp="2020-01-01T00:00:00Z")}))[0] == 200
    assert (await post(base, "/v1/t", json={"writeKey": KEY, **track(5)}))[0] == 200
    m = {msg["messageId"]: msg for msg in fake.messages()}
    assert all(msg["receivedAt"] == received for msg in m.values())
    assert (m["m-0"]["timestamp"], m["m-0"]["originalTimestamp"]) == ("2023-11-14T22:13:15.000Z",
                                                                       "2023-11-14T22:00:00.000Z")
    assert (m["m-1"]["timestamp"], m["m-1"]["sentAt"]) == ("2023-11-14T22:13:17.500Z", "2023-11-14T22:00:02.500Z")
    assert m["m-0"]["sentAt"] == "2023-11-14T22:00:05.000Z"
    assert m["m-2"]["timestamp"] == received and "originalTimestamp" not in m["m-2"]  # sentAt alone: receivedAt
    assert m["m-3"]["timestamp"] == "2023-11-14T22:13:14.000Z"  # offsets are read, the result is UTC
    assert m["m-6"]["timestamp"] == "2023-11-14T22:13:18.000Z"
    assert m["m-4"]["timestamp"] == m["m-4"]["originalTimestamp"] == "2020-01-01T00:00:00Z"  # kept: an import
    assert m["m-5"]["timestamp"] == received and "originalTimestamp" not in m["m-5"]


def test_format_iso_is_utc_milliseconds() -> None:
    from datetime import datetime, timedelta, timezone
    moment = datetime(2024, 5, 6, 7, 8, 9, 123_999, tzinfo=timezone(timedelta(hours=2)))
    assert format_iso(moment) == "2024-05-06T05:08:09.123Z"


async def test_message_ids_dedupe_view_and_assignment(fake_segment: FakeSegment) -> None:
    base = fake_segment.base_url
    assert (await send_batch(base, [track(0), track(1)]))[0] == 200
    assert (await send_batch(base, [track(1), track(2), {"type": "page", "userId": "u"}]))[0] == 200  # a retry
    assert (await post(base, "/v1/t", json={"writeKey": "wk-other", **track(0)}))[0] == 200  # global, not per key
    ids = [m["messageId"] for m in fake_segment.messages()]
    assigned = ids[4]
    assert ids == ["m-0", "m-1", "m-1", "m-2", assigned, "m-0"] and len(assigned) == 36  # assigned: a uuid
    assert sorted(fake_segment.duplicates()) == ["m-0", "m-1"]
    assert [m["messageId"] for m in fake_segment.unique_messages()] == ["m-0", "m-1", "m-2", assigned]
    assert [m["messageId"] for m in fake_segment.unique_messages(write_key="wk-other")] == ["m-0"]


# ---- fault injection ----

@pytest.mark.parametrize("status, body, headers, expect", [
    (500, None, None, {"success": False, "message": "Internal Server Error"}),
    (503, "", None, ""),
    (502, "<html>502 Bad Gateway</html>", {"Content-Type": "text/html"}, "<html>502 Bad Gateway</html>"),
    (429, {"success": False}, {"Retry-After": "7"}, {"success": False}),
])
async def test_fail_next(fake_segment: FakeSegment, status: int, body: Any, headers: dict[str, str] | None,
                         expect: Any) -> None:
    fake_segment.fail_next(status, body, headers)
    got_status, got_body, got_headers = await post(fake_segment.base_url, "/v1/batch",
                                                   json={"writeKey": KEY, "batch": [track(0)]})
    assert (got_status, got_body) == (status, expect)
    for name, value in (headers or {}).items():
        assert got_headers[name] == value
    assert fake_segment.messages() == [] and fake_segment.requests[0].status == status
    assert orjson.loads(fake_segment.requests[0].body)["batch"] == [track(0)]  # recorded all the same
    assert (await send_batch(fake_segment.base_url, [track(0)]))[0] == 200  # only the next one fails


async def test_fail_next_times_order_and_ingest(fake_segment: FakeSegment) -> None:
    fake_segment.fail_next(503, times=2, ingest=True)
    fake_segment.fail_next(429, headers={"Retry-After": "1"})
    statuses = [(await send_batch(fake_segment.base_url, [track(i)]))[0] for i in range(4)]
    assert statuses == [503, 503, 429, 200]
    assert [m["messageId"] for m in fake_segment.messages()] == ["m-0", "m-1", "m-3"]  # 503s ingested, 429 not
    with pytest.raises(ValueError, match="HTTP status"):
        fake_segment.fail_next(1000)
    with pytest.raises(ValueError, match="times"):
        fake_segment.fail_next(500, times=0)


@pytest.mark.parametrize("ingest", [False, True])
async def test_drop_next_resets_the_connection(fake_segment: FakeSegment, ingest: bool) -> None:
    fake_segment.drop_next(ingest=ingest)
    with pytest.raises(aiohttp.ServerDisconnectedError):
        await send_batch(fake_segment.base_url, [track(0)])
    assert fake_segment.requests[0].status is None
    assert [m["messageId"] for m in fake_segment.messages()] == (["m-0"] if ingest else [])
    assert (await send_batch(fake_segment.base_url, [track(1)]))[0] == 200


async def test_fail_for_is_an_outage_then_recovery(make_fake) -> None:
    clock = Clock()
    fake, base = await make_fake(clock=clock)
    fake.fail_for(5.0)
    assert [(await send_batch(base, [track(i)]))[0] for i in range(2)] == [503, 503]
    clock.now += 5.0
    assert (await send_batch(base, [track(2)]))[0] == 200
    assert [m["messageId"] for m in fake.messages()] == ["m-2"]
    with pytest.raises(ValueError):
        fake.fail_for(-1)


async def test_delay_makes_senders_time_out(make_fake) -> None:
    fake, base = await make_fake()
    fake.set_delay(30)
    with pytest.raises(asyncio.TimeoutError):
        await post(base, "/v1/t", json={"writeKey": KEY, **track(0)}, timeout=0.2)
    fake.set_delay(0)
    assert (await post(base, "/v1/t", json={"writeKey": KEY, **track(1)}))[0] == 200
    await fake.stop()  # wakes the waiting handler: like a slow server it processes what the client gave up on
    assert [m["messageId"] for m in fake.messages()] == ["m-1", "m-0"]


async def test_hold_keeps_requests_in_flight_until_release(fake_segment: FakeSegment) -> None:
    fake_segment.hold()
    task = asyncio.create_task(send_batch(fake_segment.base_url, [track(0)]))
    for _ in range(500):
        if fake_segment.requests:
            break
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.1)
    assert fake_segment.requests and not task.done() and fake_segment.messages() == []
    fake_segment.release()
    assert (await asyncio.wait_for(task, 5))[0] == 200 and len(fake_segment.messages()) == 1


async def test_rate_limit_answers_429_with_retry_headers(make_fake) -> None:
    clock = Clock()
    fake, base = await make_fake(clock=clock)
    fake.rate_limit(2)
    assert [(await send_batch(base, [track(i)]))[0] for i in range(2)] == [200, 200]
    clock.now += 0.4
    status, body, headers = await post(base, "/v1/batch", json={"writeKey": KEY, "batch": [track(2)]})
    assert status == 429 and body["success"] is False
    assert headers["Retry-After"] == headers["X-RateLimit-Reset"] == "1"
    clock.now += 0.6  # the first two leave the 1 s window
    assert (await send_batch(base, [track(3)]))[0] == 200
    fake.rate_limit(None)
    assert [(await send_batch(base, [track(9)]))[0] for _ in range(3)] == [200] * 3
    assert [r.status for r in fake.requests][:4] == [200, 200, 429, 200]
    assert "m-2" not in {m["messageId"] for m in fake.messages()}
    with pytest.raises(ValueError):
        fake.rate_limit(0)


async def test_reset_forgets_everything_but_configuration(make_fake) -> None:
    clock = Clock()
    fake, base = await make_fake(write_keys={KEY}, rate_limit=2, clock=clock)
    await send_batch(base, [track(0), {"type": "page"}])
    fake.fail_next(500)
    fake.set_delay(5)
    fake.rate_limit(None)
    fake.hold()
    fake.reset()
    assert (fake.requests, fake.messages(), fake.dropped, fake.delay) == ([], [], [], 0.0)
    statuses = [(await send_batch(base, [track(i)], timeout=2))[0] for i in range(3)]
    assert statuses == [200, 200, 429]  # no fault, no hold, and the constructor's limit of 2/s is back
    assert fake.write_keys == {KEY} and fake.duplicates() == []


async def test_control_and_inspection_routes(fake_segment: FakeSegment) -> None:
    base = fake_segment.base_url
    assert (await post(base, "/_test/fail_next", json={"status": 503, "headers": {"Retry-After": "2"}}))[0] == 200
    status, _, headers = await post(base, "/v1/batch", json={"batch": [track(0)]},
                                    headers={**basic(KEY), "X-Retry-Count": "1"})
    assert status == 503 and headers["Retry-After"] == "2"
    assert (await post(base, "/v1/batch", json={"batch": [track(0), {"type": "track"}]}, headers=basic(KEY)))[0] == 200
    status, body, _ = await post(base, "/_test/explode", json={})
    assert status == 400 and "fail_next|drop_next" in body["error"]
    assert (await post(base, "/_test/fail_next", json={"status": 42}))[0] == 400
    assert (await post(base, "/_test/rate_limit", json={"requests_per_s": 0}))[0] == 400
    status, seen, _ = await post(base, "/_test/messages", method="GET")
    assert status == 200 and seen["messages"][0]["message"]["messageId"] == "m-0"
    assert seen["messages"][0]["write_key"] == KEY and seen["dropped"][0]["reason"] == "no_user_or_anonymous_id"
    assert [r["status"] for r in seen["requests"]] == [503, 200]
    assert seen["requests"][0]["headers"]["X-Retry-Count"] == "1" and seen["duplicates"] == []
    for action in ("hold", "release", "reset"):
        assert (await post(base, f"/_test/{action}"))[0] == 200
    assert fake_segment.messages() == [] and fake_segment.requests == []


async def test_standalone_process_prints_url_and_serves() -> None:
    script = Path(__file__).with_name("fake_segment.py")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(script), "--port", "0", "--write-key", "proc-key", stdout=asyncio.subprocess.PIPE)
    try:
        line = await asyncio.wait_for(proc.stdout.readline(), timeout=30)
        base = line.decode().strip()
        assert base.startswith("http://127.0.0.1:")
        assert (await post(base, "/v1/t", json={"writeKey": "proc-key", **track(0)}))[0] == 200
        assert (await post(base, "/v1/t", json={"writeKey": "stranger", **track(1)}))[0] == 200
        _, seen, _ = await post(base, "/_test/messages", method="GET")
        assert [m["message"]["messageId"] for m in seen["messages"]] == ["m-0"]
        assert seen["dropped"][0]["reason"] == "unknown_write_key"
    finally:
        proc.terminate()
        assert await asyncio.wait_for(proc.wait(), timeout=30) == 0
