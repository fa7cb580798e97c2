"""Hostile input found by attacking the edge: each case fails without its fix.

Dates at the calendar's edges (property tests over the ISO-8601 grammar), one cookie-less
batch of several visitors, ...
"""

from __future__ import annotations

import asyncio
import time
from datetime import datetime, timedelta, timezone

import orjson
from hypothesis import given, settings, strategies as st
from test_ingest import make_settings, track

from edgeproxy import segment
from edgeproxy.app import create_app
from edgeproxy.mapping import Mapper
from edgeproxy.segment_api import _shift
from fake_amplitude import TEST_API_KEY

NOW = datetime(2026, 12, 6, 12, 0, tzinfo=timezone.utc)


def _year() -> st.SearchStrategy[str]:
    return st.one_of(st.integers(0, 9999).map(lambda y: f"{y:04d}"), st.sampled_from(["0000", "10000", "1" * 1000]),
                     st.integers(0, 99999).map(str))


def _two(lo: int, hi: int) -> st.SearchStrategy[str]:
    return st.integers(lo, hi).map(lambda n: f"{n:02d}")


OFFSET = st.one_of(st.sampled_from(["Z", "z", "", "+00:00", "-00:00"]),
                   st.tuples(st.sampled_from("+-"), _two(0, 25), _two(0, 60)).map(lambda t: f"{t[0]}{t[1]}:{t[2]}"))
FRACTION = st.one_of(st.just(""), st.text("0123456789", min_size=1, max_size=12).map(lambda d: "." + d))
ISO = st.builds(lambda y, mo, d, h, mi, s, f, o: f"{y}-{mo}-{d}T{h}:{mi}:{s}{f}{o}",
                _year(), _two(0, 13), _two(0, 32), _two(0, 24), _two(0, 60), _two(0, 60), FRACTION, OFFSET)
EDGES = ["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-05:00", "0001-01-01T00:00:00Z", "9999-12-31T23:59:59.999Z",
         "1" * 1000 + "-01-01T00:00:00Z", "2026-02-30T00:00:00Z", ""]
DATES = st.one_of(ISO, st.sampled_from(EDGES), st.none())
MAPPER = Mapper({"api_key": "k"}, strict_settings=False)


@settings(max_examples=1500, deadline=None)
@given(timestamp=DATES, sent_at=DATES, batch_sent_at=DATES)
def test_any_date_is_an_answer_for_that_message_never_an_exception(timestamp, sent_at, batch_sent_at) -> None:
    """normalize either accepts or raises Rejected naming the field; what it accepts maps, and
    its relayed sentAt can be shifted, whatever the dates."""
    raw = {"type": "track", "event": "x", "anonymousId": "anon-12345"}
    if timestamp is not None:
        raw["timestamp"] = timestamp
    if sent_at is not None:
        raw["sentAt"] = sent_at
    try:
        msg = segment.normalize(raw, path_type=None, received=NOW, envelope=segment.Envelope(sent_at=batch_sent_at))
    except segment.Rejected as exc:
        assert exc.field in ("timestamp", "sentAt") and exc.message
        return
    datetime.fromisoformat(msg["timestamp"].replace("Z", "+00:00"))  # a real UTC time
    MAPPER.map(msg, device_id="anon-12345")
    if "sentAt" in msg:
        _shift(msg["sentAt"], timedelta(hours=1))


async def test_a_batch_with_extreme_dates_accepts_its_valid_messages(tmp_path, aiohttp_client, amp) -> None:
    client = await aiohttp_client(create_app(make_settings(
        tmp_path, amplitude__api_key=TEST_API_KEY, amplitude__endpoint_url=amp.base_url)))
    hostile = [("0001-01-01T00:00:00+01:00", None), ("9999-12-31T23:59:59-05:00", None),
               ("9999-12-31T23:59:59Z", "0001-01-01T00:00:00Z"), ("1" * 1000 + "-01-01T00:00:00Z", None)]
    batch = [track(messageId="valid-0", sentAt=None)]
    for i, (ts, sent) in enumerate(hostile):
        batch.append(track(messageId=f"hostile-{i}", timestamp=ts, sentAt=sent))
    batch.append(track(messageId="valid-1", sentAt=None))
    for m in batch:
        if m["sentAt"] is None:
            del m["sentAt"]
    resp = await client.post("/_e/v1/batch", data=orjson.dumps({"batch": batch, "writeKey": "wk"}))
    assert resp.status == 200, await resp.text()
    body = await resp.json()
    assert body["accepted"] == 2 and [r["index"] for r in body["rejected"]] == [1, 2, 3, 4]
    assert {r["field"] for r in body["rejected"]} == {"timestamp", "sentAt"}
    deadline = time.monotonic() + 10
    while len(amp.events) < 2 and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    assert {e["insert_id"] for e in amp.events} == {"valid-0", "valid-1"}


async def _cookieless_batch(client, batch: list[dict], cookies: dict | None = None) -> None:
    client.session.cookie_jar.clear()
    if cookies:
        client.session.cookie_jar.update_cookies(cookies)
    resp = await client.post("/_e/v1/batch", data=orjson.dumps({"batch": batch, "writeKey": "wk"}))
    assert resp.status == 200, await resp.text()


async def test_one_cookieless_batch_of_several_visitors_keeps_them_apart(tmp_path, aiohttp_client, amp) -> None:
    client = await aiohttp_client(create_app(make_settings(
        tmp_path, amplitude__api_key=TEST_API_KEY, amplitude__endpoint_url=amp.base_url)))
    batch = [track(messageId=f"m{i}", anonymousId=anon) for i, anon in
             enumerate(["visitor-aaaa", "visitor-bbbb", "visitor-aaaa", "visitor-cccc"])]
    await _cookieless_batch(client, batch)
    deadline = time.monotonic() + 10
    while len(amp.events) < 4 and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    device = {e["insert_id"]: e["device_id"] for e in amp.events}
    assert device == {"m0": "visitor-aaaa", "m1": "visitor-bbbb", "m2": "visitor-aaaa", "m3": "visitor-cccc"}
    sessions = {e["insert_id"]: e["session_id"] for e in amp.events}
    assert sessions["m0"] == sessions["m2"]
    debug = await (await client.get("/debug?format=json")).json()
    assert {s["device_id"] for s in debug["sessions"]} == {"visitor-aaaa", "visitor-bbbb", "visitor-cccc"}


async def test_the_cookie_belongs_to_its_browsers_messages_only(tmp_path, aiohttp_client, amp) -> None:
    """analytics.reset() between two queued events: the second anonymousId is a new visitor,
    not the cookie's device; the cookie still wins over a wiped anonymousId of its browser."""
    client = await aiohttp_client(create_app(make_settings(
        tmp_path, amplitude__api_key=TEST_API_KEY, amplitude__endpoint_url=amp.base_url)))
    await _cookieless_batch(client, [track(messageId="first", anonymousId="device-old1")])
    cookies = {c.key: c.value for c in client.session.cookie_jar}
    assert "_ep_did" in cookies
    resp = await client.post("/_e/v1/batch", data=orjson.dumps({"batch": [
        track(messageId="same-browser", anonymousId="device-wiped"),  # Safari wiped its storage: cookie wins
        track(messageId="same-browser-2", anonymousId="device-wiped"),
        track(messageId="after-reset", anonymousId="device-new22"),  # another id in the same request
    ], "writeKey": "wk"}))
    assert resp.status == 200
    deadline = time.monotonic() + 10
    while len(amp.events) < 4 and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    device = {e["insert_id"]: e["device_id"] for e in amp.events}
    assert device == {"first": "device-old1", "same-browser": "device-old1", "same-browser-2": "device-old1",
                      "after-reset": "device-new22"}


async def test_write_keys_outside_segments_alphabet_are_refused_everywhere(tmp_path, aiohttp_client, amp) -> None:
    from edgeproxy.config import ConfigError, load_settings

    client = await aiohttp_client(create_app(make_settings(tmp_path)))
    for bad in (".", "../x", "k" * 65, "a b", "wk\n", "é"):
        resp = await client.post("/_e/v1/t", data=orjson.dumps(track(writeKey=bad)))
        assert resp.status == 400 and "write key is 1-64 letters" in (await resp.json())["message"], bad
    for good in ("Jx0X5Nr0aWq3jHcXfO6w1QP8bOfYHp6w", "wk-staging_2"):
        assert (await client.post("/_e/v1/t", data=orjson.dumps(track(writeKey=good)))).status == 200
    path = tmp_path / "bad.toml"
    path.write_text('[segment]\nwrite_keys = ["ok", "no.dots"]\n[origin]\nsnippet_write_key = "../x"\n'
                    '[[sources]]\nname = "s"\nwrite_keys = ["' + "k" * 65 + '"]\n')
    try:
        load_settings(path, env={})
    except ConfigError as exc:
        text = "\n".join(exc.problems)
    assert "segment.write_keys[1]: a write key is" in text and "origin.snippet_write_key: a write key is" in text
    assert "sources[0].write_keys[0]: a write key is" in text


async def test_oversized_ids_are_refused_and_stored_strings_are_bounded(tmp_path, aiohttp_client, amp) -> None:
    client = await aiohttp_client(create_app(make_settings(tmp_path)))
    batch = [
        track(messageId="huge-device", context={"library": {"name": "analytics.js"}, "device": {"id": "d" * 30_000}}),
        track(messageId="huge-user", userId="u" * 1025),
        track(messageId="huge-anon", anonymousId="a" * 1025),
        track(messageId="long-but-ok", anonymousId="a" * 1024, userId="u" * 1024,
              context={"library": {"name": "analytics.js"}, "userAgent": "Mozilla/5.0 " + "x" * 30_000}),
    ]
    resp = await client.post("/_e/v1/batch", data=orjson.dumps({"batch": batch, "writeKey": "wk"}))
    body = await resp.json()
    assert resp.status == 200 and body["accepted"] == 1, body
    assert [(r["index"], r["field"]) for r in body["rejected"]] == [(0, "context.device.id"), (1, "userId"), (2, "anonymousId")]
    assert "at most 1024" in body["rejected"][0]["message"]
    server = track(messageId="server-lib", anonymousId="srv-12345",
                   context={"library": {"name": "L" * 30_000}, "device": {"id": "srv-12345"}})
    app = create_app(make_settings(tmp_path / "b", sessions__stamp_non_web=True))
    other = await aiohttp_client(app)
    assert (await other.post("/_e/v1/t", data=orjson.dumps(server))).status == 200
    debug = await (await client.get("/debug?format=json")).json()
    [session] = debug["sessions"]
    assert len(session["user_agent"]) == 512 and len(session["device_id"]) <= 1024
    [stamped] = (await (await other.get("/debug?format=json")).json())["sessions"]
    assert len(stamped["library"]) == 100


async def test_every_debug_answer_carries_the_security_headers(tmp_path, aiohttp_client) -> None:
    import base64 as b64
    import hashlib
    import re

    from edgeproxy.edge.debug_pages import STYLE

    client = await aiohttp_client(create_app(make_settings(tmp_path, debug__token="operator-token-1234")))
    auth = {"Authorization": "Bearer operator-token-1234"}
    answers = [await client.get("/debug", headers=auth), await client.get("/debug?format=json", headers=auth),
               await client.get("/debug/me", headers=auth), await client.get("/debug/sessions/x", headers=auth),
               await client.get("/debug/login"), await client.get("/debug", allow_redirects=False),
               await client.get("/debug?format=json"), await client.post("/debug/login", data={"token": "wrong"}),
               await client.post("/debug/forget", json={}, headers=auth)]
    for resp in answers:
        csp = resp.headers.get("Content-Security-Policy", "")
        assert "frame-ancestors 'none'" in csp and "default-src 'none'" in csp and "script-src 'self';" in csp and "unsafe-inline" not in csp, resp.url
        assert resp.headers["X-Content-Type-Options"] == "nosniff" and resp.headers["Referrer-Policy"] == "no-referrer"
    page = await (await client.get("/debug", headers=auth)).text()
    assert re.findall(r"<script[^>]*>", page) == ['<script src="/debug/cockpit.js" defer>']  # its own, nothing inline
    [style] = re.findall(r"<style>(.*?)</style>", page, re.S)
    digest = b64.b64encode(hashlib.sha256(style.encode()).digest()).decode()
    assert style == STYLE and f"'sha256-{digest}'" in answers[0].headers["Content-Security-Policy"]


async def test_a_correct_token_always_works_whatever_failed_before(tmp_path, aiohttp_client) -> None:
    settings = make_settings(tmp_path, debug__token="operator-token-1234", server__trusted_proxies=["127.0.0.1"])
    client = await aiohttp_client(create_app(settings))
    for i in range(300):  # wrong tokens, forged login cookies, from many addresses
        headers = {"X-Forwarded-For": f"198.51.100.{i % 250}", "Accept": "application/json"}
        if i % 3 == 0:
            headers["Authorization"] = f"Bearer wrong-{i}"
        elif i % 3 == 1:
            headers["Cookie"] = f"_ep_debug=forged.{i}.x"
        else:
            headers["Authorization"] = "Basic b3BlcmF0b3I6b3BlcmF0b3ItdG9rZW4tMTIzNA=="
        assert (await client.get("/debug", headers=headers)).status == 401
        if i % 50 == 0:
            assert (await client.post("/debug/login", data={"token": f"guess-{i}"}, headers=headers)).status == 401
    for address in ("203.0.113.9", "198.51.100.1", "127.0.0.1"):
        resp = await client.get("/debug?format=json", headers={"Authorization": "Bearer operator-token-1234",
                                                                "X-Forwarded-For": address})
        assert resp.status == 200, address
        login = await client.post("/debug/login", data={"token": "operator-token-1234"},
                                  headers={"X-Forwarded-For": address}, allow_redirects=False)
        assert login.status == 303
