"""Consent, Segment's way: ``context.consent.categoryPreferences`` against the required
categories, and the browser's Global Privacy Control / Do Not Track signals (pure).

Segment Consent Management writes the visitor's choices into every event as
``context.consent.categoryPreferences`` (``{"analytics": true, "advertising": false}``).
An event *grants* the required categories when every one of them is ``true``; it *denies*
them when the preferences exist but any required category is not ``true`` (false, or not
answered: Segment treats an unanswered category as not consented); it is *absent* when the
event has no preferences object at all (a site without a consent manager, an old page).
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

GRANTED = "granted"
DENIED = "denied"
ABSENT = "absent"
GPC = "gpc"  # the browser's Sec-GPC / DNT signal, honoured as a denial
NOT_REQUIRED = "not_required"  # no categories configured and no signal honoured
STATES = (GRANTED, DENIED, ABSENT, GPC, NOT_REQUIRED)


def category_preferences(message: Mapping[str, Any]) -> dict[str, Any] | None:
    """The event's ``context.consent.categoryPreferences``, or None when it has none."""
    context = message.get("context")
    if not isinstance(context, dict):
        return None
    consent = context.get("consent")
    if not isinstance(consent, dict):
        return None
    prefs = consent.get("categoryPreferences")
    return prefs if isinstance(prefs, dict) else None


def consent_state(message: Mapping[str, Any], categories: Sequence[str]) -> str:
    """``granted``, ``denied`` or ``absent`` for the required ``categories``
    (``not_required`` when there are none)."""
    if not categories:
        return NOT_REQUIRED
    prefs = category_preferences(message)
    if prefs is None:
        return ABSENT
    return GRANTED if all(prefs.get(name) is True for name in categories) else DENIED


def privacy_signal(headers: Mapping[str, str]) -> bool:
    """The request carries Global Privacy Control (``Sec-GPC: 1``) or Do Not Track (``DNT: 1``)."""
    return headers.get("Sec-GPC", "").strip() == "1" or headers.get("DNT", "").strip() == "1"
