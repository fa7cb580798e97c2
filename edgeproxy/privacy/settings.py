"""The ``[privacy]`` section (and a source's ``[sources.privacy]``), and its validation.

Kept out of ``config.py`` so the privacy rules depend on nothing but themselves; ``config``
imports this dataclass into ``Settings``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

EVENTS_WITHOUT_CONSENT = ("send", "drop", "anonymous")
IP_MODES = ("full", "truncate", "drop")
_CATEGORY_RE = re.compile(r"^[A-Za-z0-9_. -]{1,64}\Z")


@dataclass
class PrivacyConfig:
    # Consent categories (Segment Consent Management's categoryPreferences keys) that must all
    # be true for an event to reach Amplitude; empty: consent is not checked.
    consent_categories: list[str] = field(default_factory=list)
    events_without_consent: str = "send"  # "send" (Segment's behaviour) | "drop" | "anonymous"
    cookies_before_consent: bool = True  # false: no identifier cookie until an event carries consent
    honor_gpc: bool = False  # Sec-GPC: 1 / DNT: 1 treated as consent denied
    ip: str = "full"  # "full" | "truncate" (IPv4 /24, IPv6 /48) | "drop"
    drop_bots: bool = False  # known bots and crawlers are not delivered (counted and shown either way)


def privacy_problems(cfg: PrivacyConfig, where: str = "privacy") -> list[str]:
    """Every problem of one privacy section, each named by its key."""
    problems = []
    if not isinstance(cfg.consent_categories, list):
        problems.append(f"{where}.consent_categories: must be a list of category names, e.g. [\"analytics\"]")
    else:
        for i, name in enumerate(cfg.consent_categories):
            if not isinstance(name, str) or not _CATEGORY_RE.match(name):
                problems.append(f"{where}.consent_categories[{i}]: must be a category name such as \"analytics\" "
                                f"(1-64 letters, digits, space, '_', '.', '-'), got {name!r}")
    if cfg.events_without_consent not in EVENTS_WITHOUT_CONSENT:
        problems.append(f"{where}.events_without_consent: must be one of \"send\", \"drop\", \"anonymous\", "
                        f"got {cfg.events_without_consent!r}")
    if cfg.ip not in IP_MODES:
        problems.append(f"{where}.ip: must be one of \"full\", \"truncate\", \"drop\", got {cfg.ip!r}")
    if not cfg.cookies_before_consent and not cfg.consent_categories:
        problems.append(f"{where}.cookies_before_consent: false needs {where}.consent_categories (the categories "
                        f"an event must carry before cookies are set), e.g. [\"analytics\"]")
    return problems
