"""User-agent parsing with the results of the reference's ``@amplitude/ua-parser-js`` 0.7.25.

We parse with the ``ua-parser`` package (uap-core regexes) and translate its answers to
ua-parser-js's conventions through the small tables below, where the two libraries name or
detect things differently: "Mac OS X" is "Mac OS", desktops have no device, generic Android
brands are not vendors, crawlers are unknown, and ua-parser-js also reports a device type.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from ua_parser import parse

# uap-core OS family -> ua-parser-js os.name (None: ua-parser-js finds no OS).
OS_NAMES: dict[str, str | None] = {
    "Mac OS X": "Mac OS",
    "Chrome OS": "Chromium OS",
    "Other": None,
}
# uap-core browser family -> ua-parser-js browser.name.
BROWSER_NAMES: dict[str, str | None] = {
    "Chrome Mobile": "Chrome",
    "Chrome Mobile iOS": "Chrome",
    "Chrome Mobile WebView": "Chrome WebView",
    "Firefox Mobile": "Firefox",
    "Firefox iOS": "Firefox",
    "Samsung Internet": "Samsung Browser",
    "Edge Mobile": "Edge",
    "Opera Mobile": "Opera Mobi",
    "Other": None,
}
# uap-core device brands that ua-parser-js does not report as a vendor.
NO_VENDOR_BRANDS = frozenset({"Generic", "Generic_Android", "Generic_Android_Tablet", "Generic_Inettv", "Spider"})
# (brand, model) pairs that ua-parser-js does not report as a device at all (desktops).
DESKTOP_DEVICES = frozenset({("Apple", "Mac")})
# User agents for which ua-parser-js 0.7.25 finds no browser (uap-core reads "Android" from them).
NO_BROWSER_PREFIXES = ("Dalvik/",)
# Device type rules, first match wins: (field, value, type).
TABLET_MODELS = ("iPad", "Kindle", "Nexus 7", "Nexus 9", "Nexus 10", "Pixel C")
MOBILE_MODELS = ("iPhone", "iPod")
MOBILE_OS = frozenset({"iOS", "Windows Phone", "BlackBerry OS", "KaiOS", "Firefox OS", "Symbian OS"})


@lru_cache(maxsize=2048)
def _parse(user_agent: str) -> tuple[str | None, ...]:
    """(os.name, browser.name, browser.major, device.vendor, device.model, device.type) in ua-parser-js terms."""
    result = parse(user_agent)
    device = result.device
    if device is not None and device.brand == "Spider":
        return (None, None, None, None, None, None)  # type: ignore[return-value]
    os_name = None
    if result.os is not None:
        os_name = OS_NAMES.get(result.os.family, result.os.family)
    browser_name = browser_major = None
    if result.user_agent is not None and not user_agent.startswith(NO_BROWSER_PREFIXES):
        browser_name = BROWSER_NAMES.get(result.user_agent.family, result.user_agent.family)
        browser_major = result.user_agent.major if browser_name else None
    vendor = model = device_type = None
    if device is not None and (device.brand, device.model) not in DESKTOP_DEVICES:
        vendor = None if device.brand in NO_VENDOR_BRANDS else device.brand
        model = device.model or None
        device_type = _device_type(user_agent, os_name, device.brand, model)
    return (os_name, browser_name, browser_major, vendor, model, device_type)  # type: ignore[return-value]


def _device_type(user_agent: str, os_name: str | None, brand: str | None, model: str | None) -> str | None:
    if model and model.startswith(TABLET_MODELS) or brand == "Generic_Android_Tablet":
        return "tablet"
    if model and model.startswith(MOBILE_MODELS) or os_name in MOBILE_OS:
        return "mobile"
    if os_name == "Android":
        mobile = "Mobile" in user_agent or user_agent.startswith(NO_BROWSER_PREFIXES)
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
    os_name, browser_name, browser_major, vendor, model, device_type = _parse(user_agent)  # type: ignore[misc]
    name = os_name if os_name is not None else browser_name
    version = _first(platform_version, browser_major)
    device_model = _first(model_hint, model, os_name)
    return tuple((key, value) for key, value in (("os_name", name), ("os_version", version),
                                                 ("device_manufacturer", vendor), ("device_model", device_model),
                                                 ("device_type", device_type)) if value is not None)
