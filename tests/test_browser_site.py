"""Real Chromium through edgeproxy: the website proxy and where analytics.js comes from.

The parts of a reverse proxy a browser exercises and a unit test can miss (a WebSocket, a
response held open half-way, a large body, the origin going away), the default Secure
cookies on http://localhost, and analytics.js fetched from an upstream CDN instead of a local
copy. Set-up as in ``test_browser.py`` (``browser_fixtures``).
"""

from __future__ import annotations

from typing import Any, Awaitable, Callable

from browser_fixtures import (  # noqa: F401  (amp, chromium, context, make_proxy, site: pytest fixtures)
    BROWSER_MARKS,
    READY,
    SERVER_COOKIES,
    UMD,
    WAIT_MS,
    amp,
    chromium,
    context,
    cookies_once_set,
    device_ids,
    make_proxy,
    open_page,
    run_js,
    session_ids,
    site,
    wait_events,
    www,
)
from browser_support import BIG_BYTES, HELD_FIRST, HELD_REST, BrowserLog, FakeSegmentCdn, OriginSite
from fake_amplitude import FakeAmplitude
from test_e2e import WRITE_KEY, Proxy

pytestmark = BROWSER_MARKS


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
    jar = await cookies_once_set(context, local, *SERVER_COOKIES)
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


async def test_a_site_keeping_its_own_segment_snippet_only_changes_the_bundle_url(
    make_proxy: Callable[..., Awaitable[Proxy]], amp: FakeAmplitude, context: Any
) -> None:
    """No injection: the page has Segment's snippet with the bundle's URL pointed at the prefix."""
    proxy = await make_proxy(origin__inject_snippet="false")
    seen = BrowserLog()
    seen.attach(context)
    plain = await context.new_page()
    await plain.goto(www(proxy, "/"))
    assert await plain.evaluate("typeof window.analytics") == "undefined"  # nothing injected

    page = await open_page(context, www(proxy, "/own"))
    await page.click("#buy")
    items = await wait_events(amp, 2)
    anonymous_id = await page.evaluate("analytics.user().anonymousId()")
    jar = await cookies_once_set(context, www(proxy), "analytics_session_id")
    assert len(items) == 2 and "Buy Clicked" in {e["event_type"] for e in items}
    assert device_ids(items) == {anonymous_id}
    assert session_ids(items) == {int(jar["analytics_session_id"]["value"])}
    # The chunks, the settings and the plugin followed the bundle: all first-party.
    urls = seen.urls()
    assert all(u.startswith(www(proxy, "/")) for u in urls), urls
    assert any("/_e/analytics-next/bundles/" in u for u in urls) and any("/_e/p/" in u for u in urls)
