"""The privacy rules as pure functions: consent states, the verdict table, IP truncation, bots,
anonymisation. Exhaustive where the input space is small (every combination of settings)."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings, strategies as st

from edgeproxy.privacy.anonymous import anonymous_message, anonymous_secret, session_device_id
from edgeproxy.privacy.bots import KINDS, RULES, bot_kind, load_rules
from edgeproxy.privacy.consent import ABSENT, DENIED, GPC, GRANTED, NOT_REQUIRED, consent_state, privacy_signal
from edgeproxy.privacy.ip import stored_ip
from edgeproxy.privacy.policy import EXPIRE_COOKIES, NO_COOKIES, SET_COOKIES, Rules, decide
from edgeproxy.privacy.settings import PrivacyConfig, privacy_problems


def msg(prefs=None, type_="track", **extra):
    m = {"type": type_, "event": "Clicked", "messageId": "m1", "anonymousId": "anon-1", "userId": "u-1",
         "context": {"ip": "203.0.113.77", "traits": {"email": "a@example.com"}, "library": {"name": "analytics.js"}}}
    if prefs is not None:
        m["context"]["consent"] = {"categoryPreferences": prefs}
    m.update(extra)
    return m


@pytest.mark.parametrize("prefs, state", [
    (None, ABSENT),
    ({"analytics": True}, GRANTED),
    ({"analytics": True, "advertising": False}, GRANTED),
    ({"analytics": False}, DENIED),
    ({"advertising": True}, DENIED),  # analytics not answered: not consented
    ({"analytics": "true"}, DENIED),  # only the JSON true counts
    ({}, DENIED),
])
def test_consent_state_against_one_category(prefs, state) -> None:
    assert consent_state(msg(prefs), ["analytics"]) == state


def test_every_listed_category_must_be_true() -> None:
    assert consent_state(msg({"analytics": True, "functional": True}), ["analytics", "functional"]) == GRANTED
    assert consent_state(msg({"analytics": True, "functional": False}), ["analytics", "functional"]) == DENIED
    assert consent_state(msg({"analytics": False}), []) == NOT_REQUIRED


def test_malformed_consent_objects_read_as_absent() -> None:
    for context in ({"consent": "yes"}, {"consent": {"categoryPreferences": ["analytics"]}}, None, "x"):
        assert consent_state({"type": "track", "context": context}, ["analytics"]) == ABSENT


@pytest.mark.parametrize("headers, expected", [
    ({}, False), ({"Sec-GPC": "1"}, True), ({"DNT": "1"}, True), ({"Sec-GPC": "0", "DNT": "0"}, False),
    ({"Sec-GPC": " 1 "}, True),
])
def test_privacy_signal(headers, expected) -> None:
    assert privacy_signal(headers) is expected


CONSENTS = {"granted": {"analytics": True}, "denied": {"analytics": False}, "absent": None}


@pytest.mark.parametrize("categories, without, before, gpc_honoured, signal, drop_bots, bot, consent, type_",
                         list(itertools.product([(), ("analytics",)], ["send", "drop", "anonymous"], [True, False],
                                                [False, True], [False, True], [False, True], [None, "ai"],
                                                list(CONSENTS), ["track", "identify"])))
def test_the_verdict_table(categories, without, before, gpc_honoured, signal, drop_bots, bot, consent, type_) -> None:
    """Every combination of settings and inputs, against the rules written out plainly."""
    rules = Rules(categories, without, before, gpc_honoured, "full", drop_bots)
    v = decide(msg(CONSENTS[consent], type_), rules, signal=signal, bot=bot)
    gpc = gpc_honoured and signal
    state = GPC if gpc else (consent if categories else NOT_REQUIRED)
    anonymous_ok = state == ABSENT and without == "anonymous" and type_ == "track"
    if bot and drop_bots:
        reason = "bot"
    elif gpc:
        reason = "gpc"
    elif state == DENIED:
        reason = "consent_denied"
    elif state == ABSENT and without != "send" and not anonymous_ok:
        reason = "no_consent"
    else:
        reason = None
    assert (v.consent, v.reason, v.deliver, v.bot) == (state, reason, reason is None, bot)
    assert v.anonymous == (anonymous_ok and reason is None)
    if state == ABSENT and without == "anonymous":
        assert v.cookies == NO_COOKIES  # nothing may link an anonymous visit to another
    elif before:
        assert v.cookies == SET_COOKIES
    else:
        assert v.cookies == {GRANTED: SET_COOKIES, DENIED: EXPIRE_COOKIES, GPC: EXPIRE_COOKIES}.get(state, NO_COOKIES)


@settings(max_examples=300, deadline=None)
@given(prefs=st.one_of(st.none(), st.dictionaries(st.sampled_from(["analytics", "advertising", "functional"]),
                                                   st.one_of(st.booleans(), st.none(), st.text(max_size=3)))),
       without=st.sampled_from(["send", "drop", "anonymous"]), signal=st.booleans(), type_=st.sampled_from(
           ["track", "page", "screen", "identify", "group", "alias"]))
def test_no_event_denying_a_required_category_is_ever_delivered(prefs, without, signal, type_) -> None:
    rules = Rules(("analytics", "functional"), without, False, True, "full", False)
    v = decide(msg(prefs, type_), rules, signal=signal)
    granted = prefs is not None and prefs.get("analytics") is True and prefs.get("functional") is True
    if v.deliver and not v.anonymous:
        assert granted and not signal or (prefs is None and without == "send" and not signal)
    if v.anonymous:
        assert prefs is None and not signal and type_ in ("track", "page", "screen")
    if v.cookies == SET_COOKIES:
        assert granted and not signal


@pytest.mark.parametrize("mode, ip, kept", [
    ("full", "203.0.113.77", "203.0.113.77"),
    ("truncate", "203.0.113.77", "203.0.113.0"),
    ("truncate", "2001:db8:abcd:12:1:2:3:4", "2001:db8:abcd::"),
    ("truncate", "::ffff:198.51.100.9", "198.51.100.0"),
    ("truncate", "not an ip", None),
    ("truncate", 12, None),
    ("drop", "203.0.113.77", None),
])
def test_stored_ip(mode, ip, kept) -> None:
    assert stored_ip(mode, ip) == kept


@pytest.mark.parametrize("ua, kind", [
    ("Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)", "search"),
    ("Mozilla/5.0 AppleWebKit/537.36 (KHTML, like Gecko); compatible; ClaudeBot/1.0; +claudebot@anthropic.com", "ai"),
    ("Mozilla/5.0 AppleWebKit/537.36 (KHTML, like Gecko; compatible; GPTBot/1.2; +https://openai.com/gptbot)", "ai"),
    ("facebookexternalhit/1.1 (+http://www.facebook.com/externalhit_uatext.php)", "social"),
    ("Mozilla/5.0 (compatible; AhrefsBot/7.0; +http://ahrefs.com/robot/)", "seo"),
    ("Mozilla/5.0+(compatible; UptimeRobot/2.0; http://www.uptimerobot.com/)", "monitor"),
    ("Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) HeadlessChrome/131.0.0.0 Safari/537.36",
     "headless"),
    ("curl/8.5.0", "tool"),
    ("Mozilla/5.0 (compatible; BrandNewCrawler/0.1; +https://example.com/bot)", "spider"),  # ua-parser's Spider
])
def test_bots_by_kind(ua, kind) -> None:
    assert bot_kind(ua) == kind


BROWSERS = [
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/18.1 Safari/605.1.15",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 18_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/18.1 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.6778.81 Mobile Safari/537.36",
    "Mozilla/5.0 (X11; Ubuntu; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36 Edg/131.0.0.0",
    "Mozilla/5.0 (Linux; Android 14; SM-S918B) AppleWebKit/537.36 (KHTML, like Gecko) SamsungBrowser/26.0 Chrome/122.0.0.0 Mobile Safari/537.36",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_6 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148 [FBAN/FBIOS;FBAV/480.0]",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_6 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148 Instagram 350.0",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Slack/4.41.105 Chrome/130.0 Electron/33.2.0 Safari/537.36",
]


@pytest.mark.parametrize("ua", BROWSERS)
def test_real_browsers_and_in_app_browsers_are_not_bots(ua) -> None:
    assert bot_kind(ua) is None


def test_the_bot_list_is_well_formed() -> None:
    assert len(RULES) > 100 and set(KINDS) >= {"search", "social", "ai", "seo", "monitor", "headless", "spider"}
    assert len({s.lower() for _, s in RULES}) == len(RULES), "a substring is listed twice"
    with pytest.raises(ValueError, match="line 2"):
        load_rules("search Googlebot\nbroken\n")


def test_anonymous_message_keeps_no_identifier() -> None:
    m = msg({"analytics": True}, context={"ip": "1.2.3.4", "traits": {"email": "x"}, "device": {"id": "d", "advertisingId": "ad",
                                                                                                "model": "Pixel"},
                                          "page": {"path": "/p"}}, traits={"email": "x"}, previousId="p")
    out = anonymous_message(m, "visit-id")
    assert out["anonymousId"] == "visit-id" and "userId" not in out and "traits" not in out and "previousId" not in out
    assert out["context"] == {"device": {"model": "Pixel"}, "page": {"path": "/p"}}
    assert m["userId"] == "u-1" and m["context"]["ip"] == "1.2.3.4"  # the original is untouched (the relay's)


def test_anonymous_device_ids_are_per_session_and_unlinkable() -> None:
    secret = anonymous_secret("k" * 32)
    a1 = session_device_id(secret, "browser-a", 1_700_000_000_000, 0)
    assert a1 == session_device_id(secret, "browser-a", 1_700_000_000_000, 5)  # one visit: one id
    assert a1 != session_device_id(secret, "browser-a", 1_700_000_999_000, 0)  # the next visit: another
    assert a1 != session_device_id(anonymous_secret("j" * 32), "browser-a", 1_700_000_000_000, 0)
    assert a1 != session_device_id(secret, "browser-b", 1_700_000_000_000, 0)
    day = session_device_id(secret, "server", None, 86_400_000 * 3 + 5)
    assert day == session_device_id(secret, "server", None, 86_400_000 * 3 + 9_000) != \
        session_device_id(secret, "server", None, 86_400_000 * 4)


@pytest.mark.parametrize("cfg, problem", [
    (PrivacyConfig(events_without_consent="ask"), "privacy.events_without_consent: must be one of"),
    (PrivacyConfig(ip="hash"), "privacy.ip: must be one of"),
    (PrivacyConfig(consent_categories=["ok", ""]), "privacy.consent_categories[1]"),
    (PrivacyConfig(cookies_before_consent=False), "privacy.cookies_before_consent: false needs privacy.consent_categories"),
])
def test_privacy_problems(cfg, problem) -> None:
    [found] = privacy_problems(cfg)
    assert found.startswith(problem)
    assert privacy_problems(PrivacyConfig(consent_categories=["analytics"], cookies_before_consent=False)) == []


def _load(tmp_path, text: str, env: dict | None = None):
    from edgeproxy.config import load_settings

    path = tmp_path / "edgeproxy.toml"
    path.write_text(text)
    return load_settings(path, env=env or {})


def test_privacy_config_keys_env_and_per_source_overrides(tmp_path) -> None:
    from edgeproxy.sources import SourceTable

    settings = _load(tmp_path, """
[privacy]
consent_categories = ["analytics"]
ip = "truncate"
[[sources]]
name = "us"
write_keys = ["wk-us"]
[sources.privacy]
consent_categories = []
honor_gpc = true
""", env={"EDGEPROXY_PRIVACY__DROP_BOTS": "true", "EDGEPROXY_SOURCES__US__PRIVACY__EVENTS_WITHOUT_CONSENT": "drop"})
    table = SourceTable(settings)
    assert table.default.privacy == Rules(("analytics",), "send", True, False, "truncate", True)
    # A source replaces the keys it sets; the rest are the flat section's.
    assert table.get("us").privacy == Rules((), "drop", True, True, "truncate", True)
    env = _load(tmp_path, "", env={"EDGEPROXY_PRIVACY__CONSENT_CATEGORIES": "analytics,functional"})
    assert env.privacy.consent_categories == ["analytics", "functional"]


def test_privacy_config_problems_name_their_key(tmp_path) -> None:
    from edgeproxy.config import ConfigError

    with pytest.raises(ConfigError) as caught:
        _load(tmp_path, """
[privacy]
ip = "hash"
colour = "blue"
[[sources]]
name = "eu"
write_keys = ["wk-eu"]
[sources.privacy]
cookies_before_consent = false
events_without_consent = 3
""")
    problems = caught.value.problems
    assert any(p.startswith('privacy.ip: must be one of "full", "truncate", "drop"') for p in problems)
    assert "privacy.colour: unknown key" in problems
    assert any(p.startswith("sources[0].privacy.events_without_consent: expected a string") for p in problems)
    assert any(p.startswith("sources[0].privacy.cookies_before_consent: false needs sources[0].privacy.consent_categories")
               for p in problems)
