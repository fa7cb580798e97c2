"""Real Chromium running the real analytics.js (npm @segment/analytics-next) through edgeproxy.

Two set-ups, both with `edgeproxy serve` as a subprocess and the Amplitude stand-in:

* the built-in demo site (no origin configured);
* a website of its own (``browser_support.OriginSite``) behind the proxy, its pages carrying
  no analytics code: edgeproxy injects the snippet, serves analytics.js, its settings, its
  lazy chunks and the session plugin first-party, and sets the identity cookies. Chromium
  maps ``*.example.test`` to 127.0.0.1 so ``www.`` and ``shop.example.test`` are two sites
  sharing the cookie domain ``example.test`` (plain http, so ``secure_cookies = false``).

One browser serves the whole module (each test has its own context, i.e. its own cookies
and storage); every wait is bounded.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import time
from pathlib import Path
from typing import Any, AsyncIterator, Awaitable, Callable

import pytest
import pytest_asyncio
from browser_support import (
    BIG_BYTES,
    HELD_FIRST,
    HELD_REST,
    BrowserLog,
    FakeSegmentCdn,
    OriginSite,
    client_session_id,
    format_cookies,
)
from fake_amplitude import TEST_API_KEY, FakeAmplitude
from test_e2e import WRITE_KEY, Proxy, wait_for

ROOT = Path(__file__).resolve().parent.parent
UMD = ROOT / "tests" / "js" / "node_modules" / "@segment" / "analytics-next" / "dist" / "umd"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic",
                 # Two subdomains of one cookie domain, both reaching the proxy on 127.0.0.1.
                 "--host-resolver-rules=MAP *.example.test 127.0.0.1"]
COOKIE_DOMAIN = "example.test"
READY = "window.analytics && window.analytics.initialized === true"
WAIT_MS = 20_000  # any one browser wait
EVENTS_WAIT = 30.0  # events reaching the Amplitude stand-in
SERVER_COOKIES = ("_ep_did", "_ep_sess", "analytics_session_id", "analytics_session_id.last_access")
FOUR_HUNDRED_DAYS = 400 * 86400

playwright_api = pytest.importorskip("playwright.async_api", reason="playwright is a test dependency (make test)")
pytestmark = [
    pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (make test installs it)"),
    pytest.mark.skipif(not UMD.is_dir(), reason="tests/js has no node_modules (make test runs npm ci there)"),
    pytest.mark.asyncio(loop_scope="module"),
]


# ---------------------------------------------------------------- fixtures


async def start_proxy(home: Path, amp_url: str, **config: str) -> Proxy:
    """`edgeproxy serve` on a free port; a port taken in between (other test runs share the
    machine) means another port, at most three times."""
    for attempt in range(3):
        proxy = Proxy(home, amp_url, **config)
        try:
            await proxy.start()
            return proxy
        except AssertionError as exc:
            if proxy.proc is not None and proxy.proc.poll() is None:
                proxy.kill()  # started but never became healthy: do not leave it running
            if "address already in use" not in str(exc) or attempt == 2:
                raise
    raise AssertionError("unreachable")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def chromium() -> AsyncIterator[Any]:
    """One headless Debian Chromium for the module (never a downloaded browser)."""
    async with playwright_api.async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            await browser.close()


@pytest_asyncio.fixture(loop_scope="module")
async def amp() -> AsyncIterator[FakeAmplitude]:
    """The Amplitude stand-in, one per test, on the module's event loop (conftest's is per test)."""
    fake = FakeAmplitude(api_keys={TEST_API_KEY})
    await fake.start()
    yield fake
    await fake.stop()


@pytest_asyncio.fixture(loop_scope="module")
async def site() -> AsyncIterator[OriginSite]:
    origin = OriginSite()
    await origin.start()
    yield origin
    await origin.stop()


@pytest_asyncio.fixture(loop_scope="module")
async def make_proxy(tmp_path: Path, amp: FakeAmplitude, site: OriginSite) -> AsyncIterator[Callable[..., Awaitable[Proxy]]]:
    """Start `edgeproxy serve` in front of ``site``; extra ``section__key`` settings as TOML values."""
    started: list[Proxy] = []

    async def make(**extra: str) -> Proxy:
        config = {
            "origin__url": f'"{site.url}"',
            "origin__inject_snippet": "true",
            "cdn__analytics_js_dir": f'"{UMD}"',
            "sessions__cookie_domain": f'"{COOKIE_DOMAIN}"',
            **extra,
        }
        home = tmp_path / f"proxy{len(started)}"
        home.mkdir()
        proxy = await start_proxy(home, amp.base_url, **config)
        started.append(proxy)
        return proxy

    yield make
    for proxy in started:
        if proxy.proc is not None and proxy.proc.poll() is None:
            proxy.kill(15)


@pytest_asyncio.fixture(loop_scope="module")
async def context(chromium: Any) -> AsyncIterator[Any]:
    """A fresh browser profile (cookies, localStorage) with bounded default waits."""
    ctx = await chromium.new_context()
    ctx.set_default_timeout(WAIT_MS)
    ctx.set_default_navigation_timeout(WAIT_MS)
    yield ctx
    await ctx.close()


# ---------------------------------------------------------------- helpers


def www(proxy: Proxy, path: str = "/") -> str:
    return f"http://www.{COOKIE_DOMAIN}:{proxy.port}{path}"


def shop(proxy: Proxy, path: str = "/shop") -> str:
    return f"http://shop.{COOKIE_DOMAIN}:{proxy.port}{path}"


async def open_page(context: Any, url: str) -> Any:
    """A new tab on ``url`` with analytics.js initialised (its page() call is then queued)."""
    page = await context.new_page()
    response = await page.goto(url)
    assert response is not None and response.status == 200, url
    await page.wait_for_function(READY, timeout=WAIT_MS)
    return page


async def cookies_of(context: Any, url: str) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in await context.cookies(url)}


async def run_js(page: Any, script: str, timeout: float = 15.0) -> Any:
    """``page.evaluate`` with a bound: Playwright itself waits for a promise forever."""
    return await asyncio.wait_for(page.evaluate(script), timeout)


def events(amp: FakeAmplitude) -> list[dict[str, Any]]:
    return amp.ingested("httpapi")


async def wait_events(amp: FakeAmplitude, count: int) -> list[dict[str, Any]]:
    await wait_for(lambda: len(events(amp)) >= count, timeout=EVENTS_WAIT)
    return events(amp)


def session_ids(items: list[dict[str, Any]]) -> set[int]:
    return {e["session_id"] for e in items}


def device_ids(items: list[dict[str, Any]]) -> set[str]:
    return {e["device_id"] for e in items}


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
    cookies = await cookies_of(context, www(proxy))

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
    www_session = int((await cookies_of(context, www(proxy)))["analytics_session_id"]["value"])
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


async def test_safari_style_wipe_of_script_storage_keeps_the_device_id(
    make_proxy: Callable[..., Awaitable[Proxy]], amp: FakeAmplitude, context: Any
) -> None:
    proxy = await make_proxy()
    page = await open_page(context, www(proxy, "/"))
    before = await wait_events(amp, 1)
    old_anonymous_id = await page.evaluate("analytics.user().anonymousId()")

    # What Safari does to script-written storage after 7 days: localStorage and ajs_* gone.
    await page.evaluate("localStorage.clear()")
    await context.clear_cookies(name=re.compile(r"^ajs_"))
    assert not any(c["name"].startswith("ajs_") for c in await context.cookies())
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
    cookies = await cookies_of(context, www(proxy))
    assert int(cookies["analytics_session_id"]["value"]) == second["session_id"]


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
    cookies = await cookies_of(context, www(proxy))

    assert [u for _, u, _ in seen.unanswered() if "/_e/p/" in u], "the plugin was never requested, so never blocked"
    calls = seen.tracked_once()
    assert len(calls) == 3 and all(client_session_id(b) is None for b in calls.values())
    assert device_ids(items) == {anonymous_id}
    assert session_ids(items) == {int(cookies["analytics_session_id"]["value"])}


async def test_streaming_websocket_and_origin_down_through_the_proxy(
    make_proxy: Callable[..., Awaitable[Proxy]], site: OriginSite, context: Any
) -> None:
    proxy = await make_proxy()
    page = await open_page(context, www(proxy, "/"))

    echo = await run_js(page, """() => new Promise((resolve, reject) => {
        const ws = new WebSocket(`ws://${location.host}/ws`);
        ws.onopen = () => ws.send('hello through the proxy');
        ws.onmessage = (m) => { resolve(m.data); ws.close(); };
        ws.onerror = () => reject(new Error('websocket failed'));
        setTimeout(() => reject(new Error('no echo in 10 s')), 10000);
    })""")
    assert echo == "echo:hello through the proxy"

    # The origin holds its answer after the first chunk: only a streaming proxy delivers that chunk.
    first = await run_js(page, """async () => {
        const response = await fetch('/held');
        window.heldReader = response.body.getReader();
        const chunk = await window.heldReader.read();
        return new TextDecoder().decode(chunk.value);
    }""")
    assert first == HELD_FIRST and not site.held_finished
    assert await run_js(page, "fetch('/release').then(r => r.text())") == "released"
    rest = await run_js(page, """async () => {
        let text = '';
        for (;;) {
            const chunk = await window.heldReader.read();
            if (chunk.done) return text;
            text += new TextDecoder().decode(chunk.value);
        }
    }""")
    assert rest == HELD_REST and site.held_finished

    big = await run_js(page, """async () => {
        const bytes = new Uint8Array(await (await fetch('/big')).arrayBuffer());
        let wrong = 0;
        for (let i = 0; i < bytes.length; i++) if (bytes[i] !== (i & 255)) wrong++;
        return {length: bytes.length, wrong};
    }""")
    assert big == {"length": BIG_BYTES, "wrong": 0}

    await site.stop()
    down = await page.goto(www(proxy, "/second"))
    assert down is not None and down.status == 502
    assert "502 Bad Gateway" in await page.title()


async def test_default_secure_cookies_work_on_plain_http_localhost(
    make_proxy: Callable[..., Awaitable[Proxy]], amp: FakeAmplitude, context: Any
) -> None:
    """A developer keeps the default ``secure_cookies = true``: Chromium treats http://localhost
    as a secure context, so the Secure cookies are stored and sent and the loop still closes."""
    proxy = await make_proxy(sessions__secure_cookies="true", sessions__cookie_domain='""')
    local = f"http://localhost:{proxy.port}"
    page = await open_page(context, local + "/")
    await page.click("#buy")
    items = await wait_events(amp, 2)
    anonymous_id = await page.evaluate("analytics.user().anonymousId()")
    jar = await cookies_of(context, local)
    assert all(jar[name]["secure"] is True and jar[name]["domain"] == "localhost" for name in SERVER_COOKIES), jar
    assert device_ids(items) == {anonymous_id}
    assert session_ids(items) == {int(jar["analytics_session_id"]["value"])}


async def test_analytics_js_from_an_upstream_cdn_is_fetched_once_and_survives_its_outage(
    make_proxy: Callable[..., Awaitable[Proxy]], amp: FakeAmplitude, chromium: Any, context: Any
) -> None:
    cdn = FakeSegmentCdn(UMD)
    await cdn.start()
    try:
        proxy = await make_proxy(cdn__analytics_js_dir='""', cdn__upstream=f'"{cdn.url}"')
        library_path = f"/analytics.js/v1/{WRITE_KEY}/analytics.min.js"

        # The CDN is down: the site still works (it is the origin's page), analytics.js is absent.
        cdn.failing = True
        page = await context.new_page()
        async with page.expect_response(lambda r: r.url.endswith(library_path), timeout=WAIT_MS) as library:
            landing = await page.goto(www(proxy, "/"))
        assert landing is not None and landing.status == 200
        assert (await library.value).status == 502
        assert await page.evaluate("Array.isArray(window.analytics) && !window.analytics.initialized")

        # It recovers: the failure was not cached, and the bundle comes with the CDN's write key.
        cdn.failing = False
        await page.reload()
        await page.wait_for_function(READY, timeout=WAIT_MS)
        assert await page.evaluate("window.analyticsWriteKey") == WRITE_KEY
        await page.click("#buy")
        # Another browser profile (its own HTTP cache): the proxy answers from its cache.
        other = await chromium.new_context()
        try:
            other.set_default_timeout(WAIT_MS)
            await open_page(other, www(proxy, "/second"))
            items = await wait_events(amp, 3)
        finally:
            await other.close()
        assert sorted(e["event_type"] for e in items).count("Buy Clicked") == 1
        assert cdn.hits[library_path] == 2  # the failed fetch and the one that is now cached
        chunks = {path: n for path, n in cdn.hits.items() if path.startswith("/analytics-next/bundles/")}
        assert chunks and set(chunks.values()) == {1}, cdn.hits
    finally:
        await cdn.stop()
