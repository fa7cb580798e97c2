"""The /debug cockpit in real Chromium, as an operator sees it: a known event's trail, the
hour's chart with the right count, live updates without a reload (and a pause that holds
them), and the same tables with JavaScript off."""

from __future__ import annotations

import asyncio
from typing import Any

from browser_fixtures import (  # noqa: F401  (amp, chromium, context, make_proxy, site: pytest fixtures)
    BROWSER_MARKS,
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

pytestmark = BROWSER_MARKS

TRACK = "analytics.track({name}, {{step: 1}}).then(ctx => ctx.event.messageId)"


def debug(proxy: Any, path: str = "") -> str:
    return f"{proxy.base}/debug{path}"


async def track(page: Any, name: str) -> str:
    return await run_js(page, TRACK.format(name=repr(name)))


async def test_an_operator_follows_an_event_and_watches_it_live(amp: FakeAmplitude, context: Any, make_proxy) -> None:
    proxy = await make_proxy()
    site_page = await open_page(context, www(proxy))
    first = await track(site_page, "Cockpit Checked")
    await wait_events(amp, 2)  # the page view and the track

    # The trail of the known event: what came in, the identity decision, what Amplitude got and answered.
    cockpit = await context.new_page()
    await cockpit.goto(debug(proxy, f"/events/{first}"))
    body = cockpit.locator("body")
    for _ in range(50):
        if "delivered" in await body.inner_text():
            break
        await asyncio.sleep(0.2)
        await cockpit.reload()
    text = await body.inner_text()
    assert f"event {first}" in text and "Identity decision" in text and "Delivery attempts" in text
    # analytics.js may send the page view and the track together, before any cookie: either way
    # the page's anonymousId becomes the device id.
    assert "device id from\tthe device cookie" in text or "device id from\tanonymousId, adopted" in text
    assert '"event_type": "Cockpit Checked"' in text and "Message as received (normalised)" in text
    row = cockpit.locator("h2:has-text('Delivery attempts') + table tr").nth(1)
    assert (await row.locator("td").nth(3).inner_text(), await row.locator("td").nth(4).inner_text()) == ("200", "delivered")

    # The overview: a chart with the right count, the event in the latest events, live.
    await cockpit.goto(debug(proxy))
    assert await cockpit.locator("#chart-accepted .chart-total").inner_text() == "2"
    assert await cockpit.locator("#chart-accepted svg rect").count() == 1  # one minute's bar
    assert await cockpit.locator(f"#trail-rows a[href$='/events/{first}']").count() == 1
    status = cockpit.locator("#live-status")
    await cockpit.wait_for_function("document.getElementById('live-status').textContent.startsWith('live')",
                                    timeout=WAIT_MS)
    assert await cockpit.locator("#live-controls").is_visible()

    # A new event shows up without a reload: its row, and the headline and chart counts.
    second = await track(site_page, "Live One")
    await cockpit.locator(f"#trail-rows a[href$='/events/{second}']").wait_for(timeout=WAIT_MS)
    await cockpit.wait_for_function("document.querySelector('#chart-accepted .chart-total').textContent === '3'",
                                    timeout=WAIT_MS)
    assert await cockpit.locator("#headline-accepted .figure").inner_text() == "3"

    # Paused, it holds still; resumed, it catches up.
    await cockpit.click("#live-toggle")
    assert await status.inner_text() == "paused"
    third = await track(site_page, "While Paused")
    await wait_events(amp, 4)
    await asyncio.sleep(4.5)  # two stream periods
    assert await cockpit.locator(f"#trail-rows a[href$='/events/{third}']").count() == 0
    await cockpit.click("#live-toggle")
    await cockpit.locator(f"#trail-rows a[href$='/events/{third}']").wait_for(timeout=WAIT_MS)

    # The trail page finds it by name; the session page links to it and draws the session.
    await cockpit.goto(debug(proxy, "/events?q=while+paused"))
    assert await cockpit.locator("#trail-rows tr").count() == 1
    await cockpit.click("#trail-rows a[href*='/sessions/']")
    assert await cockpit.locator("figure.timeline").get_attribute("data-sessions") == "1"
    assert await cockpit.locator(f"a[href$='/events/{third}']").count() == 1


async def test_the_pages_work_with_javascript_off(amp: FakeAmplitude, chromium: Any, context: Any, make_proxy) -> None:
    proxy = await make_proxy()
    site_page = await open_page(context, www(proxy))
    known = await track(site_page, "No Script Needed")
    await wait_events(amp, 2)
    plain = await chromium.new_context(java_script_enabled=False)
    try:
        page = await plain.new_page()
        await page.goto(debug(proxy))
        assert not await page.locator("#live-controls").is_visible()  # nothing to pause without the script
        assert await page.locator(f"#trail-rows a[href$='/events/{known}']").count() == 1
        assert await page.locator("#chart-accepted .chart-total").inner_text() == "2"
        assert await page.locator("h2:has-text('Live sessions') + table tr").count() >= 2
        await page.click(f"#trail-rows a[href$='/events/{known}']")
        assert "Identity decision" in await page.locator("body").inner_text()
    finally:
        await plain.close()
