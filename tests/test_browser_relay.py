"""Real Chromium running the real analytics.js through edgeproxy with the relay to Segment on:
every message the browser sends reaches the Segment stand-in once, as analytics.js sent it,
with the session id Amplitude (direct) got for the same message."""

from __future__ import annotations

from typing import Any, AsyncIterator

import pytest_asyncio
from browser_fixtures import (  # noqa: F401  (amp, chromium, context, make_proxy, site: pytest fixtures)
    BROWSER_MARKS,
    READY,
    WAIT_MS,
    amp,
    chromium,
    context,
    make_proxy,
    open_page,
    run_js,
    site,
    wait_events,
    www,
)
from fake_amplitude import FakeAmplitude
from fake_segment import FakeSegment
from test_e2e import WRITE_KEY, wait_for

pytestmark = BROWSER_MARKS


@pytest_asyncio.fixture(loop_scope="module")
async def segment() -> AsyncIterator[FakeSegment]:
    """The Segment stand-in on the module's event loop (conftest's fixture is per test loop)."""
    fake = FakeSegment()
    await fake.start()
    yield fake
    await fake.stop()


async def test_analytics_js_messages_reach_segment_once_with_amplitudes_session(
        amp: FakeAmplitude, segment: FakeSegment, context: Any, make_proxy) -> None:
    proxy = await make_proxy(segment__relay_url=f'"{segment.base_url}"')
    page = await open_page(context, www(proxy))
    await run_js(page, "analytics.track('Plan Chosen', {plan: 'team'})")
    await run_js(page, "analytics.identify('browser-user-7', {plan: 'team'})")
    await page.reload()
    await page.wait_for_function(READY, timeout=WAIT_MS)
    await run_js(page, "analytics.track('Checkout Started')")
    anonymous_id = await page.evaluate("analytics.user().anonymousId()")
    events = await wait_events(amp, 4)  # two page views and two tracks
    await wait_for(lambda: len(segment.messages()) >= 5, timeout=30)  # and the identify

    relayed = {m["messageId"]: m for m in segment.messages(WRITE_KEY)}
    print(f"\nrelay_browser: sent={len(relayed)}, relayed={len(segment.unique_messages())}, "
          f"duplicates={len(segment.duplicates())}, amplitude_events={len(events)}")
    assert not segment.duplicates() and len(segment.messages()) == 5
    assert sorted(m["type"] for m in relayed.values()) == ["identify", "page", "page", "track", "track"]
    for event in events:
        msg = relayed[event["insert_id"]]
        assert msg["integrations"]["Actions Amplitude"]["session_id"] == event["session_id"] > 0
        assert msg["anonymousId"] == anonymous_id
        assert msg["context"]["library"]["name"] == "analytics.js" and msg["context"]["ip"] == "127.0.0.1"
        assert msg["context"]["page"]["path"] == "/" and msg["context"]["userAgent"]
    assert [m["userId"] for m in relayed.values() if m["type"] == "identify"] == ["browser-user-7"]
    assert {r.path for r in segment.requests} == {"/v1/batch"}


async def test_one_anonymous_id_survives_a_safari_wipe_and_a_reset_takes_effect(
        amp: FakeAmplitude, segment: FakeSegment, context: Any, make_proxy) -> None:
    """The server-set ajs_anonymous_id: the same anonymousId for analytics.js, Amplitude's
    device_id and the relay after script storage is wiped; analytics.reset() gives a new one
    everywhere, and no later page brings the old one back."""
    from test_browser import wipe_script_storage

    proxy = await make_proxy(segment__relay_url=f'"{segment.base_url}"')
    page = await open_page(context, www(proxy))
    first = await page.evaluate("analytics.user().anonymousId()")
    await wait_events(amp, 1)  # the page view's response has set the session cookies
    await wipe_script_storage(page, context)
    await page.reload()
    await page.wait_for_function(READY, timeout=WAIT_MS)
    assert await page.evaluate("analytics.user().anonymousId()") == first
    await run_js(page, "analytics.track('After Wipe')")
    events = await wait_events(amp, 3)
    await wait_for(lambda: len(segment.messages()) >= 3, timeout=30)
    assert {e["device_id"] for e in events} == {first}
    assert {m["anonymousId"] for m in segment.messages()} == {first}

    async with page.expect_response(lambda r: r.url.endswith("/_e/reset")) as reset:
        await run_js(page, "analytics.reset()")
    assert (await reset.value).status == 204
    await run_js(page, "analytics.track('After Reset')")
    second = await page.evaluate("analytics.user().anonymousId()")
    assert second != first
    await page.reload()
    await page.wait_for_function(READY, timeout=WAIT_MS)
    assert await page.evaluate("analytics.user().anonymousId()") == second
    await run_js(page, "analytics.track('Next Page')")
    events = await wait_events(amp, 6)  # + After Reset, the page view, Next Page
    await wait_for(lambda: len(segment.messages()) >= 6, timeout=30)
    after = [e for e in events if e["event_type"] in ("After Reset", "Next Page")]
    assert {e["device_id"] for e in after} == {second}, [(e["event_type"], e["device_id"]) for e in events]
    relayed_after = [m for m in segment.messages() if m.get("event") in ("After Reset", "Next Page")]
    assert {m["anonymousId"] for m in relayed_after} == {second}
    print(f"\nrelay_browser_identity: anonymousId kept through the wipe ({first[:8]}…), "
          f"new after reset ({second[:8]}…); relayed={len(segment.messages())}, duplicates={len(segment.duplicates())}")
