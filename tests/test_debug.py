"""/debug: sessions, one session's events with delivery state, spool, access control."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import time

import orjson
import pytest
from redis_server import redis_server
from test_ingest import make_settings, track

from edgeproxy.app import create_app

TOKEN = "operator-token-123"


async def post_events(c, n=2, **extra):
    for i in range(n):
        resp = await c.post("/_e/v1/t", data=orjson.dumps(track(messageId=f"dbg-{i}", userId="user-42", **extra)))
        assert resp.status == 200


async def wait_delivered(c, device_id, n, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        data = await (await c.get(f"/debug/sessions/{device_id}?format=json")).json()
        if sum(1 for e in data["events"] if e["state"] == "delivered") >= n:
            return data
        await asyncio.sleep(0.05)
    raise AssertionError(f"events not delivered: {data}")


async def test_sink_mode_overview_session_and_me(tmp_path, aiohttp_client):
    # No Amplitude key: deliveries go to the local sink shown in /debug.
    c = await aiohttp_client(create_app(make_settings(tmp_path)))
    await post_events(c, 2)

    overview = await (await c.get("/debug", headers={"Accept": "application/json"})).json()
    [session] = overview["sessions"]
    assert session["device_id"] == "anon-0001-aaaa"
    assert session["user_id"] == "user-42"
    assert session["event_count"] == 2
    assert session["library"] == "analytics.js"
    assert set(overview["spool"]) >= {"depth", "in_flight", "retrying", "oldest_age_s"}

    data = await wait_delivered(c, "anon-0001-aaaa", 2)
    sent = [e["item"] for e in data["events"]]
    assert {e["insert_id"] for e in sent} == {"dbg-0", "dbg-1"}
    assert all(e["session_id"] == session["session_id"] for e in sent)

    overview = await (await c.get("/debug?format=json")).json()
    assert overview["sink"], "the local sink shows what would have been sent"

    me = await (await c.get("/debug/me?format=json")).json()
    assert me["device_id"] == "anon-0001-aaaa"
    assert me["session"]["session_id"] == session["session_id"]

    html = await (await c.get("/debug")).text()
    assert "anon-0001-aaaa" in html and "<table>" in html
    page = await (await c.get("/debug/sessions/anon-0001-aaaa")).text()
    assert "dbg-0" in page and "delivered" in page


async def test_pages_say_what_restarts_empty_and_read_as_an_operator_expects(tmp_path, aiohttp_client):
    c = await aiohttp_client(create_app(make_settings(tmp_path)))
    await post_events(c, 2)
    await wait_delivered(c, "anon-0001-aaaa", 2)
    overview = await (await c.get("/debug?format=json")).json()
    html = await (await c.get("/debug")).text()
    # After a restart the memory store and the sink are empty while the spool counts earlier runs: said.
    assert f"This process (pid {os.getpid()} on " in html and " started " in html  # which one, behind nginx
    assert overview["process"]["pid"] == os.getpid() and overview["process"]["host"]
    assert "the memory session store starts empty on each start; visitors&#x27; sessions continue from their cookies" in html
    assert "the sink starts empty on each start, while the spool's delivered count includes earlier runs" in html
    assert overview["process"]["session_store"] == "memory" and overview["process"]["sink_size"] > 0
    # Counters are counts: integers in the JSON twin and on the page, not 2.0.
    delivered = {k: v for k, v in overview["counters"].items() if k.startswith("edgeproxy_delivered_items_total")}
    assert delivered and all(type(v) is int for v in delivered.values()), delivered
    assert re.search(r"<td>edgeproxy_events_accepted_total\{[^<]*\}</td><td>2</td>", html), html
    assert ".0</td>" not in html.split("<h2>Counters</h2>")[1]
    # Key/value tables have no empty header row.
    assert "<th></th>" not in html
    # The session page is titled by the session and shows the raw epoch-ms id Amplitude users search for.
    session_id = overview["sessions"][0]["session_id"]
    page = await (await c.get("/debug/sessions/anon-0001-aaaa")).text()
    assert f"<title>session {session_id} of device anon-0001-aaaa</title>" in page
    assert re.search(rf"<td>session_id</td><td><code>{session_id}</code> \d{{4}}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{{3}}Z</td>", page), page
    assert "<th></th>" not in page
    unknown = await (await c.get("/debug/sessions/nobody-here")).text()
    assert "<title>device nobody-here</title>" in unknown


async def test_search_by_user_or_device(tmp_path, aiohttp_client):
    c = await aiohttp_client(create_app(make_settings(tmp_path)))
    await post_events(c, 1)
    hit = await (await c.get("/debug?format=json&q=user-42")).json()
    miss = await (await c.get("/debug?format=json&q=nobody")).json()
    assert len(hit["sessions"]) == 1 and miss["sessions"] == []


async def test_html_escapes_event_content(tmp_path, aiohttp_client):
    c = await aiohttp_client(create_app(make_settings(tmp_path)))
    await post_events(c, 1, event="<script>alert(1)</script>")
    await wait_delivered(c, "anon-0001-aaaa", 1)
    page = await (await c.get("/debug/sessions/anon-0001-aaaa")).text()
    assert "<script>alert(1)</script>" not in page
    assert "&lt;script&gt;" in page


async def test_token_required_when_configured(tmp_path, aiohttp_client):
    c = await aiohttp_client(create_app(make_settings(tmp_path, debug__token=TOKEN)))
    assert (await c.get("/debug?format=json")).status == 401
    assert (await c.get("/debug?format=json", headers={"Authorization": "Bearer wrong"})).status == 401
    ok = await c.get("/debug?format=json", headers={"Authorization": f"Bearer {TOKEN}"})
    assert ok.status == 200
    # Browser flow: redirected to the login form, which sets a signed cookie.
    resp = await c.get("/debug", allow_redirects=False)
    assert resp.status == 303 and resp.headers["Location"].endswith("/debug/login")
    bad = await c.post("/debug/login", data={"token": "nope"}, allow_redirects=False)
    assert bad.status == 401
    login = await c.post("/debug/login", data={"token": TOKEN}, allow_redirects=False)
    assert login.status == 303
    assert (await c.get("/debug?format=json")).status == 200


async def test_forged_login_cookie_is_refused(tmp_path, aiohttp_client):
    c = await aiohttp_client(create_app(make_settings(tmp_path, debug__token=TOKEN)))
    c.session.cookie_jar.update_cookies({"_ep_debug": "operator.forged.signature"})
    assert (await c.get("/debug?format=json")).status == 401


def test_a_refused_login_cookie_leaves_no_reference_cycle(tmp_path) -> None:
    """The login cookie is checked by itsdangerous, which leaves a reference cycle behind a
    refused value unless the view clears it: a stream of forged cookies must not feed the
    cycle collector (see ``forget_refusal``)."""
    import gc

    from aiohttp.test_utils import make_mocked_request

    from edgeproxy.edge.debug import DebugViews

    views = DebugViews(make_settings(tmp_path, debug__token=TOKEN), ["k" * 32], store=None, spool=None, identity=None,
                       sink=None, counters=dict)
    requests = [make_mocked_request("GET", "/debug", headers={"Cookie": f"_ep_debug={value}"})
                for value in ("operator.forged.signature", "b3BlcmF0b3I.awSTEQ.zzBYZXNM9R6uXrb8XAc5k517yyE")]
    gc.collect()
    gc.disable()
    try:
        assert not any(views.allowed(r) for r in requests * 5)
        unreachable = gc.collect()
    finally:
        gc.enable()
    assert unreachable == 0


async def test_loopback_only_without_token(tmp_path, aiohttp_client):
    # Behind a trusted proxy the client IP comes from X-Forwarded-For: a remote visitor is refused.
    c = await aiohttp_client(create_app(make_settings(tmp_path, server__trusted_proxies=["127.0.0.1"])))
    far = await c.get("/debug?format=json", headers={"X-Forwarded-For": "203.0.113.9"})
    assert far.status == 403
    near = await c.get("/debug?format=json")
    assert near.status == 200


async def test_me_without_cookie(tmp_path, aiohttp_client):
    c = await aiohttp_client(create_app(make_settings(tmp_path)))
    data = await (await c.get("/debug/me?format=json")).json()
    assert data["device_id"] is None


@pytest.mark.parametrize("backend", ["sqlite", "redis"])
async def test_overview_shows_in_flight_retrying_dead_letters_and_upstream_answers(tmp_path, aiohttp_client, amp, backend):
    from fake_amplitude import TEST_API_KEY

    # Redis: a server of its own, since the app's queue uses the default key prefix.
    with redis_server(tmp_path) if backend == "redis" else contextlib.nullcontext("") as queue_url:
        settings = make_settings(tmp_path, amplitude__api_key=TEST_API_KEY, amplitude__endpoint_url=amp.base_url,
                                 delivery__retry_base=3600.0, delivery__retry_max=3600.0, delivery__queue=queue_url)
        c = await aiohttp_client(create_app(settings))
        await _overview_scenario(c, amp)
        await c.close()  # while Redis is still up: the worker stops cleanly


async def _overview_scenario(c, amp) -> None:
    """A dead letter, then an event in flight, then waiting for a retry: each in its /debug section."""

    async def overview() -> dict:
        return await (await c.get("/debug?format=json")).json()

    async def until(check, what: str) -> dict:
        for _ in range(200):  # bounded: 10 s
            data = await overview()
            if check(data):
                return data
            await asyncio.sleep(0.05)
        raise AssertionError(f"timed out waiting for {what}: {data}")

    # A request-level 400: the event is dead-lettered with Amplitude's reason.
    amp.fail_next(400, body={"code": 400, "error": "Invalid JSON request body"})
    dead_resp = await c.post("/_e/v1/t", data=orjson.dumps(track(messageId="dbg-dead", userId="user-42")))
    assert dead_resp.status == 200
    await until(lambda d: d["dead_letters"], "the dead letter")
    # Amplitude holds the request, then answers 503: the event is in flight (for as long as
    # the test looks, however loaded the machine), then waiting to be retried.
    amp.fail_next(503)
    amp.hold()
    resp = await c.post("/_e/v1/t", data=orjson.dumps(track(messageId="dbg-slow", userId="user-42")))
    assert resp.status == 200
    flying = await until(lambda d: d["in_flight"], "the event in flight")
    assert [e["message_id"] for e in flying["in_flight"]] == ["dbg-slow"]
    html_flying = await (await c.get("/debug")).text()
    amp.release()
    # The overview's sections are read one after another (for Redis not atomically), so the
    # settle may land between them: wait for an overview read wholly after it.
    data = await until(lambda d: d["retrying"] and not d["in_flight"] and d["spool"]["retrying"] == 1,
                       "the event to be retrying")

    [retrying] = data["retrying"]
    assert retrying["message_id"] == "dbg-slow" and retrying["attempts"] == 1
    assert retrying["next_attempt_ms"] > time.time() * 1000 and retrying["last_error"] == "Service Unavailable"
    assert data["spool"]["retrying"] == 1 and data["in_flight"] == []
    [dead] = data["dead_letters"]
    assert dead["message_id"] == "dbg-dead" and dead["reason_code"] == "request_rejected"
    assert data["dead_by_reason"] == {"request_rejected": 1}
    assert [(r["status"], r["items"]) for r in data["recent_responses"]] == [(503, 1), (400, 1)]
    assert "Invalid JSON request body" in data["recent_responses"][1]["body"]

    html = await (await c.get("/debug")).text()
    for heading in ("In flight", "Retrying", "Recent upstream responses", "Dead letters"):
        assert f"<h2>{heading}</h2>" in html
    assert "dbg-slow" in html_flying.split("<h2>In flight</h2>")[1].split("<h2>Retrying</h2>")[0]
    retrying_section = html.split("<h2>Retrying</h2>")[1].split("<h2>Recent upstream responses</h2>")[0]
    assert "dbg-slow" in retrying_section and "Service Unavailable" in retrying_section
    dead_section = html.split("<h2>Dead letters</h2>")[1]
    assert "dbg-dead" in dead_section and "request_rejected" in dead_section
    assert "Invalid JSON request body" in html.split("<h2>Recent upstream responses</h2>")[1]
