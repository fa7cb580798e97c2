"""The identity service as the edge uses it: device id resolution, sessions, stamping, cookies."""

from __future__ import annotations

import asyncio
import copy
import uuid
from datetime import datetime, timezone

import pytest
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as hst

from edgeproxy.config import Settings
from edgeproxy.identity.cookies import CookieCodec
from edgeproxy.identity.service import DEVICE_COOKIE_REFRESH_MS, CookieIdentity, IdentityService, event_time_ms
from edgeproxy.identity.store import MemorySessionStore

T0 = 1_780_000_000_000
MIN = 60_000
KEY = "k" * 32


def iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def make_settings(**sessions) -> Settings:
    s = Settings()
    for k, v in sessions.items():
        setattr(s.sessions, k, v)
    return s


def make_service(store=None, keys=(KEY,), **sessions) -> IdentityService:
    s = make_settings(**sessions)
    store = store or MemorySessionStore(timeout_ms=int(s.sessions.timeout * 1000), clock=lambda: T0 / 1000)
    return IdentityService(s, store, list(keys), clock=lambda: T0 / 1000)


def web(t=T0, anon="anon-1", session=None, device=None, user=None, library="analytics.js", **extra) -> dict:
    m = {"type": "track", "event": "E", "timestamp": iso(t), "context": {"library": {"name": library, "version": "next-1.84.3"}}}
    if anon is not None:
        m["anonymousId"] = anon
    if user is not None:
        m["userId"] = user
    if device is not None:
        m["context"]["device"] = {"id": device}
    if session is not None:
        m["integrations"] = {"Actions Amplitude": {"session_id": session}}
    m.update(extra)
    return m


def mobile(t=T0, **kw) -> dict:
    return web(t, library="analytics-kotlin", **kw)


def stamped(m: dict):
    return m.get("integrations", {}).get("Actions Amplitude", {}).get("session_id")


def cookies_of(service: IdentityService, jar: CookieIdentity, now_ms: int) -> dict[str, str]:
    return {c.name: c.value for c in service.response_cookies(jar, now_ms)}


@pytest.fixture
def service():
    return make_service()


# --- device id resolution (web) ------------------------------------------------------------


async def test_context_device_id_wins_and_is_never_changed(service):
    jar = service.read_cookies(cookies_of(service, CookieIdentity(device_id="edge-1"), T0))
    m = web(device="ios-like-id", anon="anon-1")
    before = copy.deepcopy(m["context"])
    r = await service.process(m, jar, T0)
    assert r.device_id == "ios-like-id" and r.web
    assert m["context"] == before
    assert jar.device_id == "edge-1"  # the cookie keeps the edge id


async def test_cookie_edge_id_beats_anonymous_id(service):
    jar = service.read_cookies(cookies_of(service, CookieIdentity(device_id="edge-1"), T0))
    assert jar.has_edge_cookies and jar.device_id == "edge-1"
    r = await service.process(web(anon="anon-new"), jar, T0)
    assert r.device_id == "edge-1"


async def test_new_browser_adopts_anonymous_id(service):
    jar = service.read_cookies({})
    r = await service.process(web(anon="anon-1"), jar, T0)
    assert r.device_id == "anon-1" and jar.device_id == "anon-1"
    assert service.read_cookies(cookies_of(service, jar, T0)).device_id == "anon-1"


async def test_no_ids_at_all_gives_a_new_uuid4(service):
    jar = CookieIdentity()
    m = web(anon=None)
    r = await service.process(m, jar, T0)
    assert uuid.UUID(r.device_id).version == 4
    assert jar.device_id == r.device_id
    assert "context" in m and "device" not in m["context"]  # device id handed over, not written


@pytest.mark.parametrize("anon", ["", "   ", 42, "x" * 201, "a\nb"])
async def test_unusable_anonymous_id_is_not_adopted(service, anon):
    jar = CookieIdentity()
    r = await service.process(web(anon=anon), jar, T0)
    assert uuid.UUID(r.device_id).version == 4


@pytest.mark.parametrize("device", ["", "  ", None])
async def test_blank_context_device_id_falls_through(service, device):
    m = web(anon="anon-1")
    m["context"]["device"] = {"id": device}
    r = await service.process(m, CookieIdentity(), T0)
    assert r.device_id == "anon-1"


async def test_id_stays_when_safari_wipes_the_anonymous_id(service):
    jar = CookieIdentity()
    await service.process(web(anon="anon-week-1"), jar, T0)
    cookies = cookies_of(service, jar, T0)
    later = T0 + 8 * 86_400_000
    jar2 = make_service().read_cookies(cookies)
    r = await service.process(web(t=later, anon="anon-week-2"), jar2, later)
    assert r.device_id == "anon-week-1"


async def test_batch_messages_share_the_jar(service):
    jar = CookieIdentity()
    r1 = await service.process(web(anon=None), jar, T0)
    r2 = await service.process(web(t=T0 + 1, anon=None), jar, T0 + 1)
    assert r1.device_id == r2.device_id
    assert r1.session.session_id == r2.session.session_id and r2.session.event_count == 2


# --- web vs non-web -----------------------------------------------------------------------------


async def test_mobile_event_with_the_proxy_cookie_is_web(service):
    jar = service.read_cookies(cookies_of(service, CookieIdentity(device_id="edge-1"), T0))
    m = mobile(anon="a")
    r = await service.process(m, jar, T0)
    assert r.web and r.device_id == "edge-1" and stamped(m) == T0


async def test_garbled_proxy_cookie_does_not_make_an_event_web(service):
    jar = service.read_cookies({"_ep_did": "garbage", "_ep_sess": "x.y.z"})
    assert jar == CookieIdentity()
    r = await service.process(mobile(anon="a"), jar, T0)
    assert not r.web and r.device_id is None


async def test_mobile_event_is_left_alone(service):
    m = mobile(anon="a", device="android-1", session=T0 - 5 * MIN)
    before = copy.deepcopy(m)
    r = await service.process(m, CookieIdentity(), T0)
    assert (r.device_id, r.session, r.started, r.mismatch, r.web) == (None, None, False, False, False)
    assert m == before
    assert await service.store.get("android-1") is None


@pytest.mark.parametrize("value", [-1, "-1", "garbage", 0])
async def test_non_web_session_values_are_kept_even_with_stamping_on(value):
    service = make_service(stamp_non_web=True)
    m = mobile(session=value)
    r = await service.process(m, CookieIdentity(), T0)
    assert stamped(m) == value and r.session is None


async def test_non_web_without_session_is_not_stamped_by_default(service):
    m = mobile(device="android-1")
    await service.process(m, CookieIdentity(), T0)
    assert "integrations" not in m


async def test_non_web_stamping_keyed_by_device_then_anonymous_id():
    service = make_service(stamp_non_web=True)
    m1 = mobile(device="android-1", anon="a1")
    r1 = await service.process(m1, CookieIdentity(), T0)
    assert stamped(m1) == T0 and r1.started and r1.device_id is None and not r1.web
    assert (await service.store.get("android-1")).session_id == T0
    m2 = {"type": "track", "event": "S", "anonymousId": "server-anon", "timestamp": iso(T0 + 5)}
    await service.process(m2, CookieIdentity(), T0 + 5)
    assert stamped(m2) == T0 + 5 and await service.store.get("server-anon") is not None
    m3 = {"type": "track", "event": "S", "userId": "only-user"}
    r3 = await service.process(m3, CookieIdentity(), T0)
    assert r3.session is None and "integrations" not in m3


async def test_stamped_backend_event_joins_the_browser_session():
    service = make_service(stamp_non_web=True)
    await service.process(web(t=T0, anon="anon-1"), CookieIdentity(), T0)
    backend = {"type": "track", "event": "Order Shipped", "anonymousId": "anon-1", "timestamp": iso(T0 + 5 * MIN),
               "context": {"library": {"name": "analytics-node"}}}
    r = await service.process(backend, CookieIdentity(), T0 + 5 * MIN)
    assert not r.web and not r.started and stamped(backend) == T0 and r.session.event_count == 2


# --- sessions and stamping (web) -------------------------------------------------------------------


async def test_web_event_gets_the_server_session_id(service):
    m = web()
    r = await service.process(m, CookieIdentity(), T0)
    assert stamped(m) == T0 and r.started and not r.mismatch


async def test_plugin_session_id_is_adopted_for_a_new_device(service):
    m = web(t=T0 + 3 * MIN, session=T0)
    r = await service.process(m, CookieIdentity(), T0 + 3 * MIN)
    assert r.session.session_id == T0 and stamped(m) == T0 and not r.mismatch


async def test_a_different_client_session_id_is_replaced_and_counted(service):
    jar = CookieIdentity()
    await service.process(web(), jar, T0)
    m = web(t=T0 + MIN, session=str(T0 + 30))
    r = await service.process(m, jar, T0 + MIN)
    assert r.mismatch and stamped(m) == T0 and r.session.session_id == T0


async def test_a_digit_string_equal_to_the_server_id_is_no_mismatch(service):
    jar = CookieIdentity()
    await service.process(web(), jar, T0)
    m = web(t=T0 + 1, session=str(T0))
    r = await service.process(m, jar, T0 + 1)
    assert not r.mismatch and stamped(m) == T0


async def test_web_minus_one_is_replaced_without_mismatch_and_not_adopted(service):
    m = web(session=-1)
    r = await service.process(m, CookieIdentity(), T0)
    assert stamped(m) == T0 and not r.mismatch


async def test_opt_outs_are_respected_but_the_session_is_touched(service):
    jar = CookieIdentity()
    m = web(integrations={"Actions Amplitude": False})
    r = await service.process(m, jar, T0)
    assert m["integrations"] == {"Actions Amplitude": False} and r.session.event_count == 1
    m2 = web(t=T0 + 1, integrations={"All": False})
    r2 = await service.process(m2, jar, T0 + 1)
    assert m2["integrations"] == {"All": False} and r2.session.event_count == 2


async def test_other_integration_keys_survive_stamping(service):
    m = web(t=T0 + 10, integrations={"Mixpanel": False, "Actions Amplitude": {"session_id": T0 + 9, "x": 1}})
    await service.process(m, CookieIdentity(), T0 + 10)
    assert m["integrations"] == {"Mixpanel": False, "Actions Amplitude": {"session_id": T0 + 9, "x": 1}}


async def test_idle_timeout_starts_a_new_session_and_late_events_do_not(service):
    jar = CookieIdentity()
    await service.process(web(t=T0), jar, T0)
    r = await service.process(web(t=T0 + 30 * MIN), jar, T0 + 30 * MIN)
    assert not r.started and r.session.session_id == T0
    late = web(t=T0 - 120 * MIN)
    r = await service.process(late, jar, T0 + 30 * MIN)
    assert not r.started and stamped(late) == T0
    r = await service.process(web(t=T0 + 60 * MIN + 1), jar, T0 + 60 * MIN + 1)
    assert r.started and r.session.session_id == T0 + 60 * MIN + 1 and r.session.event_count == 1


async def test_configured_timeout_applies():
    service = make_service(timeout=300.0)
    jar = CookieIdentity()
    await service.process(web(t=T0), jar, T0)
    r = await service.process(web(t=T0 + 5 * MIN + 1), jar, T0 + 5 * MIN + 1)
    assert r.started


async def test_store_records_user_library_and_agent(service):
    m = web(user="user-7")
    m["context"]["userAgent"] = "Mozilla/5.0 Test"
    await service.process(m, CookieIdentity(), T0)
    s = await service.store.get("anon-1")
    assert (s.user_id, s.library, s.user_agent) == ("user-7", "analytics.js", "Mozilla/5.0 Test")


@pytest.mark.parametrize(
    "message",
    [
        {"type": "track", "context": "x", "integrations": 5, "anonymousId": ["a"], "timestamp": 7},
        {"type": "track", "context": {"library": {"name": "analytics.js"}, "device": "x"}, "userId": {"a": 1}},
        {"type": "page", "context": {"library": {"name": "analytics.js"}, "device": {"id": 5}}, "integrations": {"Actions Amplitude": "s"}},
    ],
)
async def test_hostile_shapes_never_raise(service, message):
    r = await service.process(message, CookieIdentity(), T0)
    assert r.web == (message["context"] != "x")


# --- event time ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "timestamp, expected",
    [
        (iso(T0 - 5000), T0 - 5000),
        ("2026-05-28T20:26:39.500+02:00", 1_779_992_799_500),
        ("2026-05-28T18:26:39.500", 1_779_992_799_500),  # naive: UTC
        (iso(T0 + 5000), T0),  # after it was received: clamped
        ("1999-01-01T00:00:00Z", T0),  # not a plausible clock
        ("yesterday", T0), (None, T0), (1234, T0), ("9" * 100, T0), ("0001-01-01T00:00:00+14:00", T0),
    ],
)
def test_event_time(timestamp, expected):
    m = {} if timestamp is None else {"timestamp": timestamp}
    assert event_time_ms(m, T0) == expected


# --- cookies out ---------------------------------------------------------------------------------------


async def test_response_cookies_carry_device_session_and_readable_pair(service):
    jar = CookieIdentity()
    await service.process(web(t=T0 - MIN), jar, T0)
    await service.process(web(t=T0), jar, T0)
    out = {c.name: c for c in service.response_cookies(jar, T0)}
    assert set(out) == {"_ep_did", "_ep_sess", "analytics_session_id", "analytics_session_id.last_access"}
    assert out["_ep_did"].http_only and out["_ep_sess"].http_only
    assert not out["analytics_session_id"].http_only and out["analytics_session_id"].value == str(T0 - MIN)
    assert out["analytics_session_id.last_access"].value == str(T0)
    back = service.read_cookies({k: c.value for k, c in out.items()})
    assert back.device_id == "anon-1" and back.session.session_id == T0 - MIN and back.session.event_count == 2


async def test_no_cookies_for_a_request_without_web_identity(service):
    jar = CookieIdentity()
    await service.process(mobile(), jar, T0)
    assert service.response_cookies(jar, T0) == []


async def test_a_finished_session_keeps_only_its_signed_cookie(service):
    """The page must not stamp a finished session's id, but a restarted process must still
    know it, so a late event of that session (an offline queue flushed) does not start it again."""
    jar = CookieIdentity()
    await service.process(web(t=T0), jar, T0)
    cookies = {c.name: c.value for c in service.response_cookies(jar, T0 + 31 * MIN)}
    assert sorted(cookies) == ["_ep_did", "_ep_sess"]
    restarted = make_service()
    late = await restarted.process(web(t=T0 + 1000), restarted.read_cookies(cookies), T0 + 31 * MIN)
    assert late.session.session_id == T0 and not late.started


async def test_cookie_domain_and_plain_http_reach_every_cookie():
    service = make_service(cookie_domain="example.com", secure_cookies=False)
    jar = CookieIdentity()
    await service.process(web(), jar, T0)
    specs = service.response_cookies(jar, T0)
    assert len(specs) == 4 and all(c.domain == "example.com" and not c.secure and c.same_site == "Lax" for c in specs)


async def test_session_cookie_of_another_device_is_ignored(service):
    jar_a, jar_b = CookieIdentity(), CookieIdentity()
    await service.process(web(anon="a"), jar_a, T0)
    await service.process(web(anon="b"), jar_b, T0)
    mixed = {"_ep_did": cookies_of(service, jar_a, T0)["_ep_did"], "_ep_sess": cookies_of(service, jar_b, T0)["_ep_sess"]}
    back = service.read_cookies(mixed)
    assert back.device_id == "a" and back.session is None


async def test_page_cookie_is_provisional_until_the_first_event_adopts_anonymous_id(service):
    page_jar = service.read_cookies({})
    [spec] = service.page_cookies(page_jar, T0)
    assert spec.name == "_ep_did" and spec.http_only
    jar = service.read_cookies({spec.name: spec.value})
    assert jar.provisional and jar.has_edge_cookies
    r = await service.process(web(anon="anon-from-ajs"), jar, T0)
    assert r.device_id == "anon-from-ajs"
    back = service.read_cookies(cookies_of(service, jar, T0))
    assert back.device_id == "anon-from-ajs" and not back.provisional


async def test_provisional_page_id_is_kept_when_the_event_has_no_anonymous_id(service):
    jar = CookieIdentity()
    service.page_cookies(jar, T0)
    page_id = jar.device_id
    jar = service.read_cookies(cookies_of(service, jar, T0))
    r = await service.process(web(anon=None), jar, T0)
    assert r.device_id == page_id and not jar.provisional


async def test_page_cookie_keeps_an_existing_id_and_touches_no_session(service):
    jar = service.read_cookies(cookies_of(service, CookieIdentity(device_id="edge-1"), T0))
    assert service.page_cookies(jar, T0) == []  # fresh and unchanged: nothing to re-send
    [spec] = service.page_cookies(jar, T0 + DEVICE_COOKIE_REFRESH_MS)  # a day on: renewed, same id
    assert service.read_cookies({spec.name: spec.value}).device_id == "edge-1"
    assert not service.read_cookies({spec.name: spec.value}).provisional
    assert await service.store.list_sessions() == []


async def test_an_unchanged_device_cookie_is_re_sent_only_once_a_day(service):
    """Each response re-signed the device cookie before; now only when it changed or aged."""
    jar = service.read_cookies(cookies_of(service, CookieIdentity(device_id="edge-1"), T0))
    await service.process(web(anon="edge-1"), jar, T0)
    names = [c.name for c in service.response_cookies(jar, T0 + 1000)]
    assert "_ep_did" not in names and "_ep_sess" in names  # the session cookie changes every event
    day_later = [c for c in service.response_cookies(jar, T0 + DEVICE_COOKIE_REFRESH_MS) if c.name == "_ep_did"]
    assert len(day_later) == 1 and service.read_cookies({"_ep_did": day_later[0].value}).device_id == "edge-1"
    provisional = service.read_cookies(cookies_of(service, CookieIdentity(device_id="page-1", provisional=True), T0))
    await service.process(web(anon="anon-9"), provisional, T0)  # the first event's anonymousId replaces it
    [changed] = [c for c in service.response_cookies(provisional, T0) if c.name == "_ep_did"]
    assert service.read_cookies({"_ep_did": changed.value}).device_id == "anon-9"


async def test_sessions_share_one_copy_of_each_user_agent(service):
    """Stored sessions keep the user agent; equal strings from different requests become one object."""
    ua = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0 Safari/537.36"
    states = []
    for i in range(3):
        m = web(anon=f"anon-{i}")
        m["context"]["userAgent"] = "".join(ua)  # a new, equal string per request, as parsed from JSON
        states.append((await service.process(m, CookieIdentity(), T0)).session)
    assert states[0].user_agent == ua
    assert states[0].user_agent is states[1].user_agent is states[2].user_agent
    assert states[0].library is states[2].library


# --- restarts, replicas and concurrency ---------------------------------------------------------------------


async def test_restart_with_an_empty_store_keeps_the_session():
    first = make_service()
    jar = CookieIdentity()
    for i in range(3):
        await first.process(web(t=T0 + i * MIN), jar, T0 + i * MIN)
    cookies = cookies_of(first, jar, T0 + 2 * MIN)
    restarted = make_service()  # new store, same keys
    jar2 = restarted.read_cookies(cookies)
    m = web(t=T0 + 10 * MIN)
    r = await restarted.process(m, jar2, T0 + 10 * MIN)
    assert not r.started and stamped(m) == T0 and r.session.event_count == 4 and r.session.first_seen == T0


async def test_restart_after_the_timeout_starts_a_new_session():
    first = make_service()
    jar = CookieIdentity()
    await first.process(web(t=T0), jar, T0)
    jar2 = make_service().read_cookies(cookies_of(first, jar, T0))
    r = await make_service().process(web(t=T0 + 31 * MIN), jar2, T0 + 31 * MIN)
    assert r.started and r.session.session_id == T0 + 31 * MIN and r.session.first_seen == T0


async def test_rotated_signing_key_keeps_visitors_and_a_lost_key_does_not():
    first = make_service(keys=["old" * 8])
    jar = CookieIdentity()
    await first.process(web(anon="anon-1"), jar, T0)
    cookies = cookies_of(first, jar, T0)
    rotated = make_service(keys=["new" * 8, "old" * 8])
    assert rotated.read_cookies(cookies).device_id == "anon-1"
    assert make_service(keys=["new" * 8]).read_cookies(cookies) == CookieIdentity()


async def test_an_old_session_cookie_replayed_does_not_move_the_session_back(service):
    jar = CookieIdentity()
    await service.process(web(t=T0), jar, T0)
    old_cookies = cookies_of(service, jar, T0)
    await service.process(web(t=T0 + 40 * MIN), jar, T0 + 40 * MIN)  # new session
    replay = service.read_cookies(old_cookies)
    r = await service.process(web(t=T0 + 41 * MIN), replay, T0 + 41 * MIN)
    assert r.session.session_id == T0 + 40 * MIN


async def test_concurrent_events_for_one_new_device_share_one_session(service):
    jar = service.read_cookies({})
    messages = [web(t=T0 + i, session=T0 - 1000 + i) for i in range(50)]  # competing plugin ids too
    results = await asyncio.gather(*(service.process(m, jar, T0 + 60) for m in messages))
    ids = {r.session.session_id for r in results}
    assert len(ids) == 1 and {stamped(m) for m in messages} == ids
    assert sum(r.started for r in results) == 1
    assert (await service.store.get("anon-1")).event_count == 50
    assert jar.session.event_count == 50


async def test_concurrent_requests_with_separate_jars_share_one_session(service):
    jars = [service.read_cookies({}) for _ in range(30)]
    results = await asyncio.gather(*(service.process(web(t=T0 + i), jar, T0 + 60) for i, jar in enumerate(jars)))
    assert len({r.session.session_id for r in results}) == 1
    assert len({r.device_id for r in results}) == 1


def test_codec_uses_the_configured_max_age():
    service = make_service(device_cookie_max_age=60.0)
    value = CookieCodec([KEY], max_age_s=10**9, clock=lambda: T0 / 1000 - 120).dump_device("d")
    assert service.read_cookies({"_ep_did": value}) == CookieIdentity()


# --- a property over whole visits -----------------------------------------------------------------------


@hsettings(max_examples=60, deadline=None)
@given(hst.lists(hst.tuples(hst.integers(0, 90 * MIN), hst.integers(-60 * MIN, 10 * MIN), hst.booleans()), min_size=1, max_size=25))
def test_any_visit_stamps_consistent_never_future_sessions(steps):
    """Arrivals at increasing receive times, each event skewed back or (wrongly) forward,
    some served by a restarted process (empty store, same cookies)."""

    async def run():
        service = make_service()
        cookies: dict[str, str] = {}
        now, ids, starts = T0, [], 0
        for gap, skew, restart in steps:
            now += gap
            if restart:
                service = make_service()
            jar = service.read_cookies(cookies)
            m = web(t=now + skew)
            r = await service.process(m, jar, now)
            cookies = {**cookies, **cookies_of(service, jar, now)}  # a browser keeps what is not re-sent
            assert stamped(m) == r.session.session_id <= min(now, r.session.last_event_ms)
            assert r.device_id == "anon-1"
            starts += r.started
            ids.append(r.session.session_id)
        assert ids == sorted(ids)  # sessions only move forward
        assert starts == len(set(ids))  # a restart never splits a session

    asyncio.run(run())


async def test_from_settings_keeps_cookies_valid_across_restarts(tmp_path):
    s = make_settings()
    s.delivery.data_dir = str(tmp_path)
    first = IdentityService.from_settings(s)
    jar = CookieIdentity()
    await first.process(web(anon="anon-1"), jar, T0)
    cookies = {c.name: c.value for c in first.response_cookies(jar, T0)}
    assert (tmp_path / "signing.key").exists()
    assert IdentityService.from_settings(s).read_cookies(cookies).device_id == "anon-1"
