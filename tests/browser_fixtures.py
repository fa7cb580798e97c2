"""Fixtures and helpers shared by the Chromium tests (``test_browser*.py``).

Real components only: Debian's Chromium driven by Playwright (never a downloaded browser),
`edgeproxy serve` as a subprocess, the npm analytics.js, and an origin website started by
the tests; the Amplitude stand-in is the one substitute. Chromium maps ``*.example.test``
to 127.0.0.1, so ``www.`` and ``shop.example.test`` are two sites sharing the cookie domain
``example.test`` (plain http, so ``secure_cookies = false`` as ``test_e2e.Proxy`` sets).

A test module imports the fixtures by name and sets ``pytestmark = BROWSER_MARKS``: one
browser per module on the module's event loop, a fresh context (cookies, storage) per test.
"""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path
from typing import Any, AsyncIterator, Awaitable, Callable

import pytest
import pytest_asyncio
from browser_support import OriginSite
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
# What edgeproxy sets: the signed HttpOnly pair and Segment's readable session cookies.
SERVER_COOKIES = ("_ep_did", "_ep_sess", "analytics_session_id", "analytics_session_id.last_access")

playwright_api = pytest.importorskip("playwright.async_api", reason="playwright is a test dependency (make test)")
BROWSER_MARKS = [
    pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (make test installs it)"),
    pytest.mark.skipif(not UMD.is_dir(), reason="tests/js has no node_modules (make test runs npm ci there)"),
    pytest.mark.asyncio(loop_scope="module"),
]


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
    origin = OriginSite(write_key=WRITE_KEY)
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


async def cookies_when(context: Any, url: str, ready: Callable[[dict[str, dict[str, Any]]], bool],
                       what: str) -> dict[str, dict[str, Any]]:
    """The jar once ``ready`` says so. Read right after ``wait_events`` it may not be yet:
    delivery starts at the spool's commit, the tracking response leaves after it, and the
    browser stores the response's cookies on its own time (seen once in a busy full run)."""
    deadline = asyncio.get_running_loop().time() + EVENTS_WAIT
    while True:
        jar = await cookies_of(context, url)
        if ready(jar):
            return jar
        assert asyncio.get_running_loop().time() < deadline, f"never {what} for {url}: have {sorted(jar)}"
        await asyncio.sleep(0.05)


async def cookies_once_set(context: Any, url: str, *names: str) -> dict[str, dict[str, Any]]:
    """The jar once ``names`` are all in it (``cookies_when``)."""
    return await cookies_when(context, url, lambda jar: all(n in jar for n in names), f"set {', '.join(names)}")


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
