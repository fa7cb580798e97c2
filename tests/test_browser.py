"""Real Chromium running the real analytics.js (npm @segment/analytics-next) through edgeproxy:
the visitor's identity.

Two set-ups, both `edgeproxy serve` as a subprocess delivering to the Amplitude stand-in: the
built-in demo site (no origin configured), and a website of its own
(``browser_support.OriginSite``) whose pages carry no analytics code: edgeproxy injects the
snippet, serves analytics.js, its settings, its lazy chunks and the session plugin
first-party, and sets the identity cookies. What is asserted is what a site owner needs: the
server's device and session ids on every event, kept across reloads, tabs and subdomains,
through a Safari-style storage wipe, rotated after idleness, and with the plugin blocked.
"""

from __future__ import annotations

import asyncio
import re
import time
from pathlib import Path
from typing import Any, Awaitable, Callable

from browser_fixtures import (  # noqa: F401  (amp, chromium, context, make_proxy, site: pytest fixtures)
    BROWSER_MARKS,
    COOKIE_DOMAIN,
    EVENTS_WAIT,
    READY,
    SERVER_COOKIES,
    UMD,
    WAIT_MS,
    amp,
    chromium,
    context,
    cookies_of,
    cookies_once_set,
    cookies_when,
    device_ids,
    make_proxy,
    open_page,
    run_js,
    session_ids,
    shop,
    site,
    start_proxy,
    wait_events,
    www,
)
from browser_support import BrowserLog, OriginSite, client_session_id, format_cookies
from fake_amplitude import FakeAmplitude
from test_e2e import WRITE_KEY, Proxy, wait_for

pytestmark = BROWSER_MARKS

FOUR_HUNDRED_DAYS = 400 * 86400


# ---------------------------------------------------------------- the built-in demo site


async def test_demo_site_in_chromium_delivers_with_device_and_session(tmp_path: Path, amp: FakeAmplitude, context: Any) -> None:
    proxy = await start_proxy(tmp_path, amp.base_url, cdn__analytics_js_dir=f'"{UMD}"',
                              segment__write_keys='["demo-key"]', origin__snippet_write_key='"demo-key"')
    outside: list[str] = []
    try:
        page = await context.new_page()
        page.on("request", lambda r: None if r.url.startswith(proxy.base) else outside.append(r.url))
        await page.goto(proxy.base + "/")
        await page.wait_for_function(READY, timeout=WAIT_MS)
        await page.click("#demo-button")
        await page.fill("#identify-form input[name=userId]", "browser-user-42")
        await page.click("#identify-form button[type=submit]")
        await wait_for(lambda: len(amp.ingested("httpapi")) >= 2 and len(amp.ingested("identify")) >= 1, timeout=EVENTS_WAIT)
        await page.reload()  # a second page view, same browser
        await page.wait_for_function(READY, timeout=WAIT_MS)
        await wait_for(lambda: len(amp.ingested("httpapi")) >= 3, timeout=EVENTS_WAIT)
        anonymous_id = await page.evaluate("analytics.user().anonymousId()")
        cookies = {c["name"]: c for c in await context.cookies()}
        metrics = await run_js(page, "fetch('/metrics').then(r => r.text())")
    finally:
        proxy.kill(15)

    assert outside == [], f"requests left the first-party origin: {outside}"
    items = amp.ingested("httpapi")
    names = [e["event_type"] for e in items]
    assert names.count("Demo Button Clicked") == 1
    assert sum(1 for n in names if n.startswith("Viewed")) == 2
    assert device_ids(items) == {anonymous_id}
    assert session_ids(items) == {int(cookies["analytics_session_id"]["value"])}
    assert all(e["insert_id"].startswith("ajs-next-") for e in items)
    assert {e["platform"] for e in items} == {"Web"}
    assert {e["library"] for e in items} == {"analytics.js"}
    assert amp.ingested("identify")[0]["user_id"] == "browser-user-42"
    # The plugin and the server agree on the session from the very first event.
    assert "edgeproxy_session_id_mismatches_total 0.0" in metrics, [
        line for line in metrics.splitlines() if "mismatch" in line]
    # Every request of the visit was answered (the favicon too: it was a 404 on every page).
    assert not [line for line in metrics.splitlines() if 'status="404"' in line and not line.startswith("#")], metrics
    # The server's cookies: the device cookie is HttpOnly, the session id readable by the page.
    assert cookies["_ep_did"]["httpOnly"] is True
    assert cookies["analytics_session_id"]["httpOnly"] is False


# ---------------------------------------------------------------- a website of its own behind the proxy


async def test_site_behind_the_proxy_gets_server_device_and_session_across_reload_and_tabs(
    make_proxy: Callable[..., Awaitable[Proxy]], amp: FakeAmplitude, site: OriginSite, context: Any
) -> None:
    proxy = await make_proxy()
    seen = BrowserLog()
    seen.attach(context)

    page = await context.new_page()
    landing = await page.goto(www(proxy, "/"))
    # The very first page view owns a device id: the HTML response itself sets the HttpOnly cookie.
    assert landing is not None and landing.status == 200
    set_cookie = await landing.header_value("set-cookie")
    assert set_cookie and set_cookie.startswith("_ep_did=") and "HttpOnly" in set_cookie, set_cookie
    await page.wait_for_function(READY, timeout=WAIT_MS)
    await page.click("#buy")
    first = await wait_events(amp, 2)
    anonymous_id = await page.evaluate("analytics.user().anonymousId()")
    # The bundle was served with the write key substituted, as cdn.segment.com does.
    assert await page.evaluate("window.analyticsWriteKey") == WRITE_KEY

    await page.reload()  # a second page view in the same tab
    await page.wait_for_function(READY, timeout=WAIT_MS)
    second_tab = await open_page(context, www(proxy, "/second"))
    await second_tab.click("#buy")
    items = await wait_events(amp, 5)
    cookies = await cookies_once_set(context, www(proxy), "analytics_session_id")

    names = sorted(e["event_type"] for e in items)
    assert names.count("Buy Clicked") == 2 and len(names) == 5, names
    # 1. the server's ids: device = the browser's first anonymousId, session = the server's cookie
    assert device_ids(items) == {anonymous_id}
    assert session_ids(items) == {int(cookies["analytics_session_id"]["value"])}
    assert session_ids(first) == session_ids(items)  # 2. the reload and the second tab kept them
    assert {e["ip"] for e in items} == {"127.0.0.1"}  # the client IP became context.ip
    assert {(e["event_properties"] or {}).get("page") for e in items if e["event_type"] == "Buy Clicked"} == {"Home", "Second"}

    # The plugin came through the settings, first-party, and read the server's readable cookie:
    # every call made once that cookie existed already carried the server's session id.
    plugin_urls = [u for u in seen.urls() if re.search(r"/_e/p/[0-9a-f]+\.js$", u)]
    assert plugin_urls and all(u.startswith(www(proxy, "/_e/p/")) for u in plugin_urls)
    first_page = {b["messageId"] for b in seen.tracking[:2]}  # these may race the first response
    later_calls = [b for b in seen.tracked_once().values() if b["messageId"] not in first_page]
    assert later_calls and {client_session_id(b) for b in later_calls} == session_ids(items)
    # Nothing left the site's own origin, and nothing failed.
    assert all(u.startswith(www(proxy, "/")) for u in seen.urls()), seen.urls()
    assert seen.unanswered() == [], seen.failures
    # The origin saw the visitor's host and address in X-Forwarded-*, and its own Host.
    home = next(r for r in site.requests if r.path == "/")
    assert home.headers["X-Forwarded-Host"] == f"www.{COOKIE_DOMAIN}:{proxy.port}"
    assert home.headers["X-Forwarded-Proto"] == "http"
    assert home.headers["X-Forwarded-For"] == "127.0.0.1"
    assert home.headers["Host"] == site.url.removeprefix("http://")


async def test_second_subdomain_shares_device_and_session_and_what_chromium_saw(
    make_proxy: Callable[..., Awaitable[Proxy]], amp: FakeAmplitude, context: Any
) -> None:
    proxy = await make_proxy()
    seen = BrowserLog()
    seen.attach(context)

    on_www = await open_page(context, www(proxy, "/"))
    await on_www.click("#buy")
    await wait_events(amp, 2)
    www_session = int((await cookies_once_set(context, www(proxy), "analytics_session_id"))["analytics_session_id"]["value"])
    calls_before_shop = len(seen.tracking)

    on_shop = await open_page(context, shop(proxy, "/shop"))
    await on_shop.click("#buy")
    items = await wait_events(amp, 4)
    # localStorage is per origin: the shop's is new, yet the page's plugin found the session
    # in the readable cookie that the server scoped to the cookie domain.
    assert await on_shop.evaluate("localStorage.getItem('analytics_session_id')") == str(www_session)
    shop_calls = seen.tracking[calls_before_shop:]
    assert len(shop_calls) == 2 and {client_session_id(b) for b in shop_calls} == {www_session}

    assert len(device_ids(items)) == 1
    assert session_ids(items) == {www_session}
    assert sorted(e["event_properties"].get("page") for e in items if e["event_type"] == "Buy Clicked") == ["Home", "Shop"]

    now = time.time()
    all_cookies = await context.cookies()
    for url in (www(proxy), shop(proxy)):
        jar = await cookies_of(context, url)
        for name in SERVER_COOKIES:
            cookie = jar[name]
            assert cookie["domain"] == f".{COOKIE_DOMAIN}", cookie
            assert cookie["path"] == "/" and cookie["sameSite"] == "Lax", cookie
            assert cookie["httpOnly"] is name.startswith("_ep_"), cookie  # signed ones HttpOnly, Segment's readable
            assert cookie["secure"] is False, cookie  # plain http: secure_cookies = false
            assert abs(cookie["expires"] - now - FOUR_HUNDRED_DAYS) < 3600, cookie

    print("\n== cookies Chromium stored (www. and shop.example.test) ==")
    print("\n".join(format_cookies(all_cookies, now)))
    print("== requests the pages made (method status url) ==")
    for method, url, status in seen.responses:
        print(f"{method:7} {status} {url}")
    for method, url, failure, answered in seen.failures:
        print(f"{method:7} {'body cut off' if answered else 'FAILED'} {url} ({failure})")


async def wipe_script_storage(page: Any, context: Any) -> None:
    """What Safari does to script-written storage after 7 days: localStorage and every cookie a
    script can see are gone (the server-set ones survive in Safari; here they go too, the
    harder case); the HttpOnly device and session cookies stay."""
    await page.evaluate("localStorage.clear()")
    for cookie in await context.cookies():
        if not cookie["httpOnly"]:
            await context.clear_cookies(name=cookie["name"])
    left = await context.cookies()
    assert all(c["httpOnly"] for c in left) and "_ep_did" in {c["name"] for c in left}


async def test_safari_style_wipe_keeps_analytics_js_anonymous_id(
    make_proxy: Callable[..., Awaitable[Proxy]], amp: FakeAmplitude, context: Any
) -> None:
    """The server sets ajs_anonymous_id from the HttpOnly device cookie on the next page:
    analytics.js reads it at init and keeps the same anonymousId, equal to the device id."""
    proxy = await make_proxy()
    page = await open_page(context, www(proxy, "/"))
    before = await wait_events(amp, 1)
    old_anonymous_id = await page.evaluate("analytics.user().anonymousId()")
    assert device_ids(before) == {old_anonymous_id}  # a new browser: anonymousId == device_id from its first event
    await wipe_script_storage(page, context)
    await page.reload()
    await page.wait_for_function(READY, timeout=WAIT_MS)
    await page.click("#buy")
    items = await wait_events(amp, 3)

    # Read before asking analytics.js: each read re-writes the cookie from script (365 days;
    # Safari: 7), and the tracking response after it wrote it back from the server.
    cookie = (await cookies_of(context, www(proxy)))["ajs_anonymous_id"]
    assert cookie["value"] == old_anonymous_id and cookie["httpOnly"] is False
    assert cookie["expires"] - time.time() > 399 * 86400, "the last write was analytics.js's, not the server's"
    assert await page.evaluate("analytics.user().anonymousId()") == old_anonymous_id
    assert device_ids(items) == {old_anonymous_id}
    assert session_ids(items) == session_ids(before)


async def test_without_ajs_cookies_the_device_cookie_still_wins_a_wipe(
    make_proxy: Callable[..., Awaitable[Proxy]], amp: FakeAmplitude, context: Any
) -> None:
    proxy = await make_proxy(sessions__ajs_cookies="false")
    page = await open_page(context, www(proxy, "/"))
    before = await wait_events(amp, 1)
    old_anonymous_id = await page.evaluate("analytics.user().anonymousId()")
    await wipe_script_storage(page, context)
    await page.reload()
    await page.wait_for_function(READY, timeout=WAIT_MS)
    await page.click("#buy")
    items = await wait_events(amp, 3)

    new_anonymous_id = await page.evaluate("analytics.user().anonymousId()")
    assert new_anonymous_id != old_anonymous_id  # analytics.js really started over
    assert device_ids(items) == {old_anonymous_id}  # the HttpOnly server cookie won
    assert session_ids(items) == session_ids(before)
    assert len(items) == 3


async def test_idle_gap_longer_than_the_timeout_starts_a_new_session(
    make_proxy: Callable[..., Awaitable[Proxy]], amp: FakeAmplitude, context: Any
) -> None:
    proxy = await make_proxy(sessions__timeout='"3s"')
    page = await open_page(context, www(proxy, "/"))
    (first,) = await wait_events(amp, 1)
    await asyncio.sleep(4.5)  # idle for longer than the 3 s timeout
    await page.click("#buy")
    items = await wait_events(amp, 2)
    second = items[1]
    assert second["event_type"] == "Buy Clicked"
    assert second["device_id"] == first["device_id"]
    assert second["session_id"] != first["session_id"]
    assert second["session_id"] - first["session_id"] >= 3000
    # The new session's cookie comes with the answer to the click (``cookies_when``).
    await cookies_when(context, www(proxy), lambda jar: jar.get("analytics_session_id", {}).get("value") == str(second["session_id"]),
                       f"the new session's cookie ({second['session_id']})")


async def test_with_the_plugin_blocked_the_server_still_stamps_the_session(
    make_proxy: Callable[..., Awaitable[Proxy]], amp: FakeAmplitude, context: Any
) -> None:
    proxy = await make_proxy()
    seen = BrowserLog()
    seen.attach(context)
    await context.route(re.compile(r"/_e/p/[^/]+\.js$"), lambda route: route.abort("blockedbyclient"))

    page = await open_page(context, www(proxy, "/"))
    await page.click("#buy")
    await page.reload()
    await page.wait_for_function(READY, timeout=WAIT_MS)
    items = await wait_events(amp, 3)
    anonymous_id = await page.evaluate("analytics.user().anonymousId()")
    cookies = await cookies_once_set(context, www(proxy), "analytics_session_id")

    assert [u for _, u, _ in seen.unanswered() if "/_e/p/" in u], "the plugin was never requested, so never blocked"
    calls = seen.tracked_once()
    assert len(calls) == 3 and all(client_session_id(b) is None for b in calls.values())
    assert device_ids(items) == {anonymous_id}
    assert session_ids(items) == {int(cookies["analytics_session_id"]["value"])}
