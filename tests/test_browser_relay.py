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
