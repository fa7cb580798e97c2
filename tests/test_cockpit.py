"""The /debug cockpit over HTTP: the event trail, sessions of every kind, the hour's charts,
the live stream and replaying dead letters (the pages in Chromium: test_browser_cockpit.py)."""

from __future__ import annotations

import asyncio
import re

import orjson
from fake_amplitude import TEST_API_KEY
from test_ingest import make_settings, track
from test_sources import until

from edgeproxy.app import create_app
from edgeproxy.config import validate

CHROME = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36"


def settings_for(tmp_path, amp, **overrides):
    return make_settings(tmp_path, amplitude__api_key=TEST_API_KEY, amplitude__endpoint_url=amp.base_url, **overrides)


def web_event(mid: str, **extra):
    return track(messageId=mid, context={"library": {"name": "analytics.js"}, "userAgent": CHROME}, **extra)


async def send(client, body, path="/_e/v1/t", **kw):
    resp = await client.post(path, data=orjson.dumps(body), **kw)
    return resp


async def entry(client, message_id: str, condition=lambda e: True, what="the entry") -> dict:
    found: dict = {}

    async def ready() -> bool:
        resp = await client.get(f"/debug/events/{message_id}?format=json")
        if resp.status == 200:
            found.update(await resp.json())
            return condition(found)
        return False

    for _ in range(200):
        if await ready():
            return found
        await asyncio.sleep(0.05)
    raise AssertionError(f"{what}: {found}")


async def test_the_trail_tells_an_events_story_from_message_to_delivery(tmp_path, aiohttp_client, amp) -> None:
    client = await aiohttp_client(create_app(settings_for(tmp_path, amp)))
    amp.fail_next(503, times=1)
    assert (await send(client, web_event("trail-1", userId="user-7", event="Order Completed"))).status == 200
    e = await entry(client, "trail-1", lambda e: e["delivery"] == "delivered", "delivered after one retry")
    # As received (normalised), the identity decision, the payload Amplitude got, both attempts.
    assert e["message"]["messageId"] == "trail-1" and e["message"]["context"]["ip"] == "127.0.0.1"
    assert e["identity"]["device_from"] == "anonymousId (no device cookie yet)"
    assert e["identity"]["session"] == "started" and e["identity"]["web"] is True
    [payload] = e["amplitude_payloads"]
    assert payload["item"]["event_type"] == "Order Completed" and payload["item"]["session_id"] == e["session_id"]
    assert e["relay_payload"] is None
    first, second = e["attempts"]
    assert (first["status"], first["outcome"], second["status"], second["outcome"]) == (503, "retry", 200, "delivered")
    assert first["next_ms"] > first["at_ms"] and first["answer"]
    assert second["next_ms"] is None
    # Searchable by message id, device id, user id and event name; the HTML says the same.
    for q in ("trail-1", "anon-0001", "USER-7", "order completed"):
        rows = (await (await client.get("/debug/events", params={"q": q, "format": "json"})).json())["events"]
        assert [r["message_id"] for r in rows] == ["trail-1"], q
    assert (await (await client.get("/debug/events?q=nothing-like-it&format=json")).json())["events"] == []
    html = await (await client.get("/debug/events/trail-1")).text()
    for text in ("Identity decision", "anonymousId (no device cookie yet)", "&quot;event_type&quot;: &quot;Order Completed&quot;",
                 "<td>503</td><td>retry</td>", "<td>200</td><td>delivered</td>"):
        assert text in html, text
    # The session page links each event to its trail entry.
    session = await (await client.get("/debug/sessions/anon-0001-aaaa")).text()
    assert '/debug/events/trail-1"' in session and "<h2>Timeline</h2>" in session


async def test_identity_decisions_cookie_rotation_and_a_replaced_client_session(tmp_path, aiohttp_client, amp) -> None:
    client = await aiohttp_client(create_app(settings_for(tmp_path, amp)))
    # Sent 41 min 12 s after it happened (a queue flushed late), then a fresh one: times are skew-corrected.
    old = web_event("id-1", timestamp="2026-03-14T15:00:00.000Z", sentAt="2026-03-14T15:41:12.000Z")
    assert (await send(client, old)).status == 200
    # The browser keeps the cookies: the next event's device is the cookie's; 41 idle minutes rotate.
    fresh = web_event("id-2", timestamp="2026-03-14T15:41:12.000Z", sentAt="2026-03-14T15:41:12.000Z")
    assert (await send(client, fresh)).status == 200
    e = await entry(client, "id-2")
    assert e["identity"]["device_from"] == "the device cookie"
    first = await entry(client, "id-1")
    assert e["identity"]["session"] == f"rotated after 41 min 12 s idle (was {first['session_id']})"
    # A client that claims another session id has it replaced.
    claim = {"Actions Amplitude": {"session_id": 1773500400000}}
    assert (await send(client, web_event("id-3", integrations=claim))).status == 200
    assert (await entry(client, "id-3"))["identity"]["session"] == "continued; the client's different session id was replaced"
    # A message the tracking API refused is in the trail with the reason the client got.
    bad = await send(client, {"batch": [web_event("id-4"), {**web_event("id-5"), "type": "launch"}], "writeKey": "wk"},
                     path="/_e/v1/batch")
    assert bad.status == 200
    rejected = await entry(client, "id-5")
    assert rejected["outcome"].startswith("rejected: type") and rejected["message"]["type"] == "launch"


async def test_mobile_devices_and_their_library_sessions(tmp_path, aiohttp_client, amp) -> None:
    client = await aiohttp_client(create_app(settings_for(tmp_path, amp)))
    for i, (sid, ts) in enumerate([(1773500000000, "2026-03-14T15:00:00.000Z"), (1773500000000, "2026-03-14T15:01:00.000Z"),
                                   (1773503000000, "2026-03-14T15:50:00.000Z")]):
        body = track(messageId=f"kt-{i}", anonymousId="kt-anon", userId="pilot-1", timestamp=ts,
                     context={"library": {"name": "analytics-kotlin", "version": "1.16.0"}, "device": {"id": "pixel-9-dev"}},
                     integrations={"Actions Amplitude": {"session_id": sid}})
        assert (await send(client, body)).status == 200
    overview = await (await client.get("/debug?format=json")).json()
    [device] = overview["devices"]
    assert device["device_id"] == "pixel-9-dev" and device["library"] == "analytics-kotlin"
    assert device["session_id"] == 1773503000000 and device["events"] == 3 and device["user_id"] == "pilot-1"
    assert [s["events"] for s in device["sessions"]] == [1, 2]
    e = await entry(client, "kt-0")
    assert e["identity"]["session"] == "the library's own session id" and e["session_id"] == 1773500000000
    await until(lambda: len(amp.events) == 3, "three events delivered")
    page = await (await client.get("/debug/sessions/pixel-9-dev")).text()
    assert "A mobile or server device" in page and "<code>1773503000000</code>" in page
    # Its timeline: three events in two sessions, the rotation drawn where the id changed.
    assert 'data-events="3" data-sessions="2"' in page and 'class="rotation"' in page
    assert "new session 1773503000000 after 49 min 0 s" in page
    html = await (await client.get("/debug")).text()
    assert "Mobile and server devices" in html and "/debug/sessions/pixel-9-dev" in html


async def test_the_hours_charts_count_what_happened(tmp_path, aiohttp_client, amp) -> None:
    client = await aiohttp_client(create_app(settings_for(tmp_path, amp)))
    for i in range(7):
        assert (await send(client, web_event(f"c-{i}"))).status == 200
    assert (await client.post("/_e/v1/t", data=b"{nope")).status == 400
    await until(lambda: len(amp.events) == 7, "seven events delivered")
    live = (await (await client.get("/debug?format=json")).json())["live"]
    assert live["headline"]["accepted"]["hour"] == 7 and live["headline"]["accepted"]["recent"] == 7
    assert live["headline"]["accepted"]["trend"] == "up" and live["headline"]["sessions"]["hour"] == 1
    assert sum(v for _, v in live["charts"]["rejected"]["invalid_json"]) == 1
    assert sum(v for _, v in live["charts"]["delivered"]["amplitude"]) == 7
    assert len(live["charts"]["accepted"]) == 60
    html = await (await client.get("/debug")).text()
    assert re.search(r'id="chart-accepted" data-total="7">.*?Events accepted: <b class="chart-total">7</b>', html)
    assert 'id="chart-rejected-invalid_json" data-total="1"' in html
    assert 'id="chart-delivered-amplitude" data-total="7"' in html
    assert '<div class="headline" id="headline-accepted"><span class="figure">7</span>' in html


async def test_the_stream_sends_new_trail_rows_and_the_live_overview(tmp_path, aiohttp_client, amp) -> None:
    client = await aiohttp_client(create_app(settings_for(tmp_path, amp)))
    resp = await client.get("/debug/stream?view=overview")
    assert resp.status == 200 and resp.headers["Content-Type"] == "text/event-stream"
    assert resp.headers["X-Accel-Buffering"] == "no" and resp.headers["Cache-Control"] == "no-store"

    async def next_message() -> dict:
        while True:
            line = await asyncio.wait_for(resp.content.readline(), 10)
            if line.startswith(b"data: "):
                return orjson.loads(line[6:])

    first = await next_message()  # sets the cursor
    assert first["count"] == 0 and 'id="headline-accepted"' in first["live"]
    assert (await send(client, web_event("live-1", event="<img src=x onerror=alert(1)>"))).status == 200
    message = await next_message()
    while message["count"] == 0:
        message = await next_message()
    assert 'href="/debug/events/live-1"' in message["rows"] and message["seq"] > first["seq"]
    assert "<img" not in message["rows"] and "&lt;img src=x onerror=alert(1)&gt;" in message["rows"]
    resp.close()


async def test_replay_from_the_page_needs_its_csrf_token(tmp_path, aiohttp_client, amp) -> None:
    client = await aiohttp_client(create_app(settings_for(tmp_path, amp)))
    amp.fail_next(400, {"code": 400, "error": "Invalid API key: bad"}, times=1)
    assert (await send(client, web_event("dl-1"))).status == 200
    await entry(client, "dl-1", lambda e: e["delivery"] == "dead", "dead-lettered")
    html = await (await client.get("/debug")).text()
    assert "Replay all 1 <code>invalid_api_key</code>" in html
    # Another site's form (no token) is refused and replays nothing.
    refused = await client.post("/debug/replay", data={"reason": "invalid_api_key"})
    assert refused.status == 403 and "CSRF token" in await refused.text()
    assert amp.events == []
    csrf = re.search(r'name="csrf" value="([0-9a-f]+)"', html).group(1)
    done = await client.post("/debug/replay", data={"reason": "invalid_api_key", "csrf": csrf})
    assert done.status == 200 and "1 dead letter(s) of reason invalid_api_key queued again" in await done.text()
    await until(lambda: len(amp.events) == 1, "the replayed event delivered")
    e = await entry(client, "dl-1", lambda e: e["delivery"] == "delivered", "delivered after the replay")
    assert [a["outcome"] for a in e["attempts"]] == ["dead: invalid_api_key", "delivered"]
    # One message by id, as JSON (what a script would do): nothing left to replay.
    again = await client.post("/debug/replay", json={"message_id": "dl-1"})
    assert (await again.json())["replayed"] == 0
    assert (await client.post("/debug/replay", json={})).status == 400


async def test_everything_is_escaped_and_the_trail_can_be_off(tmp_path, aiohttp_client, amp) -> None:
    client = await aiohttp_client(create_app(settings_for(tmp_path, amp)))
    evil = "<script>alert('x')</script>"
    assert (await send(client, web_event("esc-1", event=evil, userId=evil))).status == 200
    for path in ("/debug", "/debug/events", "/debug/events/esc-1", "/debug/events?q=%3Cscript"):
        text = await (await client.get(path)).text()
        assert "<script>alert" not in text and "&lt;script&gt;alert(" in text, path
    missing = await client.get("/debug/events/%3Cb%3Enope")
    assert missing.status == 404 and "<b>nope" not in await missing.text()
    csp = (await client.get("/debug")).headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp
    off = await aiohttp_client(create_app(settings_for(tmp_path / "off", amp, debug__trail_size=0)))
    assert (await send(off, web_event("off-1"))).status == 200
    assert "The event trail is off" in await (await off.get("/debug/events")).text()
    assert (await off.get("/debug/events/off-1")).status == 404


def test_trail_size_is_checked(tmp_path) -> None:
    assert "debug.trail_size: must be 0 (no event trail) or positive" in validate(make_settings(tmp_path, debug__trail_size=-1))
    assert not any("trail_size" in p for p in validate(make_settings(tmp_path, debug__trail_size=0)))


def _result(device_id: str):
    from edgeproxy.identity.service import FROM_COOKIE, SESSION_CONTINUED, IdentityResult

    return IdentityResult(device_id, None, False, False, True, device_from=FROM_COOKIE, session_how=SESSION_CONTINUED)


def test_a_full_trail_holds_compact_json_not_the_requests_objects() -> None:
    """1,000 entries of ~1.2 KB messages stay near their JSON's size (orjson's own output keeps
    a 16 KiB buffer, and the request's object trees were 6.7 KiB an entry)."""
    import gc
    import tracemalloc

    from edgeproxy.cockpit.trail import Trail
    from edgeproxy.delivery.spool import SpoolItem

    def message(n: int) -> dict:
        return {**web_event(f"m-{n}", properties={"sku": f"SKU-{n}", "note": "x" * 800}), "anonymousId": f"d-{n}"}

    trail = Trail(1000)
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for n in range(2000):
        msg = message(n)
        item = SpoolItem(msg["messageId"], "httpapi", {"event_type": "Viewed", "event_properties": msg["properties"]},
                         None, msg["anonymousId"], None, 1, 1)
        trail.record("default", msg, _result(msg["anonymousId"]), [item], (), "accepted", 1, 1)
        del msg, item
    gc.collect()
    held = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    assert len(trail) == 1000
    json_bytes = sum(len(e.message_json) + sum(len(p[2]) for p in e.payloads) for e in trail.find(limit=1000))
    assert held < 1.6 * json_bytes, (held, json_bytes)
    shown = trail.get("m-1999").as_dict()
    assert shown["message"]["properties"]["sku"] == "SKU-1999" and shown["type"] == "track"
    assert shown["amplitude_payloads"] == [{"endpoint": "httpapi", "item": {"event_type": "Viewed",
                                                                          "event_properties": shown["message"]["properties"]}}]
    assert [e.message_id for e in trail.find("sku", limit=5)] == [], "search reads the ids and the name, not properties"
    assert trail.find("m-1998", limit=5)[0].message_id == "m-1998" and trail.get("m-999") is None  # fell out of the ring


def test_the_trail_keeps_what_orjson_cannot_encode_and_never_raises() -> None:
    from edgeproxy.cockpit.trail import UNKEPT, Trail
    from edgeproxy.delivery.spool import SpoolItem

    trail = Trail(10)
    big = {**web_event("big-int"), "properties": {"n": 2**70}}  # JSON allows it; orjson does not write it
    item = SpoolItem("big-int", "httpapi", {"event_properties": {"n": 2**70}}, None, "d", None, 1, 1)
    trail.record("default", big, _result("d"), [item], (), "accepted", 1, 1)
    shown = trail.get("big-int").as_dict()
    assert shown["message"]["properties"]["n"] == 2**70
    assert trail.get("big-int").payloads[0][2] == UNKEPT  # the queue refuses that item itself, and says so

    deep: dict = {}
    node = deep
    for _ in range(3000):  # deeper than orjson's 254 levels and than json's recursion
        node["x"] = {}
        node = node["x"]
    trail.rejected("default", {"messageId": "too-deep", "type": "track", "properties": deep}, "message: too deep", 1)
    assert trail.get("too-deep").as_dict()["message"] == orjson.loads(UNKEPT)
    assert trail.find("too-deep")[0].type == "track"
