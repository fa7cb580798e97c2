"""The privacy rules through the real app: what each setting does to deliveries (the
Amplitude stand-in), to the Segment relay, to cookies, to /metrics and /debug.

Absence is proved with a sentinel: a later event that is delivered; the spool delivers in
order, so anything spooled before it would have arrived first.
"""

from __future__ import annotations

import asyncio
import time
from http.cookies import SimpleCookie

import orjson
import pytest
from fake_amplitude import TEST_API_KEY, FakeAmplitude
from fake_segment import FakeSegment
from test_ingest import make_settings, track

from edgeproxy.app import create_app

GRANTED = {"consent": {"categoryPreferences": {"analytics": True, "advertising": False}}}
DENIED = {"consent": {"categoryPreferences": {"analytics": False, "advertising": True}}}
CHROME = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36"
AJS = {"library": {"name": "analytics.js", "version": "next-1.84.3"}, "userAgent": CHROME}
GOOGLEBOT = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)"


def app_with(tmp_path, amp: FakeAmplitude, seg: FakeSegment | None = None, **privacy):
    s = make_settings(tmp_path, amplitude__api_key=TEST_API_KEY, amplitude__secret_key="s",
                      amplitude__endpoint_url=amp.base_url)
    for key, value in privacy.items():
        setattr(s.privacy, key, value)
    if seg is not None:
        s.segment.relay_url = seg.base_url
    return create_app(s)


def ev(mid: str, consent: dict | None = None, **extra) -> dict:
    context = {**AJS, **(consent or {})}
    context.update(extra.pop("context", {}))
    return track(messageId=mid, context=context, **extra)


async def send(client, body: dict, headers: dict | None = None):
    resp = await client.post("/_e/v1/t", data=orjson.dumps(body), headers={"Content-Type": "text/plain", **(headers or {})})
    assert resp.status == 200, await resp.text()
    return resp


async def delivered(amp: FakeAmplitude, sentinel: str, timeout: float = 15.0) -> set[str]:
    """insert_ids Amplitude got, once ``sentinel`` has arrived."""
    deadline = time.monotonic() + timeout
    while sentinel not in {e["insert_id"] for e in amp.events}:
        if time.monotonic() > deadline:
            raise AssertionError(f"{sentinel} never delivered; got {[e['insert_id'] for e in amp.events]}")
        await asyncio.sleep(0.02)
    return {e["insert_id"] for e in amp.events}


def set_cookies(resp) -> dict[str, str]:
    """name -> max-age ("" when none) of every Set-Cookie."""
    out = {}
    for header in resp.headers.getall("Set-Cookie", []):
        jar = SimpleCookie()
        jar.load(header)
        for name, morsel in jar.items():
            out[name] = morsel["max-age"]
    return out


async def metrics(client) -> str:
    return await (await client.get("/metrics")).text()


async def test_consent_categories_withhold_denied_events_and_relay_everything(
        tmp_path, aiohttp_client, amp, fake_segment) -> None:
    client = await aiohttp_client(app_with(tmp_path, amp, fake_segment, consent_categories=["analytics"]))
    await send(client, ev("granted-1", GRANTED))
    await send(client, ev("denied-1", DENIED))
    await send(client, ev("absent-1"))  # events_without_consent = "send": Segment's behaviour
    await send(client, ev("sentinel", GRANTED))
    assert await delivered(amp, "sentinel") == {"granted-1", "absent-1", "sentinel"}
    deadline = time.monotonic() + 10
    while len(fake_segment.messages()) < 4 and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    relayed = {m["messageId"]: m for m in fake_segment.messages()}
    assert set(relayed) == {"granted-1", "denied-1", "absent-1", "sentinel"}  # Segment enforces its own consent
    assert relayed["denied-1"]["context"]["consent"] == DENIED["consent"]
    text = await metrics(client)
    assert 'edgeproxy_events_withheld_total{reason="consent_denied",source="default"} 1.0' in text
    assert 'edgeproxy_events_accepted_total{source="default",type="track"} 4.0' in text
    debug = await (await client.get("/debug?format=json")).json()
    assert debug["dead_letters"] == [] and debug["dead_by_reason"] == {}  # never a dead letter to replay
    [row] = debug["privacy"]
    assert (row["message_id"], row["outcome"], row["reason"], row["consent"]) == ("denied-1", "withheld", "consent_denied", "denied")
    [session] = debug["sessions"]
    assert session["consent"] == "granted"  # the latest event's state


async def test_drop_withholds_events_without_consent(tmp_path, aiohttp_client, amp) -> None:
    client = await aiohttp_client(app_with(tmp_path, amp, consent_categories=["analytics"],
                                           events_without_consent="drop"))
    await send(client, ev("absent-1"))
    await send(client, ev("absent-2", type="page", name="Home"))
    await send(client, ev("sentinel", GRANTED))
    assert await delivered(amp, "sentinel") == {"sentinel"}
    assert 'edgeproxy_events_withheld_total{reason="no_consent",source="default"} 2.0' in await metrics(client)


async def test_anonymous_events_carry_no_identifier_and_a_per_session_device_id(
        tmp_path, aiohttp_client, amp, fake_segment) -> None:
    client = await aiohttp_client(app_with(tmp_path, amp, fake_segment, consent_categories=["analytics"],
                                           events_without_consent="anonymous"))
    now = int(time.time() * 1000)
    iso = lambda ms: time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms / 1000)) + f".{ms % 1000:03d}Z"  # noqa: E731
    visit = dict(userId="user-42", context={"ip": "203.0.113.77", "traits": {"email": "a@example.com"}}, sentAt=iso(now))
    resp = await send(client, ev("a-1", timestamp=iso(now - 3_600_000), **visit))
    assert set_cookies(resp) == {}  # no identifier may link this visit to another
    await send(client, ev("a-2", timestamp=iso(now - 3_599_000), **visit))
    await send(client, ev("a-3", timestamp=iso(now - 60_000), **visit))  # 59 minutes later: a new session
    identify = {**ev("a-identify", **visit), "type": "identify", "traits": {"email": "a@example.com"}}
    identify.pop("event")
    await send(client, identify)  # describes a person: not delivered anonymously
    await send(client, ev("sentinel", GRANTED))
    assert await delivered(amp, "sentinel") == {"a-1", "a-2", "a-3", "sentinel"}
    events = {e["insert_id"]: e for e in amp.events}
    for mid in ("a-1", "a-2", "a-3"):
        e = events[mid]
        assert "user_id" not in e and "ip" not in e and "user_properties" not in e
        assert e["device_id"] != "anon-0001-aaaa" and e["session_id"] > 0
    assert events["a-1"]["device_id"] == events["a-2"]["device_id"] != events["a-3"]["device_id"]
    assert events["a-1"]["session_id"] == events["a-2"]["session_id"] != events["a-3"]["session_id"]
    assert events["sentinel"]["device_id"] == "anon-0001-aaaa"  # consent given: the lasting id again
    text = await metrics(client)
    assert 'edgeproxy_events_anonymised_total{source="default"} 3.0' in text
    assert 'edgeproxy_events_withheld_total{reason="no_consent",source="default"} 1.0' in text
    # The relay gets the messages as the client sent them.
    deadline = time.monotonic() + 10
    while len(fake_segment.messages()) < 5 and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    relayed = {m["messageId"]: m for m in fake_segment.messages()}
    assert relayed["a-1"]["userId"] == "user-42" and relayed["a-1"]["anonymousId"] == "anon-0001-aaaa"


async def test_cookies_wait_for_consent_and_go_when_it_is_revoked(tmp_path, aiohttp_client, aiohttp_server,
                                                                  amp) -> None:
    from aiohttp import web

    async def page(_: web.Request) -> web.Response:
        return web.Response(body=b"<html><head></head><body>hi</body></html>", content_type="text/html")

    origin = web.Application()
    origin.router.add_get("/", page)
    server = await aiohttp_server(origin)
    s = make_settings(tmp_path, amplitude__api_key=TEST_API_KEY, amplitude__secret_key="s",
                      amplitude__endpoint_url=amp.base_url, origin__url=str(server.make_url("/")))
    s.privacy.consent_categories = ["analytics"]
    s.privacy.cookies_before_consent = False
    client = await aiohttp_client(create_app(s))

    page_resp = await client.get("/")
    assert page_resp.status == 200 and set_cookies(page_resp) == {}  # no identifier before consent
    before = await send(client, ev("before-1"))
    assert set_cookies(before) == {}
    await send(client, ev("before-2"))
    granted = await send(client, ev("granted-1", GRANTED))
    cookies = set_cookies(granted)
    assert {"_ep_did", "_ep_sess", "ajs_anonymous_id", "analytics_session_id"} <= set(cookies)
    assert cookies["_ep_did"] == str(400 * 86400)
    revoked = await send(client, ev("revoked-1", DENIED))
    assert set_cookies(revoked) == {name: "0" for name in (
        "_ep_did", "_ep_sess", "analytics_session_id", "analytics_session_id.last_access", "ajs_anonymous_id", "ajs_user_id")}
    await send(client, ev("sentinel", GRANTED))
    got = await delivered(amp, "sentinel")
    assert got == {"before-1", "before-2", "granted-1", "sentinel"}
    # Without cookies the server kept the session under the anonymousId: one session throughout.
    sessions = {e["session_id"] for e in amp.events}
    assert len(sessions) == 1
    assert {e["device_id"] for e in amp.events} == {"anon-0001-aaaa"}


async def test_gpc_is_a_denial_even_with_granted_preferences(tmp_path, aiohttp_client, amp) -> None:
    client = await aiohttp_client(app_with(tmp_path, amp, honor_gpc=True))
    await send(client, ev("gpc-1", GRANTED), headers={"Sec-GPC": "1"})
    await send(client, ev("dnt-1"), headers={"DNT": "1"})
    await send(client, ev("sentinel", GRANTED))
    assert await delivered(amp, "sentinel") == {"sentinel"}
    assert 'edgeproxy_events_withheld_total{reason="gpc",source="default"} 2.0' in await metrics(client)
    me = await (await client.get("/debug/me?format=json", headers={"Sec-GPC": "1", "Cookie": "ajs_anonymous_id=anon-0001-aaaa"})).json()
    assert me["privacy_signal"] is True and me["consent"] == "not_required"
    assert [r["reason"] for r in me["privacy"]] == ["gpc", "gpc"]


async def test_without_honor_gpc_the_signal_changes_nothing(tmp_path, aiohttp_client, amp) -> None:
    client = await aiohttp_client(app_with(tmp_path, amp))
    await send(client, ev("gpc-1"), headers={"Sec-GPC": "1"})
    await send(client, ev("sentinel"))
    assert await delivered(amp, "sentinel") == {"gpc-1", "sentinel"}


@pytest.mark.parametrize("mode, client_ip, amplitude_ip", [
    ("full", "203.0.113.77", "203.0.113.77"),
    ("truncate", "203.0.113.77", "203.0.113.0"),
    ("truncate", None, "127.0.0.0"),  # the connection's address, filled by the edge, truncated too
    ("truncate", "2001:db8:abcd:12::1", "2001:db8:abcd::"),
    ("drop", "203.0.113.77", None),
])
async def test_ip_rule_is_applied_before_the_spool(tmp_path, aiohttp_client, amp, fake_segment,
                                                   mode, client_ip, amplitude_ip) -> None:
    client = await aiohttp_client(app_with(tmp_path, amp, fake_segment, ip=mode))
    await send(client, ev("ip-1", context={"ip": client_ip} if client_ip else {}))
    await delivered(amp, "ip-1")
    [event] = amp.events
    assert event.get("ip") == amplitude_ip
    deadline = time.monotonic() + 10
    while not fake_segment.messages() and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    [relayed] = fake_segment.messages()
    assert relayed["context"].get("ip") == amplitude_ip
    if mode != "full":  # no full address anywhere in the spool's file
        raw = b"".join(p.read_bytes() for p in (tmp_path / "data").glob("spool*"))
        assert b"203.0.113.77" not in raw and b"127.0.0.1" not in raw


async def test_bots_are_counted_and_marked_and_dropped_only_when_asked(tmp_path, aiohttp_client, amp) -> None:
    for drop in (False, True):
        amp.reset()
        client = await aiohttp_client(app_with(tmp_path / str(drop), amp, drop_bots=drop))
        await send(client, ev(f"bot-{drop}", context={"userAgent": GOOGLEBOT}))
        gpt = ev(f"gpt-{drop}", anonymousId="anon-2")
        del gpt["context"]["userAgent"]  # then the request's own User-Agent is the visitor's
        await send(client, gpt, headers={"User-Agent": "GPTBot/1.2"})
        await send(client, ev(f"sentinel-{drop}", anonymousId="anon-3"))
        got = await delivered(amp, f"sentinel-{drop}")
        assert got == ({f"sentinel-{drop}"} if drop else {f"bot-{drop}", f"gpt-{drop}", f"sentinel-{drop}"})
        text = await metrics(client)
        flag = "true" if drop else "false"
        assert f'edgeproxy_bot_events_total{{dropped="{flag}",kind="search",source="default"}} 1.0' in text
        assert f'edgeproxy_bot_events_total{{dropped="{flag}",kind="ai",source="default"}} 1.0' in text
        debug = await (await client.get("/debug?format=json")).json()
        assert {(r["message_id"], r["bot"], r["outcome"]) for r in debug["privacy"]} == {
            (f"bot-{drop}", "search", "withheld" if drop else "delivered"),
            (f"gpt-{drop}", "ai", "withheld" if drop else "delivered")}
        assert "Privacy decisions" in await (await client.get("/debug")).text()


async def test_a_server_librarys_user_agent_is_not_the_visitors(tmp_path, aiohttp_client, amp) -> None:
    client = await aiohttp_client(app_with(tmp_path, amp, drop_bots=True))
    server = track(messageId="srv-1", context={"library": {"name": "analytics-python", "version": "2.4.0"}})
    await send(client, server, headers={"User-Agent": "python-requests/2.32"})
    assert await delivered(amp, "srv-1") == {"srv-1"}


async def test_privacy_rules_are_per_source(tmp_path, aiohttp_client, amp) -> None:
    path = tmp_path / "edgeproxy.toml"
    path.write_text(f"""
[sessions]
secure_cookies = false
signing_keys = ["{'k' * 32}"]
[delivery]
data_dir = "{tmp_path / 'data'}"
flush_interval = "50ms"
[segment]
write_keys = ["wk-eu"]
[amplitude]
api_key = "{TEST_API_KEY}"
endpoint_url = "{amp.base_url}"
[privacy]
consent_categories = ["analytics"]
events_without_consent = "drop"

[[sources]]
name = "us"
write_keys = ["wk-us"]
[sources.amplitude]
api_key = "{TEST_API_KEY}"
endpoint_url = "{amp.base_url}"
[sources.privacy]
consent_categories = []
honor_gpc = true
""")
    from edgeproxy.config import load_settings

    client = await aiohttp_client(create_app(load_settings(path, env={})))
    await send(client, ev("eu-absent", writeKey="wk-eu"))
    await send(client, ev("us-absent", writeKey="wk-us", anonymousId="anon-us"))
    await send(client, ev("us-gpc", writeKey="wk-us", anonymousId="anon-us"), headers={"Sec-GPC": "1"})
    await send(client, ev("eu-gpc", GRANTED, writeKey="wk-eu"), headers={"Sec-GPC": "1"})  # EU does not honour GPC
    await send(client, ev("sentinel", GRANTED, writeKey="wk-eu"))
    assert await delivered(amp, "sentinel") == {"us-absent", "eu-gpc", "sentinel"}
    text = await metrics(client)
    assert 'edgeproxy_events_withheld_total{reason="no_consent",source="default"} 1.0' in text
    assert 'edgeproxy_events_withheld_total{reason="gpc",source="us"} 1.0' in text


PREF_VALUES = [True, False, None, "yes"]


def random_message(rng, i: int) -> dict:
    """A message with random consent (none, or random values per category), type and user."""
    mtype = rng.choice(["track", "page", "screen", "identify"])
    body = {"type": mtype, "messageId": f"p-{i}", "anonymousId": f"anon-{rng.randrange(5):04d}",
            "context": {**AJS, "ip": "198.51.100.23"}, "timestamp": "2026-03-14T15:09:26.535Z"}
    if rng.random() < 0.5:
        body["userId"] = f"user-{rng.randrange(5):04d}"
    if mtype == "track":
        body["event"] = "Clicked"
    elif mtype in ("page", "screen"):
        body["name"] = "Home"
    else:
        body["traits"] = {"email": "x@example.com"}
    if rng.random() < 0.7:
        body["context"]["consent"] = {"categoryPreferences": {
            name: rng.choice(PREF_VALUES) for name in ("analytics", "functional", "advertising") if rng.random() < 0.8}}
    return body


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_property_no_event_without_the_required_consent_reaches_amplitude(tmp_path, aiohttp_client, amp, seed) -> None:
    import random

    rng = random.Random(seed)
    client = await aiohttp_client(app_with(tmp_path, amp, consent_categories=["analytics", "functional"],
                                           events_without_consent="anonymous", honor_gpc=True))
    sent: dict[str, tuple[dict, bool]] = {}
    for b in range(10):
        batch = [random_message(rng, b * 20 + j) for j in range(20)]
        gpc = rng.random() < 0.2
        resp = await client.post("/_e/v1/batch", data=orjson.dumps({"batch": batch, "writeKey": "wk"}),
                                 headers={"Sec-GPC": "1"} if gpc else {})
        assert resp.status == 200, await resp.text()
        sent.update({m["messageId"]: (m, gpc) for m in batch})
    await send(client, ev("sentinel", {"consent": {"categoryPreferences": {"analytics": True, "functional": True}}}))
    await delivered(amp, "sentinel")
    seen = 0
    for item in amp.ingested():
        mid = item.get("insert_id")
        if mid == "sentinel" or mid not in sent:
            continue
        msg, gpc = sent[mid]
        seen += 1
        prefs = msg["context"].get("consent", {}).get("categoryPreferences")
        assert not gpc, f"{mid} was sent with Sec-GPC: 1"
        if prefs is None:  # anonymous: only usage events, with nothing that identifies a person
            assert msg["type"] in ("track", "page", "screen") and "user_id" not in item and "ip" not in item
            assert item["device_id"] != msg["anonymousId"]
        else:
            assert prefs.get("analytics") is True and prefs.get("functional") is True, (mid, prefs)
    granted = sum(1 for m, g in sent.values() if not g and (m["context"].get("consent") or {}).get(
        "categoryPreferences", {}).get("analytics") is True and m["context"]["consent"]["categoryPreferences"].get(
        "functional") is True)
    assert seen >= granted > 0  # the granted ones did arrive (and some anonymous ones)
