"""User-agent parsing with the results of the reference's ``@amplitude/ua-parser-js`` 0.7.25.

We parse with the ``ua-parser`` package (uap-core regexes) and translate its answers to the
reference's through the declarative tables of ``useragent_rules``: names ("Mac OS X" is
"Mac OS"), browsers the reference does not know (apps, web views, HTTP libraries, bots: its
generic tokens decide), and the device families each parser attributes differently
(consoles, TVs, app HTTP stacks, a few phone brands). Parses are cached per user agent:
real traffic repeats a few hundred of them.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from ua_parser import parse

from .useragent_rules import (
    ANDROID_MOBILE_WORDS,
    ANDROID_TABLET_WORDS,
    BROWSER_NAMES,
    BROWSER_PREFIXES,
    BROWSER_TOKENS,
    DESKTOP_DEVICES,
    GENERIC_MODELS,
    KEEP,
    MOBILE_MODELS,
    MOBILE_OS,
    NO_VENDOR_BRANDS,
    OS_NAMES,
    RULES,
    TABLET_MODELS,
    TEXT_BROWSERS,
    UNRECOGNISED_FAMILIES,
    VENDOR_NAMES,
)

Parsed = tuple[str | None, str | None, str | None, str | None, str | None, str | None]


@lru_cache(maxsize=4096)
def _parse(user_agent: str) -> Parsed:
    """(os.name, browser.name, browser.major, device.vendor, device.model, device.type) in the reference's terms."""
    result = parse(user_agent)
    device = result.device
    spider = device is not None and device.brand == "Spider"
    os_name = OS_NAMES.get(result.os.family, result.os.family) if result.os is not None else None
    browser_name, browser_major = _browser(user_agent, result.user_agent, spider)
    vendor = model = device_type = None
    if device is not None and not spider and (device.brand, device.model) not in DESKTOP_DEVICES:
        generic = device.brand in NO_VENDOR_BRANDS
        if not (generic and user_agent.startswith("Dalvik/")):  # an app's Android stack: no readable device
            vendor = None if generic or device.brand is None else VENDOR_NAMES.get(device.brand, device.brand)
            model = None if device.model in GENERIC_MODELS else device.model or None
            device_type = _device_type(user_agent, os_name, device.brand, model)
    for rule in RULES:
        match = rule.pattern.search(user_agent)
        if match is None:
            continue
        if rule.os is not KEEP:
            os_name = rule.os  # type: ignore[assignment]
        if rule.vendor is not KEEP:
            vendor = rule.vendor  # type: ignore[assignment]
        if rule.model is not KEEP:
            model = match.expand(rule.model) if isinstance(rule.model, str) else None
        if rule.type is not KEEP:
            device_type = rule.type  # type: ignore[assignment]
    return (os_name, browser_name, browser_major, vendor, model, device_type)


def _browser(user_agent: str, found: Any, spider: bool) -> tuple[str | None, str | None]:
    """The library's browser when the reference knows it too, else the reference's generic tokens."""
    family = found.family if found is not None else None
    # A family with a "/" is uap-core's generic bot rule naming a URL's tail ("com/bot").
    known = (family is not None and family not in UNRECOGNISED_FAMILIES and "/" not in family
             and not spider and (user_agent.startswith(BROWSER_PREFIXES) or family in TEXT_BROWSERS))
    if known and family is not None:  # (known implies it; said for the type checker)
        name = BROWSER_NAMES.get(family, family)
        return name, (found.major if name else None)
    for token in BROWSER_TOKENS:
        match = token.pattern.search(user_agent)
        if match is not None:
            return token.name, match.group(1)
    return None, None


def _device_type(user_agent: str, os_name: str | None, brand: str | None, model: str | None) -> str | None:
    if model and model.startswith(TABLET_MODELS) or brand == "Generic_Android_Tablet" and model:
        return "tablet"
    if model and model.startswith(MOBILE_MODELS) or os_name in MOBILE_OS:
        return "mobile"
    if os_name == "Android":
        if model is None:  # no model to read: only the words of the user agent type it
            if ANDROID_MOBILE_WORDS.search(user_agent):
                return "mobile"
            return "tablet" if ANDROID_TABLET_WORDS.search(user_agent) else None
        mobile = "Mobile" in user_agent or user_agent.startswith("Dalvik/")
        return "mobile" if mobile else "tablet"
    return None


def _first(*values: Any) -> Any:
    """JavaScript's ``a ?? b ?? c``."""
    return next((v for v in values if v is not None), None)


def parse_user_agent_properties(user_agent: Any, user_agent_data: Any = None) -> dict[str, str]:
    """The reference's ``parseUserAgentProperties``: only the keys it would define."""
    if not user_agent or not isinstance(user_agent, str):
        return {}
    data = user_agent_data if isinstance(user_agent_data, dict) else {}
    platform_version, model = data.get("platformVersion"), data.get("model")
    if _cacheable(platform_version) and _cacheable(model):
        return dict(_properties(user_agent, platform_version, model))
    return dict(_properties.__wrapped__(user_agent, platform_version, model))


def _cacheable(hint: Any) -> bool:
    """Strings and None only: a cache key must not confuse ``1``, ``1.0`` and ``True``, or fail on a list."""
    return hint is None or type(hint) is str


@lru_cache(maxsize=2048)
def _properties(user_agent: str, platform_version: Any, model_hint: Any) -> tuple[tuple[str, Any], ...]:
    """Cached per (user agent, hints): a site sees few distinct browsers, each on every event."""
    os_name, browser_name, browser_major, vendor, model, device_type = _parse(user_agent)
    name = os_name if os_name is not None else browser_name
    version = _first(platform_version, browser_major)
    device_model = _first(model_hint, model, os_name)
    return tuple((key, value) for key, value in (("os_name", name), ("os_version", version),
                                                 ("device_manufacturer", vendor), ("device_model", device_model),
                                                 ("device_type", device_type)) if value is not None)
