"""The Amplitude stand-in answers as the reference says Amplitude does: every shape tested over HTTP."""

from __future__ import annotations

import asyncio
import gzip
import sys
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from fake_amplitude import FakeAmplitude, WindowCounter

KEY = "test-key"


def event(i: int = 0, **fields: Any) -> dict[str, Any]:
    return {"event_type": "Viewed", "device_id": f"device-{i}", "insert_id": f"ins-{i}", "time": 1_700_000_000_000,
            **fields}


async def post(base: str, path: str, *, json: Any = None, data: Any = None, headers: Any = None,
               timeout: float | None = None) -> tuple[int, str, Any]:
    """POST and return (status, content type, body parsed as JSON when possible)."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as session:
        kwargs: dict[str, Any] = {"headers": headers}
        if json is not None:
            kwargs["data"] = orjson.dumps(json)
            kwargs["headers"] = {"Content-Type": "application/json", **(headers or {})}
        else:
            kwargs["data"] = data
        async with session.post(base + path, **kwargs) as resp:
            text = await resp.read()
            try:
                return resp.status, resp.content_type, orjson.loads(text)
            except orjson.JSONDecodeError:
                return resp.status, resp.content_type, text.decode()


async def send(base: str, events: list[dict[str, Any]], path: str = "/2/httpapi", **extra: Any) -> tuple[int, Any]:
    status, _, body = await post(base, path, json={"api_key": KEY, "events": events, **extra})
    return status, body


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def make_fake():
    """Start FakeAmplitude servers with a given configuration; stops them all afterwards."""
    started: list[FakeAmplitude] = []

    async def make(**kwargs: Any) -> tuple[FakeAmplitude, str]:
        fake = FakeAmplitude(**kwargs)
        started.append(fake)
        return fake, await fake.start()

    yield make
    for fake in started:
        await fake.stop()


# ---- success ----

async def test_httpapi_200_body_and_records(fake_amplitude: FakeAmplitude) -> None:
    payload = {"api_key": KEY, "events": [event(0), event(1)]}
    status, ctype, body = await post(fake_amplitude.base_url, "/2/httpapi", json=payload)
    assert (status, ctype) == (200, "application/json")
    assert body["code"] == 200 and body["events_ingested"] == 2
    assert body["payload_size_bytes"] == len(orjson.dumps(payload))
    assert isinstance(body["server_upload_time"], int) and body["server_upload_time"] > 1_600_000_000_000
    assert fake_amplitude.events == payload["events"] == fake_amplitude.ingested("httpapi")
    assert fake_amplitude.ingested("batch") == []
    req = fake_amplitude.requests[0]
    assert (req.path, req.endpoint, req.status, req.body) == ("/2/httpapi", "httpapi", 200, payload)
    assert req.headers["content-type"] == "application/json" and req.raw == orjson.dumps(payload)


async def test_batch_endpoint_and_api_key_filter(make_fake) -> None:
    fake, base = await make_fake(api_keys={"k1", "k2"})
    for key in ("k1", "k2"):
        status, _, _ = await post(base, "/batch", json={"api_key": key, "events": [event(0, insert_id=key)]})
        assert status == 200
    assert [e["insert_id"] for e in fake.ingested("batch")] == ["k1", "k2"]
    assert fake.ingested("batch", api_key="k2") == [event(0, insert_id="k2")]


async def test_gzip_body_is_decoded(fake_amplitude: FakeAmplitude) -> None:
    raw = orjson.dumps({"api_key": KEY, "events": [event(0)]})
    status, _, body = await post(fake_amplitude.base_url, "/2/httpapi", data=gzip.compress(raw),
                                 headers={"Content-Type": "application/json", "Content-Encoding": "gzip"})
    assert status == 200 and body["events_ingested"] == 1 and fake_amplitude.events == [event(0)]


# ---- request-level 400s ----

@pytest.mark.parametrize("method, path", [("POST", "/2/httpapi/x"), ("POST", "/v1/batch"), ("GET", "/2/httpapi")])
async def test_unknown_path_or_method(fake_amplitude: FakeAmplitude, method: str, path: str) -> None:
    async with aiohttp.ClientSession() as session, session.request(method, fake_amplitude.base_url + path) as resp:
        assert resp.status == 400
        assert await resp.json() == {"code": 400, "error": "Invalid request path"}


@pytest.mark.parametrize("raw, ctype, error", [
    (b"", "application/json", "Missing request body"),
    (b'{"api_key": "test-key", "events": [', "application/json", "Invalid JSON request body"),
    (b'[{"event_type": "x"}]', "application/json", "Invalid JSON request body"),
    (orjson.dumps({"api_key": KEY, "events": [event(0)]}), "text/plain", "Invalid JSON request body"),
])
async def test_body_errors(fake_amplitude: FakeAmplitude, raw: bytes, ctype: str, error: str) -> None:
    status, _, body = await post(fake_amplitude.base_url, "/2/httpapi", data=raw, headers={"Content-Type": ctype})
    assert (status, body) == (400, {"code": 400, "error": error})
    assert fake_amplitude.events == []


@pytest.mark.parametrize("payload, missing", [
    ({"events": [event(0)]}, "api_key"),
    ({"api_key": "", "events": [event(0)]}, "api_key"),
    ({"api_key": KEY}, "events"),
    ({"api_key": KEY, "events": []}, "events"),
])
async def test_missing_request_field(fake_amplitude: FakeAmplitude, payload: dict, missing: str) -> None:
    status, _, body = await post(fake_amplitude.base_url, "/batch", json=payload)
    assert (status, body) == (400, {"code": 400, "error": "Request missing required field", "missing_field": missing})


async def test_invalid_api_key_and_keys_can_change(fake_amplitude: FakeAmplitude) -> None:
    status, _, body = await post(fake_amplitude.base_url, "/2/httpapi", json={"api_key": "eu-key", "events": [event()]})
    assert (status, body) == (400, {"code": 400, "error": "Invalid API key: eu-key"})
    fake_amplitude.api_keys.add("eu-key")
    status, _, _ = await post(fake_amplitude.base_url, "/2/httpapi", json={"api_key": "eu-key", "events": [event()]})
    assert status == 200


@pytest.mark.parametrize("events", [{"event_type": "x"}, [event(0), "not an object"], "events"])
async def test_invalid_event_json(fake_amplitude: FakeAmplitude, events: Any) -> None:
    status, body = await send(fake_amplitude.base_url, events)
    assert (status, body) == (400, {"code": 400, "error": "Invalid event JSON"})


# ---- event-level 400s: the whole request is rejected ----

async def test_missing_event_fields_name_each_index(fake_amplitude: FakeAmplitude) -> None:
    no_type = event(1)
    del no_type["event_type"]
    no_ids = {"event_type": "x", "user_id": None}
    status, body = await send(fake_amplitude.base_url, [event(0), no_type, no_ids, no_type])
    assert status == 400
    assert body == {"code": 400, "error": "Request missing required field",
                    "events_with_missing_fields": {"event_type": [1, 3], "user_id": [2], "device_id": [2]}}
    assert fake_amplitude.events == []  # event 0 was valid, but the request was rejected


@pytest.mark.parametrize("field, value", [
    ("time", "2024-01-01T00:00:00Z"), ("time", 1.7e12), ("session_id", "1700000000000"), ("session_id", True),
    ("event_type", 42), ("user_id", 12345), ("price", "9.99"), ("location_lat", "52.1"),
    ("event_properties", [1, 2]), ("app_version", "x" * 1025), ("event_properties", {"k": "x" * 1025}),
    ("user_properties", {"$set": {"list": ["y" * 1025]}}),
])
async def test_invalid_field_values(fake_amplitude: FakeAmplitude, field: str, value: Any) -> None:
    status, body = await send(fake_amplitude.base_url, [event(0), event(1, **{field: value})])
    assert (status, body) == (400, {"code": 400, "error": "Invalid field values on some events",
                                    "events_with_invalid_fields": {field: [1]}})
    assert fake_amplitude.events == []


def nested(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {}
    for _ in range(depth - 1):
        value = {"k": value}
    return value


async def test_limits_at_the_boundary_pass(fake_amplitude: FakeAmplitude) -> None:
    edge = event(0, app_version="x" * 1024, event_properties=nested(40), session_id=-1, price=9, revenue=1.5)
    assert (await send(fake_amplitude.base_url, [edge]))[0] == 200
    status, body = await send(fake_amplitude.base_url, [event(1, event_properties=nested(41))])
    assert status == 400 and body["events_with_invalid_fields"] == {"event_properties": [0]}


async def test_short_id_fails_even_with_a_valid_other_id(fake_amplitude: FakeAmplitude) -> None:
    status, body = await send(fake_amplitude.base_url, [event(0, user_id="user-long-enough", device_id="abcd")])
    assert (status, body) == (400, {"code": 400, "events_with_invalid_id_lengths": {"device_id": [0]},
                                    "error": "Invalid id length for user_id or device_id"})


@pytest.mark.parametrize("bad_id", ["undefined", "NULL", "Anonymous", "00000000-0000-0000-0000-000000000000",
                                    "-1", "lmy47d"])
async def test_always_invalid_ids(fake_amplitude: FakeAmplitude, bad_id: str) -> None:
    status, body = await send(fake_amplitude.base_url, [event(0), event(1, user_id=bad_id)],
                              options={"min_id_length": 1})
    assert status == 400 and body["events_with_invalid_id_lengths"] == {"user_id": [1]}


async def test_min_id_length_option_and_configuration(make_fake) -> None:
    fake, base = await make_fake(min_id_length=2)
    assert (await send(base, [event(0, device_id="ab")]))[0] == 200
    status, body = await send(base, [event(1, device_id="abc")], options={"min_id_length": 4})
    assert status == 400 and body["events_with_invalid_id_lengths"] == {"device_id": [0]}
    status, body = await send(base, [event(2)], options={"min_id_length": "5"})
    assert status == 400 and "min_id_length must be a positive integer" in body["error"]
    assert [e["device_id"] for e in fake.events] == ["ab"]


# ---- 413 ----

TOO_LARGE = {"code": 413, "error": "Payload too large"}


async def test_httpapi_event_count_limit(fake_amplitude: FakeAmplitude) -> None:
    assert (await send(fake_amplitude.base_url, [event(i) for i in range(1999)]))[0] == 200
    assert await send(fake_amplitude.base_url, [event(i) for i in range(2000)]) == (413, TOO_LARGE)
    assert len(fake_amplitude.events) == 1999


async def test_size_limits_differ_per_endpoint(fake_amplitude: FakeAmplitude) -> None:
    big = [event(i, event_properties={"pad": "x" * 1000}) for i in range(1000)]  # about 1.1 MB
    assert await send(fake_amplitude.base_url, big) == (413, TOO_LARGE)
    assert (await send(fake_amplitude.base_url, big, path="/batch"))[0] == 200
    assert await send(fake_amplitude.base_url, [event(i) for i in range(2001)], path="/batch") == (413, TOO_LARGE)
    assert (await send(fake_amplitude.base_url, [event(i, insert_id=f"b{i}") for i in range(2000)],
                       path="/batch"))[0] == 200
    huge = [event(i, event_properties={f"p{j}": "x" * 1000 for j in range(11)}) for i in range(1900)]  # > 20 MB
    assert await send(fake_amplitude.base_url, huge, path="/batch") == (413, TOO_LARGE)
    assert len(fake_amplitude.ingested("batch")) == 3000 and fake_amplitude.ingested("httpapi") == []


# ---- dedupe ----

async def test_insert_id_dedupe_per_device(fake_amplitude: FakeAmplitude) -> None:
    base = fake_amplitude.base_url
    assert (await send(base, [event(0)]))[1]["events_ingested"] == 1
    status, body = await send(base, [event(0), event(1)])  # a retry that overlaps
    assert status == 200 and body["events_ingested"] == 2  # the answer does not reveal duplicates
    same_id_other_device = event(2, insert_id="ins-0")
    no_device = {"event_type": "x", "user_id": "user-1", "insert_id": "ins-9"}
    assert (await send(base, [same_id_other_device, no_device, no_device], path="/batch"))[0] == 200
    assert fake_amplitude.events == [event(0), event(1), same_id_other_device, no_device]
    assert fake_amplitude.duplicates == 2


# ---- throttling ----

async def test_eps_throttling_rejects_request_and_recovers(make_fake) -> None:
    clock = Clock()
    fake, base = await make_fake(eps_threshold=2, throttle_window=1.0, clock=clock)
    noisy = [event(0, insert_id=f"n{i}", user_id="user-a") for i in range(3)]
    status, body = await send(base, [event(7)] + noisy)
    assert status == 429
    assert body == {"code": 429, "error": "Too many requests for some devices and users", "eps_threshold": 2,
                    "throttled_devices": {"device-0": 3}, "throttled_users": {"user-a": 3},
                    "throttled_events": [1, 2, 3]}
    assert fake.events == []
    assert (await send(base, [event(0, insert_id="a"), event(0, insert_id="b")]))[0] == 200
    status, body = await send(base, [event(1), event(0, insert_id="c")])
    assert status == 429 and body["throttled_devices"] == {"device-0": 3} and body["throttled_events"] == [1]
    clock.now += 1.5  # the window has passed
    assert (await send(base, [event(1), event(0, insert_id="c")]))[0] == 200
    assert [e["insert_id"] for e in fake.events] == ["a", "b", "ins-1", "c"]


async def test_batch_429_has_daily_quota_fields(make_fake) -> None:
    clock = Clock()
    fake, base = await make_fake(daily_quota=3, clock=clock)
    assert (await send(base, [event(0, insert_id=f"d{i}") for i in range(3)], path="/batch"))[0] == 200
    status, body = await send(base, [event(0, insert_id="d4"), event(5)], path="/batch")
    assert status == 429
    assert body["exceeded_daily_quota_devices"] == {"device-0": 4} and body["exceeded_daily_quota_users"] == {}
    assert body["throttled_events"] == [0] and body["throttled_devices"] == {}
    assert (await send(base, [event(0, insert_id="d4")]))[0] == 200  # the quota is /batch's only
    clock.now += 86_400 + 3600
    assert (await send(base, [event(0, insert_id="d5")], path="/batch"))[0] == 200


def test_window_counter_memory_is_bounded() -> None:
    counter = WindowCounter(window=10.0, buckets=5, max_ids=3)
    for i in range(10):
        counter.add(f"id{i}", 1, now=float(i))
    assert len(counter._ids) == 3 and counter.total("id0", 9.0) == 0 and counter.total("id9", 9.0) == 1
    for t in range(100):
        counter.add("id9", 1, now=9.0 + t / 10)
    assert len(counter._ids["id9"]) <= 6 and counter.total("id9", 18.9) == 101  # whole buckets count
    assert counter.total("id9", 30.0) == 0


# ---- form endpoints ----

FORM = "application/x-www-form-urlencoded;charset=UTF-8"


async def post_form(base: str, path: str, **form: str) -> tuple[int, str, Any]:
    from urllib.parse import urlencode
    return await post(base, path, data=urlencode(form), headers={"Content-Type": FORM})


async def test_identify_single_object_array_and_undefined_options(fake_amplitude: FakeAmplitude) -> None:
    base = fake_amplitude.base_url
    one = {"user_id": "user-1", "user_properties": {"plan": "pro"}, "library": "segment"}
    assert await post_form(base, "/identify", api_key=KEY, identification=orjson.dumps(one).decode(),
                           options="undefined") == (200, "text/plain", "success")
    two = [{"device_id": "device-2", "insert_id": "i2"}, {"device_id": "device-2", "insert_id": "i2"}]
    assert (await post_form(base, "/identify", api_key=KEY, identification=orjson.dumps(two).decode()))[0] == 200
    assert fake_amplitude.identifications == [one, two[0]]
    assert fake_amplitude.requests[0].body["identification"] == one


async def test_form_endpoint_errors(fake_amplitude: FakeAmplitude) -> None:
    base = fake_amplitude.base_url
    assert (await post_form(base, "/identify", api_key=KEY))[2]["missing_field"] == "identification"
    status, _, body = await post(base, "/identify", json={"api_key": KEY, "identification": [{"user_id": "user-1"}]})
    assert (status, body["missing_field"]) == (400, "api_key")  # a JSON body is not a form
    status, _, body = await post_form(base, "/identify", api_key=KEY, identification="{not json")
    assert (status, body["error"]) == (400, "Invalid JSON request body")
    status, _, body = await post_form(base, "/identify", api_key=KEY, identification='[{"user_properties": {}}]')
    assert body["events_with_missing_fields"] == {"user_id": [0], "device_id": [0]}
    status, _, body = await post_form(base, "/identify", api_key=KEY, identification='{"user_id": "abc"}')
    assert body["events_with_invalid_id_lengths"] == {"user_id": [0]}
    status, _, body = await post_form(base, "/groupidentify", api_key=KEY,
                                      identification='[{"group_type": "org", "group_properties": {}}]')
    assert (status, body["events_with_missing_fields"]) == (400, {"group_value": [0]})
    status, _, body = await post_form(base, "/usermap", api_key=KEY, mapping='[{"global_user_id": "global-1"}]')
    assert (status, body["events_with_missing_fields"]) == (400, {"user_id": [0]})
    assert fake_amplitude.log == []


async def test_groupidentify_and_usermap_recorded(fake_amplitude: FakeAmplitude) -> None:
    base = fake_amplitude.base_url
    group = [{"group_type": "org", "group_value": "acme", "group_properties": {"size": 5}, "library": "segment"}]
    mapping = [{"user_id": "old-user", "global_user_id": "new-user"}, {"user_id": "gone-user", "unmap": True}]
    assert (await post_form(base, "/groupidentify", api_key=KEY, identification=orjson.dumps(group).decode()))[0] == 200
    assert (await post_form(base, "/usermap", api_key=KEY, mapping=orjson.dumps(mapping).decode(),
                            options='{"min_id_length": 3}'))[0] == 200
    assert fake_amplitude.ingested("groupidentify") == group and fake_amplitude.usermaps == mapping


# ---- fault injection ----

@pytest.mark.parametrize("status, body, ctype, expect", [
    (503, "", "text/plain", ""),
    (502, "<html><body>502 Bad Gateway</body></html>", "text/html", "<html><body>502 Bad Gateway</body></html>"),
    (500, None, "application/json", {"code": 500, "error": "Internal Server Error"}),
    (413, None, "application/json", TOO_LARGE),
    (403, None, "application/json", {"code": 403, "error": "Forbidden"}),
    (429, {"code": 429, "throttled_events": [0]}, "application/json", {"code": 429, "throttled_events": [0]}),
])
async def test_fail_next(fake_amplitude: FakeAmplitude, status: int, body: Any, ctype: str, expect: Any) -> None:
    fake_amplitude.fail_next(status, body, content_type=ctype)
    assert await post(fake_amplitude.base_url, "/2/httpapi", json={"api_key": KEY, "events": [event(0)]}) == (
        status, ctype, expect)
    assert fake_amplitude.events == [] and fake_amplitude.requests[0].status == status
    assert fake_amplitude.requests[0].body == {"api_key": KEY, "events": [event(0)]}  # recorded all the same
    assert (await send(fake_amplitude.base_url, [event(0)]))[0] == 200  # only the next one fails


async def test_fail_next_times_endpoint_and_ingest(fake_amplitude: FakeAmplitude) -> None:
    base = fake_amplitude.base_url
    fake_amplitude.fail_next(504, "", times=2, endpoint="batch", ingest=True)
    assert (await send(base, [event(0)]))[0] == 200  # other endpoints are not affected
    assert (await send(base, [event(1)], path="/batch"))[0] == 504
    assert (await send(base, [event(1)], path="/batch"))[0] == 504
    assert (await send(base, [event(1)], path="/batch"))[0] == 200
    assert fake_amplitude.events == [event(0), event(1)]  # accepted despite the 504; retries deduped
    with pytest.raises(ValueError, match="unknown endpoint"):
        fake_amplitude.fail_next(500, endpoint="track")
    with pytest.raises(ValueError, match="HTTP status"):
        fake_amplitude.fail_next(1000)


@pytest.mark.parametrize("ingest", [False, True])
async def test_drop_next_closes_the_connection(fake_amplitude: FakeAmplitude, ingest: bool) -> None:
    fake_amplitude.drop_next(ingest=ingest)
    with pytest.raises(aiohttp.ServerDisconnectedError):
        await send(fake_amplitude.base_url, [event(0)])
    assert fake_amplitude.requests[0].status is None
    assert fake_amplitude.events == ([event(0)] if ingest else [])
    assert (await send(fake_amplitude.base_url, [event(1)]))[0] == 200


async def test_delay_makes_clients_time_out(make_fake) -> None:
    fake, base = await make_fake()
    fake.set_delay(30)
    with pytest.raises(asyncio.TimeoutError):
        await post(base, "/2/httpapi", json={"api_key": KEY, "events": [event(0)]}, timeout=0.2)
    fake.set_delay(0)
    assert (await send(base, [event(1)]))[0] == 200
    await fake.stop()  # wakes the waiting handler: like a slow server, it processes what the client gave up on
    assert fake.events == [event(1), event(0)]


async def test_control_and_inspection_routes(fake_amplitude: FakeAmplitude) -> None:
    base = fake_amplitude.base_url
    assert (await post(base, "/_test/fail_next", json={"status": 503, "body": ""}))[0] == 200
    assert (await send(base, [event(0)]))[0] == 503
    assert (await send(base, [event(0)]))[0] == 200
    status, _, body = await post(base, "/_test/explode", json={})
    assert status == 400 and "fail_next|drop_next|delay|fail_for|reset" in body["error"]
    assert (await post(base, "/_test/fail_next", json={"status": 42}))[0] == 400
    async with aiohttp.ClientSession() as session, session.get(base + "/_test/ingested") as resp:
        seen = await resp.json()
    assert seen["events"] == [event(0)] and seen["by_endpoint"]["httpapi"] == [event(0)]
    assert [r["status"] for r in seen["requests"]] == [503, 200]
    assert (await post(base, "/_test/reset", json={}))[0] == 200
    assert fake_amplitude.events == [] and fake_amplitude.requests == []


# ---- standalone process ----

async def test_standalone_process_prints_url_and_serves() -> None:
    script = Path(__file__).with_name("fake_amplitude.py")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(script), "--port", "0", "--api-key", "proc-key", stdout=asyncio.subprocess.PIPE)
    try:
        line = await asyncio.wait_for(proc.stdout.readline(), timeout=30)
        base = line.decode().strip()
        assert base.startswith("http://127.0.0.1:")
        status, _, _ = await post(base, "/2/httpapi", json={"api_key": "proc-key", "events": [event(0)]})
        assert status == 200
        async with aiohttp.ClientSession() as session, session.get(base + "/_test/ingested") as resp:
            assert (await resp.json())["events"] == [event(0)]
    finally:
        proc.terminate()
        assert await asyncio.wait_for(proc.wait(), timeout=30) == 0


async def test_fail_for_is_an_outage_window_then_recovery(make_fake) -> None:
    clock = Clock()
    fake, base = await make_fake(api_keys=[KEY], clock=clock)
    fake.fail_for(5.0, status=503, endpoint="httpapi")
    assert (await send(base, [event(1)]))[0] == 503
    assert (await send(base, [event(2)]))[0] == 503
    assert (await post(base, "/batch", json={"api_key": KEY, "events": [event(3)]}))[0] == 200  # other endpoints up
    clock.now += 5.0
    assert (await send(base, [event(4)]))[0] == 200
    assert [r.status for r in fake.requests] == [503, 503, 200, 200]
    assert [e["insert_id"] for e in fake.events] == ["ins-3", "ins-4"]  # nothing sent in the outage was ingested
    with pytest.raises(ValueError):
        fake.fail_for(1.0, endpoint="nowhere")


async def test_set_limits_gives_real_413s(fake_amplitude: FakeAmplitude) -> None:
    fake_amplitude.set_limits("httpapi", max_items=2)
    assert (await send(fake_amplitude.base_url, [event(1), event(2), event(3)]))[0] == 413
    assert (await send(fake_amplitude.base_url, [event(1), event(2)]))[0] == 200
    fake_amplitude.set_limits("httpapi", max_bytes=100)
    assert (await send(fake_amplitude.base_url, [event(5)]))[0] == 413
    fake_amplitude.reset()
    assert (await send(fake_amplitude.base_url, [event(6), event(7), event(8)]))[0] == 200
