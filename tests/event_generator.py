"""A seeded generator of realistic and odd Segment messages, for the differential mapping test.

Every library's shape (analytics.js, the mobile libraries, the server libraries), every
message type, revenue and products in their shapes, utm and referrers, client hints,
integrations session ids of every type, and the nulls and wrong types real traffic carries.
The same seed gives the same events, so a disagreement can be replayed by its index.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any, Callable

HERE = Path(__file__).parent
_UA_FILES = (HERE / "conformance" / "useragent-cases.jsonl", HERE / "conformance" / "useragent-families.jsonl")


def _user_agents() -> list[str]:
    agents: list[str] = []
    for path in _UA_FILES:
        for line in path.read_text().splitlines():
            if line:
                case = json.loads(line)
                agents.append(case["user_agent"] if "user_agent" in case else case["event"]["context"].get("userAgent"))
    return [a for a in dict.fromkeys(agents) if isinstance(a, str)]


USER_AGENTS = _user_agents()

LIBRARIES = [
    ("analytics.js", "next-1.84.3"), ("analytics-ios", "4.1.8"), ("analytics-android", "4.11.3"),
    ("analytics-kotlin", "1.16.3"), ("analytics-swift", "1.5.11"), ("@segment/analytics-react-native", "2.19.1"),
    ("analytics-flutter", "1.0.0"), ("@segment/analytics-node", "2.1.0"), ("analytics-python", "2.3.2"),
    ("analytics-go", "3.3.0"), ("analytics-java", "3.5.1"), ("analytics-ruby", "2.4.0"), ("analytics-php", "3.7.0"),
    ("analytics.NET", "3.8.1"), ("http", None),
]
EVENTS = ["Signup Clicked", "Product Viewed", "Order Completed", "Checkout Started", "Product Added",
          "Video Played", "Application Opened", "", " spaced ", "ünïcødé ✓", "Order Refunded"]
PAGES = ["Home", "Pricing", None, "", "Docs"]
CATEGORIES = ["Marketing", None, "Shop"]


class Generator:
    """``events(n)``: n messages from one seed; odd values appear with probability ``odd``."""

    def __init__(self, seed: int, odd: float = 0.15) -> None:
        self.rng = random.Random(seed)
        self.odd = odd

    def maybe(self, p: float = 0.5) -> bool:
        return self.rng.random() < p

    def pick(self, values: list[Any]) -> Any:
        return self.rng.choice(values)

    def weird(self) -> Any:
        """A value of the wrong type, as buggy clients send."""
        return self.pick([None, "", 0, -1, 1.5, True, False, "12", "abc", [], [1, "a"], {}, {"a": {"b": None}},
                          "2024-03-14T15:09:26.535Z", 10**16, "NaN"])

    def odd_or(self, make: Callable[[], Any]) -> Any:
        return self.weird() if self.maybe(self.odd) else make()

    def iso(self) -> str:
        t = 1_700_000_000 + self.rng.randrange(60_000_000)
        ms = self.rng.randrange(1000)
        from datetime import datetime, timezone
        stamp = datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
        return self.pick([f"{stamp}.{ms:03d}Z", f"{stamp}Z", f"{stamp}.{ms:03d}+02:00"])

    def session_id(self) -> Any:
        return self.pick([1710428966535, "1710428966535", -1, "-1", 0, None, 1.5, "abc", True, 99999999999999999,
                          {"id": 1}, [1710428966535], "  1710428966536 "])

    def products(self) -> Any:
        def product() -> dict[str, Any]:
            p: dict[str, Any] = {"product_id": self.odd_or(lambda: f"p-{self.rng.randrange(100)}"),
                                 "sku": self.pick(["SKU-1", None, 7]),
                                 "name": self.pick(["Mug", "Tee", None]),
                                 "price": self.odd_or(lambda: self.pick([9.99, 10, "12.50", 0, -3])),
                                 "quantity": self.odd_or(lambda: self.pick([1, 2, "3", 0]))}
            if self.maybe(0.3):
                p["revenue"] = self.pick([19.98, "5", None])
            if self.maybe(0.2):
                p["revenueType"] = self.pick(["Purchase", "Refund", 3])
            return {k: v for k, v in p.items() if not (v is None and self.maybe(0.5))}
        return self.pick([[product() for _ in range(self.rng.randrange(1, 4))], [], None, "not-a-list",
                          [product(), "bad", None]])

    def properties(self, kind: str, event: str | None) -> Any:
        props: dict[str, Any] = {}
        if kind == "track":
            if self.maybe(0.5):
                props["revenue"] = self.odd_or(lambda: self.pick([42.5, 10, "19.99", 0, -5]))
            if self.maybe(0.3):
                props["price"] = self.odd_or(lambda: self.pick([9.99, "3"]))
                props["quantity"] = self.odd_or(lambda: self.pick([2, "1"]))
            if self.maybe(0.2):
                props["productId"] = self.pick(["sku-9", 12, None])
            if self.maybe(0.2):
                props["revenueType"] = self.pick(["Purchase", "Refund", None])
            if self.maybe(0.2):
                props["currency"] = self.pick(["USD", "EUR", None])
            if event == "Order Completed" or self.maybe(0.3):
                props["products"] = self.products()
        if kind == "page" or self.maybe(0.2):
            props.update({"path": "/pricing", "url": "https://www.example.com/pricing?utm_source=x",
                          "referrer": self.pick(["https://www.google.com/", "", None]), "title": "Pricing"})
        props["plan"] = self.pick(["team", "free", None, 3])
        if self.maybe(0.2):
            props["nested"] = {"a": [1, {"b": None}], "c": self.weird()}
        return self.odd_or(lambda: props) if self.maybe(0.2) else props

    def context(self, library: tuple[str, str | None], web: bool) -> Any:
        name, version = library
        ctx: dict[str, Any] = {}
        if self.maybe(0.95):
            ctx["library"] = {"name": name, "version": version} if version else {"name": name}
        if web or self.maybe(0.3):
            if self.maybe(0.9):
                ctx["userAgent"] = self.odd_or(lambda: self.pick(USER_AGENTS))
            if self.maybe(0.3):
                ctx["userAgentData"] = self.odd_or(lambda: {
                    "brands": [{"brand": "Chromium", "version": "124"}], "mobile": self.maybe(),
                    "platform": self.pick(["Windows", "macOS", "Android"]),
                    **({"platformVersion": self.pick(["15.0.0", "14.4.1", ""])} if self.maybe(0.7) else {}),
                    **({"model": self.pick(["", "Pixel 8", "SM-S918B"])} if self.maybe(0.5) else {})})
            ctx["page"] = self.odd_or(lambda: {
                "path": "/", "url": self.pick(["https://www.example.com/?utm_source=news&utm_medium=email&utm_campaign=spring",
                                               "https://www.example.com/", "not a url", ""]),
                "referrer": self.pick(["https://www.google.com/search?q=x", "", None, "https://t.co/abc"]),
                "search": self.pick(["?utm_source=news", "", None]), "title": "Home"})
            if self.maybe(0.4):
                ctx["campaign"] = self.odd_or(lambda: {k: v for k, v in {
                    "source": "news", "medium": self.pick(["email", None]), "name": "spring",
                    "term": self.pick(["shoes", None]), "content": self.pick(["hero", 5])}.items()})
            if self.maybe(0.3):
                ctx["referrer"] = self.odd_or(lambda: {"type": "google", "id": "abc"})
        else:
            ctx["device"] = self.odd_or(lambda: {k: v for k, v in {
                "id": self.pick(["IDFV-0000-1111", "android-id-42", "", None]),
                "type": self.pick(["ios", "android", "Android", None]), "manufacturer": self.pick(["Apple", "Samsung", None]),
                "model": self.pick(["iPhone15,2", "SM-S918B", None]), "brand": self.pick(["Apple", None]),
                "advertisingId": self.pick(["ad-1", None]), "adTrackingEnabled": self.pick([True, False, None])}.items()})
            ctx["os"] = self.odd_or(lambda: {"name": self.pick(["iOS", "Android", None]), "version": self.pick(["17.4", "14", 14])})
            ctx["app"] = self.odd_or(lambda: {"name": "Shop", "version": self.pick(["5.2.1", 5, None]), "build": "521"})
            ctx["network"] = {"carrier": self.pick(["T-Mobile", None]), "wifi": self.maybe()}
            ctx["screen"] = {"width": 390, "height": 844}
        if self.maybe(0.6):
            ctx["ip"] = self.pick(["203.0.113.42", "2001:db8::1", "", None])
        if self.maybe(0.6):
            ctx["locale"] = self.pick(["en-US", "de-DE", "", None])
        if self.maybe(0.3):
            ctx["location"] = self.odd_or(lambda: {"country": "US", "region": "CA", "city": self.pick(["SF", None]),
                                                   "latitude": self.pick([37.7, "37.7", None]), "longitude": -122.4})
        if self.maybe(0.2):
            ctx["timezone"] = "America/Los_Angeles"
        if self.maybe(0.15):
            ctx["traits"] = {"email": "a@example.com", "plan": self.weird()}
        return self.odd_or(lambda: ctx) if self.maybe(0.1) else ctx

    def integrations(self) -> Any:
        if self.maybe(0.4):
            return {}
        ints: dict[str, Any] = {}
        if self.maybe(0.7):
            ints["Actions Amplitude"] = self.pick([{"session_id": self.session_id()}, {}, None, True, False,
                                                   {"session_id": self.session_id(), "other": 1}])
        if self.maybe(0.2):
            ints["All"] = self.pick([True, False])
        if self.maybe(0.1):
            ints["Amplitude"] = {"session_id": self.session_id()}
        return self.odd_or(lambda: ints) if self.maybe(0.1) else ints

    def event(self, index: int) -> dict[str, Any]:
        library = self.pick(LIBRARIES)
        web = library[0] == "analytics.js"
        kind = self.pick(["track"] * 5 + ["page"] * 2 + ["screen", "identify", "identify", "group", "alias"])
        if web and kind == "screen":
            kind = "page"
        msg: dict[str, Any] = {"type": kind, "messageId": self.odd_or(lambda: f"gen-{index}")}
        if self.maybe(0.8):
            msg["anonymousId"] = self.odd_or(lambda: f"anon-{self.rng.randrange(50)}")
        if self.maybe(0.6):
            msg["userId"] = self.odd_or(lambda: self.pick([f"user-{self.rng.randrange(50)}", "u@example.com", "1"]))
        if self.maybe(0.9):
            msg["timestamp"] = self.odd_or(self.iso)
        if self.maybe(0.3):
            msg["sentAt"] = self.iso()
        if self.maybe(0.2):
            msg["receivedAt"] = self.iso()
        if kind == "track":
            msg["event"] = self.odd_or(lambda: self.pick(EVENTS))
        elif kind in ("page", "screen"):
            name = self.pick(PAGES)
            if name is not None:
                msg["name"] = name
            if kind == "page" and self.maybe(0.4):
                msg["category"] = self.pick(CATEGORIES)
        elif kind == "group":
            msg["groupId"] = self.odd_or(lambda: f"org-{self.rng.randrange(9)}")
        elif kind == "alias":
            msg["previousId"] = self.odd_or(lambda: f"anon-{self.rng.randrange(50)}")
        if kind in ("identify", "group") or self.maybe(0.2):
            msg["traits"] = self.odd_or(lambda: {
                "email": "a@example.com", "plan": self.pick(["team", None]), "logins": self.pick([3, "3"]),
                "name": self.pick(["Ada", ""]), "company": {"name": "ACME", "size": 5},
                "utm_source": self.pick(["news", None])})
        if kind != "alias" or self.maybe(0.3):
            msg["properties"] = self.properties(kind, msg.get("event"))
        msg["context"] = self.context(library, web)
        msg["integrations"] = self.integrations()
        if self.maybe(0.05):
            msg[self.pick(["context", "properties", "traits", "integrations"])] = None  # present but null
        return msg

    def events(self, n: int) -> list[dict[str, Any]]:
        return [self.event(i) for i in range(n)]
