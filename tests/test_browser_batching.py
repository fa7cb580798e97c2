"""`[cdn] browser_batching` in real Chromium with the real analytics.js: the settings switch it
to its batching delivery strategy (one /v1/b request per batch), and no event is lost when the
visitor leaves before a batch is due: on navigation, on closing the tab, and past the batch
size. The batch timeout is set far beyond the test, so only those moments can send."""

from __future__ import annotations

from collections import Counter
from typing import Any

import orjson
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
    session_ids,
    site,
    www,
)
from fake_amplitude import FakeAmplitude
from test_e2e import wait_for

pytestmark = BROWSER_MARKS

TRACK = "analytics.track({name}, {{n: {n}}}).then(ctx => ctx.event.messageId)"


async def track_all(page: Any, prefix: str, count: int) -> list[str]:
    return [await run_js(page, TRACK.format(name=repr(f"{prefix} {n}"), n=n)) for n in range(count)]


TRACKING_CALLS = {"t", "p", "i", "g", "a", "s", "b", "batch"}


def watch_tracking_calls(context: Any) -> Counter:
    """The tracking calls the browser makes (any tab of ``context``), by the path's last part."""
    seen: Counter = Counter()

    def on_request(request: Any) -> None:
        last = request.url.split("?", 1)[0].rsplit("/", 1)[-1]
        if request.method == "POST" and "/v1/" in request.url and last in TRACKING_CALLS:
            seen[last] += 1

    context.on("request", on_request)
    return seen


async def test_batched_browser_events_survive_navigation_tab_close_and_bursts(
        amp: FakeAmplitude, context: Any, make_proxy) -> None:
    proxy = await make_proxy(cdn__browser_batching="true", cdn__browser_batch_timeout='"60s"')
    calls = watch_tracking_calls(context)
    page = await open_page(context, www(proxy))
    settings = await run_js(page, "fetch('/_e/v1/projects/' + analytics.settings.writeKey + '/settings')"
                                  ".then(r => r.json())")
    assert settings["integrations"]["Segment.io"]["deliveryStrategy"] == {
        "strategy": "batching", "config": {"size": 10, "timeout": 60000}}

    sent = await track_all(page, "Before Navigation", 3)  # + the page view: 4 waiting in the buffer
    assert amp.ingested("httpapi") == [], "nothing is due yet: the batch is not full and its timeout far"
    await page.goto(www(proxy, "/second"))  # pagehide: the buffer goes out with keepalive
    await page.wait_for_function(READY, timeout=WAIT_MS)
    await wait_for(lambda: len(amp.ingested("httpapi")) >= 4, timeout=WAIT_MS / 1000)

    sent += await track_all(page, "Burst", 12)  # the 10th event fills a batch: sent at once
    await wait_for(lambda: len(amp.ingested("httpapi")) >= 4 + 10, timeout=WAIT_MS / 1000)
    sent += await track_all(page, "Before Close", 2)  # 2 + the page view + the burst's last 3
    await page.close()  # the tab closes: pagehide flushes what is left
    expected = len(sent) + 2  # and the two page views

    await wait_for(lambda: len(amp.ingested("httpapi")) >= expected, timeout=WAIT_MS / 1000)
    events = amp.ingested("httpapi")
    ids = Counter(e["insert_id"] for e in events)
    assert set(sent) <= set(ids), f"lost: {sorted(set(sent) - set(ids))}"
    assert len(ids) == expected and max(ids.values()) == 1, "each event once"
    assert len(session_ids(events)) == 1 and len({e["device_id"] for e in events}) == 1
    # Playwright sees the full batch's request; the flushes at page hide leave with the page.
    assert calls["b"] >= 1 and set(calls) == {"b"}, f"analytics.js sends batches only: {calls}"


async def test_without_the_option_the_settings_keep_one_request_per_event(amp: FakeAmplitude, context: Any,
                                                                          make_proxy) -> None:
    proxy = await make_proxy()
    calls = watch_tracking_calls(context)
    page = await open_page(context, www(proxy))
    settings = orjson.loads(await run_js(page, "fetch('/_e/v1/projects/' + analytics.settings.writeKey + "
                                               "'/settings').then(r => r.text())"))
    assert "deliveryStrategy" not in settings["integrations"]["Segment.io"]
    await track_all(page, "Plain", 1)
    await wait_for(lambda: len(amp.ingested("httpapi")) >= 2, timeout=WAIT_MS / 1000)
    assert calls == Counter({"p": 1, "t": 1})
