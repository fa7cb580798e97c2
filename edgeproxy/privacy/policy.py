"""One event's privacy verdict: delivered to Amplitude or not (and why), anonymised or not,
and what the response does to the identifier cookies (pure; ``decide``).

The rules, in order:

1. A known bot (``bots``) with ``drop_bots``: not delivered (``bot``).
2. ``honor_gpc`` and the request says ``Sec-GPC: 1`` or ``DNT: 1``: consent denied (``gpc``),
   whatever the event's preferences say.
3. ``consent_categories`` set: an event that denies them is not delivered
   (``consent_denied``); one without preferences follows ``events_without_consent``: ``send``
   (Segment's behaviour), ``drop`` (``no_consent``) or ``anonymous`` (track, page and screen
   delivered with no user id and a per-session device id; identify, group and alias describe
   a person, so they are not delivered: ``no_consent``).

Cookies: with ``cookies_before_consent`` (the default) they are set as always, except for an
anonymous event (no identifier may link its visit to another). Without it they are set only
for an event that grants consent, expired by one that denies it (or by GPC), and left alone
by one that says nothing. The Segment relay is not governed here: Segment enforces consent
for its own destinations from the same ``context.consent``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from edgeproxy.privacy.consent import ABSENT, DENIED, GPC, GRANTED, consent_state
from edgeproxy.privacy.settings import PrivacyConfig

SET_COOKIES = "set"
NO_COOKIES = "none"
EXPIRE_COOKIES = "expire"

# Why an event was not delivered to Amplitude (the ``reason`` label of the withheld counter).
BOT = "bot"
CONSENT_DENIED = "consent_denied"
NO_CONSENT = "no_consent"
GPC_REASON = "gpc"
REASONS = (CONSENT_DENIED, NO_CONSENT, GPC_REASON, BOT)
ANONYMOUS_TYPES = frozenset({"track", "page", "screen"})


@dataclass(frozen=True, slots=True)
class Rules:
    """A source's ``[privacy]``, resolved once (``Source.privacy``)."""

    consent_categories: tuple[str, ...] = ()
    events_without_consent: str = "send"
    cookies_before_consent: bool = True
    honor_gpc: bool = False
    ip: str = "full"
    drop_bots: bool = False

    @classmethod
    def from_config(cls, cfg: PrivacyConfig) -> Rules:
        return cls(tuple(cfg.consent_categories), cfg.events_without_consent, cfg.cookies_before_consent,
                   cfg.honor_gpc, cfg.ip, cfg.drop_bots)

    @property
    def active(self) -> bool:
        """Any rule that can withhold an event or change it (the edge skips the rest otherwise)."""
        return bool(self.consent_categories) or self.honor_gpc or self.drop_bots or self.ip != "full" \
            or not self.cookies_before_consent


@dataclass(frozen=True, slots=True)
class Verdict:
    consent: str  # consent.STATES
    deliver: bool  # to Amplitude
    anonymous: bool  # delivered without user id, IP or lasting device id
    reason: str | None  # why not delivered (REASONS), None when delivered
    cookies: str  # SET_COOKIES | NO_COOKIES | EXPIRE_COOKIES
    bot: str | None  # bots.bot_kind of the user agent, whether or not it is dropped


ALLOW = Verdict("not_required", True, False, None, SET_COOKIES, None)  # no rule applies


def decide(message: Mapping[str, Any], rules: Rules, *, signal: bool = False, bot: str | None = None) -> Verdict:
    """The verdict for one normalized message; ``signal``: the request's GPC/DNT, ``bot``: its kind."""
    consent = GPC if rules.honor_gpc and signal else consent_state(message, rules.consent_categories)
    anonymous = consent == ABSENT and rules.events_without_consent == "anonymous" \
        and message.get("type") in ANONYMOUS_TYPES
    reason = None
    if bot is not None and rules.drop_bots:
        reason = BOT
    elif consent == GPC:
        reason = GPC_REASON
    elif consent == DENIED:
        reason = CONSENT_DENIED
    elif consent == ABSENT and rules.events_without_consent != "send" and not anonymous:
        reason = NO_CONSENT
    return Verdict(consent, reason is None, anonymous and reason is None, reason, _cookies(rules, consent, anonymous), bot)


def _cookies(rules: Rules, consent: str, anonymous: bool) -> str:
    if anonymous or (consent == ABSENT and rules.events_without_consent == "anonymous"):
        return NO_COOKIES
    if rules.cookies_before_consent:
        return SET_COOKIES
    if consent == GRANTED:
        return SET_COOKIES
    if consent in (DENIED, GPC):
        return EXPIRE_COOKIES
    return NO_COOKIES
