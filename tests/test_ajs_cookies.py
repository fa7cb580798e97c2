"""analytics.js's identity cookies (ajs_anonymous_id, ajs_user_id) set by the edge: the value
rules and format (pure), on HTML pages and tracking responses, and ``/reset``."""

from __future__ import annotations

from http.cookies import SimpleCookie

import aiohttp
import orjson
import pytest
from aiohttp import web
from test_ingest import make_settings, track

from edgeproxy.app import IDENTITY, create_app
from edgeproxy.config import ConfigError, load_settings
from edgeproxy.identity import ajs

UUID = "0f8fad5b-d9cb-469f-a165-70867728950e"
FOUR_HUNDRED_DAYS = 400 * 86400


# ---------------------------------------------------------------------------------------------
# Format and rules.


@pytest.mark.parametrize("value, written", [
    (UUID, UUID),
    ("user@example.com", "user@example.com"),  # js-cookie keeps @ (and # $ & + / : < = > ? [ ] ^ ` { | })
    ("a b,c;d\"e", "a%20b%2Cc%3Bd%22e"),  # what a cookie value cannot hold is percent-encoded
    ("josé", "jos%C3%A9"),
])
def test_values_are_written_as_analytics_js_writes_them(value, written) -> None:
    assert ajs.encode(value) == written
    assert ajs.decode(written) == value


@pytest.mark.parametrize("raw, read", [
    (UUID, UUID),
    (f"%22{UUID}%22", UUID),  # analytics.js classic wrote JSON strings; analytics.js still reads them
    (f'"{UUID}"', UUID),
    ("%22%22", None),
    ("", None),
    (None, None),
])
def test_values_are_read_as_analytics_js_reads_them(raw, read) -> None:
    assert ajs.decode(raw) == read


def test_a_browser_id_that_cannot_be_a_device_id_is_ignored() -> None:
    assert ajs.browser_anonymous_id({"ajs_anonymous_id": "bad%0Aid"}) is None
    assert ajs.browser_anonymous_id({"ajs_anonymous_id": "x" * 2000}) is None
    assert ajs.browser_anonymous_id({"ajs_anonymous_id": f"%22{UUID}%22"}) == UUID


def test_the_page_value_is_the_browsers_own_else_the_device_id() -> None:
    assert ajs.page_anonymous_id("from-browser", "device-1") == "from-browser"
    assert ajs.page_anonymous_id(None, "device-1") == "device-1"


def test_config_keys(tmp_path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[sessions]\najs_cookies = false\najs_cookie_max_age = "30d"\n')
    s = load_settings(path, env={})
    assert s.sessions.ajs_cookies is False and s.sessions.ajs_cookie_max_age == 30 * 86400
    path.write_text('[sessions]\najs_cookie_max_age = 0\n')
    with pytest.raises(ConfigError) as err:
        load_settings(path, env={})
    assert any(p.startswith("sessions.ajs_cookie_max_age: must be positive") for p in err.value.problems)


# ---------------------------------------------------------------------------------------------
# Over HTTP, through the real app (the demo site serves the HTML page).


def set_cookies(resp) -> dict[str, SimpleCookie]:
    """Each Set-Cookie of a response, by name, with its attributes."""
    out = {}
    for header in resp.headers.getall("Set-Cookie", []):
        jar = SimpleCookie()
        jar.load(header)
        for name, morsel in jar.items():
            out[name] = morsel
    return out


@pytest.fixture
async def client(tmp_path, aiohttp_client):
    async def make(**overrides):
        app = create_app(make_settings(tmp_path, sessions__cookie_domain="example.test", **overrides))
        return await aiohttp_client(app, cookie_jar=aiohttp.DummyCookieJar())  # each request says its cookies
    return make


def device_of(client, value: str) -> tuple[str, bool]:
    return client.server.app[IDENTITY].codec.load_device(value)


async def test_a_new_browser_gets_ajs_anonymous_id_equal_to_its_device_id(client) -> None:
    c = await client()
    resp = await c.get("/")
    cookies = set_cookies(resp)
    anon = cookies["ajs_anonymous_id"]
    device_id, provisional = device_of(c, cookies["_ep_did"].value)
    assert anon.value == device_id and provisional
    assert anon["httponly"] == "" and anon["max-age"] == str(FOUR_HUNDRED_DAYS)
    assert anon["domain"] == "example.test" and anon["path"] == "/" and anon["samesite"] == "Lax"
    assert "ajs_user_id" not in cookies  # no user known yet


async def test_the_browsers_anonymous_id_is_kept_and_becomes_the_device_id(client) -> None:
    """A visitor known before edgeproxy: analytics.js's id stays, and the edge adopts it."""
    c = await client()
    resp = await c.get("/", headers={"Cookie": f"ajs_anonymous_id=%22{UUID}%22; ajs_user_id=user%40x"})
    cookies = set_cookies(resp)
    assert cookies["ajs_anonymous_id"].value == UUID
    assert cookies["ajs_user_id"].value == "user@x"
    assert device_of(c, cookies["_ep_did"].value) == (UUID, True)


async def test_a_device_cookie_and_a_different_browser_id_keep_both(client) -> None:
    """Never replaced on a page: the browser keeps its anonymousId, the edge its device id
    (events then follow SPEC section 3: the device cookie wins)."""
    c = await client()
    first = set_cookies(await c.get("/"))
    device_cookie = first["_ep_did"].value
    resp = await c.get("/", headers={"Cookie": f"_ep_did={device_cookie}; ajs_anonymous_id=someone-else-1"})
    cookies = set_cookies(resp)
    assert cookies["ajs_anonymous_id"].value == "someone-else-1"
    assert "_ep_did" not in cookies  # unchanged, fresh: not re-sent


async def test_after_a_wipe_the_page_sets_the_device_id_again(client) -> None:
    c = await client()
    device_cookie = set_cookies(await c.get("/"))["_ep_did"].value
    resp = await c.get("/", headers={"Cookie": f"_ep_did={device_cookie}"})
    assert set_cookies(resp)["ajs_anonymous_id"].value == device_of(c, device_cookie)[0]


async def test_ajs_cookies_off_sets_none(client) -> None:
    c = await client(sessions__ajs_cookies=False)
    page = set_cookies(await c.get("/"))
    assert "_ep_did" in page and "ajs_anonymous_id" not in page
    resp = await c.post("/_e/v1/t", data=orjson.dumps(track(userId="u-1")))
    assert not any(name.startswith("ajs_") for name in set_cookies(resp))


async def test_a_configured_max_age_is_used(client) -> None:
    c = await client(sessions__ajs_cookie_max_age=13 * 30 * 86400.0)  # CNIL: 13 months
    assert set_cookies(await c.get("/"))["ajs_anonymous_id"]["max-age"] == str(13 * 30 * 86400)


async def test_a_page_a_cdn_may_cache_gets_no_ajs_cookie(tmp_path, aiohttp_client, aiohttp_server) -> None:
    async def page(request: web.Request) -> web.Response:
        return web.Response(body=b"<html><body>hi</body></html>", content_type="text/html",
                            headers={"Cache-Control": "public, max-age=600"})

    origin = web.Application()
    origin.router.add_get("/", page)
    server = await aiohttp_server(origin)
    c = await aiohttp_client(create_app(make_settings(tmp_path, origin__url=str(server.make_url("/")))))
    resp = await c.get("/", headers={"Cookie": f"ajs_anonymous_id={UUID}"})
    assert resp.status == 200 and "Set-Cookie" not in resp.headers


async def test_a_web_tracking_response_sets_the_ids_the_message_carried(client) -> None:
    c = await client()
    resp = await c.post("/_e/v1/t", data=orjson.dumps(track(userId="user 7")))
    cookies = set_cookies(resp)
    assert cookies["ajs_anonymous_id"].value == "anon-0001-aaaa"
    assert cookies["ajs_user_id"].value == "user%207" and cookies["ajs_user_id"]["httponly"] == ""
    assert cookies["ajs_user_id"]["max-age"] == str(FOUR_HUNDRED_DAYS)


async def test_a_server_librarys_response_sets_no_ajs_cookie(client) -> None:
    c = await client()
    body = track(userId="u-1", context={"library": {"name": "analytics-python", "version": "2.4.0"}})
    resp = await c.post("/_e/v1/t", data=orjson.dumps(body))
    assert resp.status == 200 and not set_cookies(resp)


@pytest.mark.parametrize("method", ["POST", "GET"])
async def test_reset_expires_every_identity_cookie(client, method) -> None:
    c = await client(server__cors_origins=["https://www.example.test"])
    resp = await c.request(method, "/_e/reset", headers={"Origin": "https://www.example.test"})
    assert resp.status == 204
    assert resp.headers["Access-Control-Allow-Origin"] == "https://www.example.test"
    assert resp.headers["Access-Control-Allow-Credentials"] == "true"
    cookies = set_cookies(resp)
    assert set(cookies) == {"_ep_did", "_ep_sess", "analytics_session_id", "analytics_session_id.last_access",
                            "ajs_anonymous_id", "ajs_user_id"}
    assert all(m["max-age"] == "0" and m["domain"] == "example.test" for m in cookies.values())
    assert cookies["_ep_did"]["httponly"] is True and cookies["ajs_anonymous_id"]["httponly"] == ""
    preflight = await c.options("/_e/reset", headers={"Origin": "https://www.example.test",
                                                      "Access-Control-Request-Method": "POST"})
    assert preflight.status == 204 and "POST" in preflight.headers["Access-Control-Allow-Methods"]


async def test_the_settings_tell_the_plugin_where_reset_is(client) -> None:
    c = await client()
    body = await (await c.get("/_e/v1/projects/wk/settings", headers={"Host": "www.example.test"})).json()
    [plugin] = body["remotePlugins"]
    assert plugin["settings"]["resetUrl"] == "http://www.example.test/_e/reset"
