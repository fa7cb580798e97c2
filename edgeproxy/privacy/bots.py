"""Bot and crawler classification of a user agent (pure; the list is data, ``bots.txt``).

Two sources, in order: the substrings of ``bots.txt`` (kept here: search engines, social
previews, AI crawlers, SEO crawlers, uptime monitors, headless browsers, HTTP tools), then
ua-parser's ``Spider`` device family (uap-core's own crawler rules) for the long tail.
Segment's Amplitude destination does not send ``user_agent`` by default, so Amplitude's own
bot filter cannot see any of this: the edge is the only place it can be done.
"""

from __future__ import annotations

import re
from functools import lru_cache
from importlib import resources

from ua_parser import parse

SPIDER = "spider"  # ua-parser's Spider family, not in the list
MAX_USER_AGENT = 1024  # longer strings are classified by their first 1 KB


def load_rules(text: str) -> list[tuple[str, str]]:
    """``(kind, substring)`` pairs from the data file's lines; '#' starts a comment."""
    rules = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        kind, _, substring = line.partition(" ")
        if not substring.strip():
            raise ValueError(f"bots.txt line {number}: expected '<kind> <substring>', got {line!r}")
        rules.append((kind, substring.strip()))
    return rules


def _compile(rules: list[tuple[str, str]]) -> re.Pattern[str]:
    """One alternation with a named group per kind: one regex scan per user agent."""
    by_kind: dict[str, list[str]] = {}
    for kind, substring in rules:
        by_kind.setdefault(kind, []).append(re.escape(substring))
    return re.compile("|".join(f"(?P<{kind}>{'|'.join(alts)})" for kind, alts in by_kind.items()), re.IGNORECASE)


RULES = load_rules(resources.files(__package__).joinpath("bots.txt").read_text(encoding="utf-8"))
KINDS = tuple(dict.fromkeys(kind for kind, _ in RULES)) + (SPIDER,)
_PATTERN = _compile(RULES)


@lru_cache(maxsize=4096)
def bot_kind(user_agent: str | None) -> str | None:
    """The bot kind (``"search"``, ``"ai"``, …, ``"spider"``) of a user agent, or None for a browser."""
    if not user_agent:
        return None
    user_agent = user_agent[:MAX_USER_AGENT]
    match = _PATTERN.search(user_agent)
    if match is not None:
        return match.lastgroup
    device = parse(user_agent).device
    return SPIDER if device is not None and device.brand == "Spider" else None
