"""Where Segment's user-agent parser (``@amplitude/ua-parser-js`` 0.7.25) answers differently
from uap-core (the ``ua-parser`` package that does the heavy lifting), as data.

Learned from the reference's outputs (the conformance cases and the differential test's runs
of Segment's published destination), never from its source. Each rule says which family of
user agents it is for. ``useragent.py`` applies them; nothing here runs code.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final


class _Keep:
    """A field the rule leaves as the library found it."""

    def __repr__(self) -> str:
        return "KEEP"


KEEP: Final = _Keep()

# uap-core OS family -> the reference's os.name (None: the reference finds no OS).
OS_NAMES: dict[str, str | None] = {
    "Mac OS X": "Mac OS",
    "Chrome OS": "Chromium OS",
    "Web0S": "webOS",
    "BlackBerry OS": "BlackBerry",
    "ATV OS X": None,
    "Other": None,
}

# uap-core browser family -> the reference's browser.name (shown as os_name when no OS is found).
BROWSER_NAMES: dict[str, str | None] = {
    "Chrome Mobile": "Chrome",
    "Chrome Mobile iOS": "Chrome",
    "Firefox Mobile": "Firefox",
    "Firefox iOS": "Firefox",
    "Samsung Internet": "Samsung Browser",
    "Edge Mobile": "Edge",
    "Opera Mobile": "Opera Mobi",
    "BlackBerry WebKit": "Safari",
    "Other": None,
}

# uap-core families the reference does not detect as browsers (in-app browsers, web views,
# apps, HTTP libraries, bots): for these the reference falls back to the generic tokens of
# BROWSER_TOKENS. User agents that do not start like a browser's (below) and uap-core's
# spiders take the same path.
UNRECOGNISED_FAMILIES = frozenset({
    "Brave",  # iOS Brave says only "Brave": the reference reads Safari's Version/
    "Mobile Safari UI/WKWebView",  # iOS web views: AppleWebKit/ (or FxiOS/ when present): AppleWebKit/ (or FxiOS/ when present)
    "Chrome Mobile WebView",  # Android web views: Chrome/ with "; wv", else Version/
    "DuckDuckGo", "DuckDuckGo Mobile",
    "Snapchat", "Twitter", "LINE", "TikTok", "LinkedIn", "Pinterest", "Discord",
    "Huawei Browser",
    "Slack Desktop Client",  # Electron apps: the reference reads Electron/
    "Google",  # the Google app (GSA/): only its iOS form is known (BROWSER_TOKENS)
    "NetFront NX",
    "Roku",
    "Android",  # uap-core's name for Dalvik and other bare Android user agents
})
BROWSER_PREFIXES = ("Mozilla/", "Opera/")
TEXT_BROWSERS = frozenset({"Lynx", "Links", "w3m", "ELinks"})  # browsers without a Mozilla/ prefix


@dataclass(frozen=True)
class Token:
    """One step of the reference's generic browser detection, in its order: the first token
    present gives the browser's name and major version."""

    pattern: re.Pattern[str]
    name: str


def _t(pattern: str, name: str) -> Token:
    return Token(re.compile(pattern), name)


BROWSER_TOKENS: tuple[Token, ...] = (
    _t(r"\bFxiOS/(\d+)", "Firefox"),  # Firefox for iOS, even with a trailing Version/
    _t(r"\bCriOS/(\d+)", "Chrome"),
    _t(r"\bEdgiOS/(\d+)", "Edge"),
    _t(r"\(iP(?:hone|od|ad);.*\bGSA/(\d+)", "GSA"),  # the Google app on iOS
    _t(r"; wv\).*\bChrome/(\d+)", "Chrome WebView"),  # Android web views (TikTok, LINE, ...)
    _t(r"\bVersion/(\d+)[\w.]*\b.*\bSafari\b", "Safari"),  # Safari-like: iOS apps, Android stock views
    _t(r"\bElectron/(\d+)", "Electron"),  # Electron apps (Slack, ...)
    _t(r"\bSilk/(\d+)", "Silk"),
    _t(r"\bChrome/(\d+)", "Chrome"),  # Chromium-based apps (Huawei Browser, DuckDuckGo, GSA on Android)
    _t(r"\bAppleWebKit/(\d+)", "WebKit"),  # bare WebKit: iOS in-app views, GPTBot, consoles
)


@dataclass(frozen=True)
class Rule:
    """Field overrides for user agents matching ``pattern`` (``re.search``). ``model`` may
    name the pattern's groups (``\\1``). Every matching rule applies, in table order."""

    family: str
    pattern: re.Pattern[str]
    os: str | None | _Keep = KEEP
    vendor: str | None | _Keep = KEEP
    model: str | None | _Keep = KEEP
    type: str | None | _Keep = KEEP
    no_browser: bool = False


def _r(family: str, pattern: str, **fields: object) -> Rule:
    return Rule(family, re.compile(pattern), **fields)  # type: ignore[arg-type]


RULES: tuple[Rule, ...] = (
    # Consoles: the reference names the console as the OS and types it "console".
    _r("Xbox", r"\bXbox\b", os="Xbox", vendor="Microsoft", model="Xbox", type="console"),
    _r("Xbox One", r"\b(Xbox One)\b", model=r"\1"),
    _r("PlayStation", r"\bPlayStation\b", os="PlayStation", type="console"),
    _r("Nintendo Switch, 3DS, Wii U", r"\bNintendo\b", os="Nintendo", type="console"),
    # Smart TVs and streaming sticks: type "smarttv"; the OS name stands in for the model.
    _r("Samsung Tizen TVs", r"\bSMART-TV\b.*\bTizen\b", vendor=None, model=None, type="smarttv"),
    _r("Samsung Tizen TVs with Samsung's browser", r"\bSMART-TV\b.*\bSamsungBrowser/", vendor="Samsung"),
    _r("LG webOS TVs", r"\bWeb0S\b", vendor=None, model=None, type="smarttv"),
    _r("LG NetCast TVs", r"\bNetCast\b", vendor="LG", type="smarttv"),
    _r("Roku players", r"^Roku/(DVP-[\d.]+)", os=None, vendor="Roku", model=r"\1", type="smarttv"),
    _r("Chromecast", r"\bCrKey/", os="Android", vendor="Google", model="Chromecast", type="smarttv"),
    _r("Fire TV with Silk", r"; AFT(\w+) Build/.*\bSilk/", vendor="Amazon", model=r"\1", type="smarttv"),
    _r("Apple TV", r"\bApple ?TV(?:\d|\b)", vendor="Apple", model="Apple TV", type="smarttv"),
    _r("Apple TV media requests", r"^AppleCoreMedia/.*\blike Mac OS X\b", os="Mac OS"),
    # Mobile HTTP stacks and app user agents.
    _r("iOS apps through CFNetwork", r"\bCFNetwork/.*\bDarwin/", vendor=None, model=None, type=None),
    _r("iOS app user agents naming 'iOS n' (no 'iPhone OS')", r"^(?!Mozilla/)[^(]*\((?:[^;)]*; )*iOS \d", os=None),
    _r("Segment's analytics-android", r"^analytics-android/", os="android", type="mobile"),
    _r("Wget on Linux", r"^Wget/[\d.]+ \((linux)-gnu\)", os="linux"),
    _r("Lynx built with GnuTLS", r"^Lynx/.*\bGNUTLS/", os="GNU"),
    _r("KaiOS feature phones", r"\bKAIOS/", os="Android", vendor=None, model=None, type="mobile"),
    _r("BlackBerry 7 and older", r"\(BlackBerry; U; BlackBerry \d+", os=None, model=None),
    # Phones and tablets the two parsers attribute differently.
    _r("Lumia phones sold by Microsoft", r"; Microsoft; Lumia\b", vendor="Microsoft"),
    _r("Amazon Fire tablets", r"; (KF[A-Z]{2,5})(?: Build|\))", vendor="Amazon", model=r"\1", type="tablet"),
    _r("Samsung Galaxy Tab (SM-T)", r"; SM-T\w+(?: Build|\))", vendor="Samsung", type="tablet"),
    _r("Samsung Galaxy Tab S (SM-X)", r"; SM-X\w+(?: Build|\))", vendor="Samsung", type="mobile"),
    _r("LG phones (LM-)", r"; LM-\w+(?: Build|\))", vendor="LG"),
    _r("Motorola: the model keeps 'moto'", r"; (moto [^;]+?)(?: Build/|\) )", model=r"\1"),
    _r("Nokia: the model keeps its minor number", r"; Nokia ([\d.]+)(?: Build|\))", model=r"\1"),
    _r("OnePlus model codes", r"; (HD\d{4})(?: Build|\))", vendor=None, model=r"\1"),
    _r("Realme with a build id", r"; RMX\d+ Build/", vendor="Realme"),
    _r("Realme without one", r"; RMX\d+\)", vendor=None),
    _r("Huawei Y-series (CTR-)", r"; CTR-L\d+\)", vendor=None),
    _r("Huawei Browser: the model code", r"Android [\d.]+; ([^;)]+?)\).*\bHuaweiBrowser/", model=r"\1"),
    _r("Pixel names the reference does not know (Pixel 8 Pro, ...)", r"; Pixel[\daxl ]{0,6}+(?!\)|Build)[^;)]",
       vendor=None),
    _r("iPad desktop-mode web views", r"\(Macintosh;.*\bMobile/\w+", type="mobile"),
)

# uap-core device brands that the reference does not report as a vendor.
NO_VENDOR_BRANDS = frozenset({"Generic", "Generic_Android", "Generic_Android_Tablet", "Generic_Inettv", "Spider"})
# uap-core vendors that the reference spells differently.
VENDOR_NAMES = {"Oppo": "OPPO", "XiaoMi": "Xiaomi"}
# uap-core placeholder models: the reference reports no model for them (the OS stands in).
GENERIC_MODELS = frozenset({"Smartphone", "Tablet", "Feature Phone", "Desktop", "iOS-Device"})
# (brand, model) pairs that the reference does not report as a device at all (desktops).
DESKTOP_DEVICES = frozenset({("Apple", "Mac")})
# Device types by model and OS, as the reference types them.
TABLET_MODELS = ("iPad", "Kindle", "Nexus 7", "Nexus 9", "Nexus 10", "Pixel C")
MOBILE_MODELS = ("iPhone", "iPod")
MOBILE_OS = frozenset({"iOS", "Windows Phone", "BlackBerry", "BlackBerry OS", "KaiOS", "Firefox OS", "Symbian OS"})
# Android without a model the reference can read: typed by these words only.
ANDROID_MOBILE_WORDS = re.compile(r"\bMobile(?:;| Safari)")
ANDROID_TABLET_WORDS = re.compile(r"\bTablet;")
