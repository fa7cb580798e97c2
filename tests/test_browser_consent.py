"""Real Chromium, real analytics.js, consent given after the first page (an EU site's config).

The consent step is what Segment Consent Management's wrapper does: an enrichment plugin that
writes the visitor's ``context.consent.categoryPreferences`` into every event. Before it the
edge sets no identifier cookie and delivers nothing; after it the cookies are set and events
reach Amplitude in one session; a revocation expires the cookies and stops delivery.
"""

from __future__ import annotations

import json
import urllib.request
from typing import Any

from browser_fixtures import (  # noqa: F401  (amp, chromium, context, make_proxy, site: pytest fixtures)
    BROWSER_MARKS,
    SERVER_COOKIES,
    amp,
    chromium,
    context,
    cookies_of,
    events,
    make_proxy,
    open_page,
    run_js,
    site,
    wait_events,
    www,
)
from fake_amplitude import FakeAmplitude
from test_e2e import wait_for

pytestmark = BROWSER_MARKS

CONSENT_PLUGIN = """
window.prefs = %s;
analytics.register({
  name: 'Consent Management (test)', type: 'enrichment', version: '1.0.0',
  isLoaded: () => true, load: () => Promise.resolve(),
  ...Object.fromEntries(['track', 'page', 'identify', 'group', 'alias', 'screen'].map(type => [type, ctx => {
    ctx.event.context = ctx.event.context || {};
    ctx.event.context.consent = {categoryPreferences: window.prefs};
    return ctx;
  }])),
}).then(() => true)
"""
EU = {"privacy__consent_categories": '["analytics"]', "privacy__cookies_before_consent": "false",
      "privacy__events_without_consent": '"drop"', "privacy__ip": '"truncate"'}


def debug(proxy: Any) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{proxy.port}/debug?format=json", timeout=10) as resp:
        return json.loads(resp.read())


async def test_no_identifier_cookie_or_delivery_before_consent_then_one_session_after(
        amp: FakeAmplitude, context: Any, make_proxy) -> None:
    proxy = await make_proxy(**EU)
    page = await open_page(context, www(proxy))  # analytics.js sends its page view without consent
    await wait_for(lambda: any(r["outcome"] == "withheld" for r in debug(proxy)["privacy"]), timeout=30)
    before = await cookies_of(context, www(proxy))
    assert not set(SERVER_COOKIES) & set(before), before
    await run_js(page, "analytics.track('Browsed Before Consent')")
    await wait_for(lambda: len(debug(proxy)["privacy"]) >= 2, timeout=30)
    assert {r["reason"] for r in debug(proxy)["privacy"]} == {"no_consent"}
    assert not set(SERVER_COOKIES) & set(await cookies_of(context, www(proxy)))

    await run_js(page, CONSENT_PLUGIN % '{"analytics": true, "advertising": false}')  # the visitor accepts
    await run_js(page, "analytics.track('Consent Given')")
    after = await cookies_of(context, www(proxy))
    assert {"_ep_did", "_ep_sess", "analytics_session_id"} <= set(after)
    await run_js(page, "analytics.page()")
    delivered = await wait_events(amp, 2)
    anonymous_id = await run_js(page, "analytics.user().anonymousId()")
    assert [e["event_type"] for e in delivered] == ["Consent Given", "Viewed "]  # the Page preset, no name
    assert {e["device_id"] for e in delivered} == {anonymous_id}
    assert len({e["session_id"] for e in delivered}) == 1
    # The session began with the first (withheld) page view: the server kept it without cookies.
    assert delivered[0]["session_id"] == int(after["analytics_session_id"]["value"])
    assert all(e.get("ip", "").endswith(".0") for e in delivered)  # truncated before the spool

    await run_js(page, "window.prefs = {analytics: false}; true")  # the visitor withdraws consent
    await run_js(page, "analytics.track('Consent Withdrawn')")
    gone = await cookies_of(context, www(proxy))
    assert not {"_ep_did", "_ep_sess", "analytics_session_id"} & set(gone), gone
    await run_js(page, "window.prefs = {analytics: true}; true")
    await run_js(page, "analytics.track('Consent Given Again')")
    await wait_events(amp, 3)
    assert [e["event_type"] for e in events(amp)] == ["Consent Given", "Viewed ", "Consent Given Again"]
    reasons = [r["reason"] for r in debug(proxy)["privacy"]]
    assert reasons.count("consent_denied") == 1 and reasons.count("no_consent") == 2
    print(f"\nconsent_browser: withheld before consent={reasons.count('no_consent')}, "
          f"after revocation={reasons.count('consent_denied')}, delivered={len(events(amp))}")
