"""Real Chromium running the real analytics.js (npm @segment/analytics-next) through edgeproxy.

The demo site is served by `edgeproxy serve`; analytics.js, its settings, its lazy chunks and
the session plugin all come from the proxy, and the events reach the Amplitude stand-in with
the browser's anonymousId as device_id and the server's session id (the readable cookie's).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from test_e2e import Proxy, wait_for

ROOT = Path(__file__).resolve().parent.parent
UMD = ROOT / "tests" / "js" / "node_modules" / "@segment" / "analytics-next" / "dist" / "umd"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-quic"]

playwright_api = pytest.importorskip("playwright.async_api", reason="playwright is a test dependency (make test)")
pytestmark = [
    pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (make test installs it)"),
    pytest.mark.skipif(not UMD.is_dir(), reason="tests/js has no node_modules (make test runs npm ci there)"),
]




async def test_demo_site_in_chromium_delivers_with_device_and_session(tmp_path, amp):
    proxy = Proxy(tmp_path, amp.base_url, cdn__analytics_js_dir=f'"{UMD}"', segment__write_keys='["demo-key"]',
                  origin__snippet_write_key='"demo-key"')
    await proxy.start()
    outside: list[str] = []
    try:
        async with playwright_api.async_playwright() as pw:
            browser = await pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
            try:
                context = await browser.new_context()
                page = await context.new_page()
                page.on("request", lambda r: None if r.url.startswith(proxy.base) else outside.append(r.url))
                await page.goto(proxy.base + "/")
                await page.wait_for_function("window.analytics && window.analytics.initialized === true", timeout=20_000)
                await page.click("#demo-button")
                await page.fill("#identify-form input[name=userId]", "browser-user-42")
                await page.click("#identify-form button[type=submit]")
                await wait_for(lambda: len(amp.ingested("httpapi")) >= 2 and len(amp.ingested("identify")) >= 1, timeout=30)
                await page.reload()  # a second page view, same browser
                await page.wait_for_function("window.analytics && window.analytics.initialized === true", timeout=20_000)
                await wait_for(lambda: len(amp.ingested("httpapi")) >= 3, timeout=30)
                anonymous_id = await page.evaluate("analytics.user().anonymousId()")
                cookies = {c["name"]: c for c in await context.cookies()}
            finally:
                await browser.close()
    finally:
        proxy.kill(15)

    assert outside == [], f"requests left the first-party origin: {outside}"
    events = amp.ingested("httpapi")
    names = [e["event_type"] for e in events]
    assert names.count("Demo Button Clicked") == 1
    assert sum(1 for n in names if n.startswith("Viewed")) == 2
    assert {e["device_id"] for e in events} == {anonymous_id}
    assert {e["session_id"] for e in events} == {int(cookies["analytics_session_id"]["value"])}
    assert all(e["insert_id"].startswith("ajs-next-") for e in events)
    assert {e["platform"] for e in events} == {"Web"}
    assert {e["library"] for e in events} == {"analytics.js"}
    assert amp.ingested("identify")[0]["user_id"] == "browser-user-42"
    # The server's cookies: the device cookie is HttpOnly, the session id readable by the page.
    assert cookies["_ep_did"]["httpOnly"] is True
    assert cookies["analytics_session_id"]["httpOnly"] is False
