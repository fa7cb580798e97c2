"""One field table per action: name -> type, label, nullability (the reference's ``fields``).

Why a table: the reference declares its fields the same way, and every generic step (empty-value
removal, type coercion, required checks, error wording that uses the label) is driven by it.
Default mappings are not here: they are data, loaded from ``defaults.json``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping


@dataclass(frozen=True)
class Field:
    label: str
    type: str  # "string" | "number" | "integer" | "boolean" | "object" | "datetime"
    allow_null: bool = False
    required: bool = False
    multiple: bool = False
    properties: Mapping[str, "Field"] | None = None  # declared sub-properties of an object
    item_path: str = ""  # a multiple field's JSON pointer, which names its items in errors ("/products")


def S(label: str, **kw: object) -> Field:
    return Field(label, "string", **kw)  # type: ignore[arg-type]


def _strings(*pairs: tuple[str, str]) -> dict[str, Field]:
    return {name: S(label) for name, label in pairs}


_UTM = _strings(("utm_source", "UTM Source"), ("utm_medium", "UTM Medium"), ("utm_campaign", "UTM Campaign"),
                ("utm_term", "UTM Term"), ("utm_content", "UTM Content"))
_REVENUE = {
    "price": Field("Price", "number"),
    "quantity": Field("Quantity", "integer"),
    "revenue": Field("Revenue", "number"),
    "productId": S("Product ID"),
    "revenueType": S("Revenue Type"),
}
_USER_AGENT_DATA = Field("User Agent Data", "object", properties=_strings(("model", "Model"), ("platformVersion", "PlatformVersion")))
_MIN_ID_LENGTH = Field("Minimum ID Length", "integer", allow_null=True)

# event-schema.ts: shared by logEvent, logEventV2 and logPurchase.
EVENT_SCHEMA: dict[str, Field] = {
    "user_id": S("User ID", allow_null=True),
    "device_id": S("Device ID"),
    "event_type": S("Event Type", required=True),
    "session_id": Field("Session ID", "datetime"),
    "time": Field("Timestamp", "datetime"),
    "event_properties": Field("Event Properties", "object"),
    "user_properties": Field("User Properties", "object"),
    "groups": Field("Groups", "object"),
    "app_version": S("App Version"),
    "platform": S("Platform"),
    "os_name": S("OS Name"),
    "os_version": S("OS Version"),
    "device_brand": S("Device Brand"),
    "device_manufacturer": S("Device Manufacturer"),
    "device_model": S("Device Model"),
    "carrier": S("Carrier"),
    "country": S("Country"),
    "region": S("Region"),
    "city": S("City"),
    "dma": S("Designated Market Area"),
    "language": S("Language"),
    **_REVENUE,
    "location_lat": Field("Latitude", "number"),
    "location_lng": Field("Longtitude", "number"),  # sic: the reference's label
    "ip": S("IP Address"),
    "idfa": S("Identifier For Advertiser (IDFA)"),
    "idfv": S("Identifier For Vendor (IDFV)"),
    "adid": S("Google Play Services Advertising ID"),
    "android_id": S("Android ID"),
    "event_id": Field("Event ID", "integer"),
    "insert_id": S("Insert ID"),
    "library": S("HIDDEN: Library"),
    "library2": Field("Library Settings", "object", properties=_strings(("behavior", "Behavior"), ("mapping", "Library Mapping"))),
}

_USER_AGENT_FIELDS: dict[str, Field] = {
    "userAgent": S("User Agent"),
    "userAgentParsing": Field("User Agent Parsing", "boolean"),
    "includeRawUserAgent": Field("Include Raw User Agent", "boolean"),
    "userAgentData": _USER_AGENT_DATA,
}
_PRODUCTS = Field("Products", "object", multiple=True, properties=_REVENUE, item_path="/products")
_UTM_PROPERTIES = Field("UTM Properties", "object", properties=_UTM)

LOG_EVENT_V2: dict[str, Field] = {
    **EVENT_SCHEMA,
    "products": _PRODUCTS,
    "setOnce": Field("Set Once", "object", properties={f"initial_{k}": S(f"Initial {v.label}") for k, v in
                                                      {"referrer": S("Referrer"), **_UTM}.items()}),
    "setAlways": Field("Set Always", "object", properties={"referrer": S("Referrer"), **_UTM}),
    "add": Field("Add", "object"),
    "use_batch_endpoint": Field("Use Batch Endpoint", "boolean"),
    **_USER_AGENT_FIELDS,
    "min_id_length": _MIN_ID_LENGTH,
}

LOG_EVENT: dict[str, Field] = {
    **EVENT_SCHEMA,
    "products": _PRODUCTS,
    "use_batch_endpoint": Field("Use Batch Endpoint", "boolean"),
    **_USER_AGENT_FIELDS,
    "utm_properties": _UTM_PROPERTIES,
    "referrer": S("Referrer"),
    "min_id_length": _MIN_ID_LENGTH,
}

LOG_PURCHASE: dict[str, Field] = {"trackRevenuePerProduct": Field("Track Revenue Per Product", "boolean"), **LOG_EVENT}

IDENTIFY_USER: dict[str, Field] = {
    "user_id": S("User ID", allow_null=True),
    "device_id": S("Device ID"),
    "user_properties": Field("User Properties", "object"),
    "groups": Field("Groups", "object"),
    **{k: EVENT_SCHEMA[k] for k in ("app_version", "platform", "os_name", "os_version", "device_brand",
                                     "device_manufacturer", "device_model", "carrier", "country", "region",
                                     "city", "dma", "language")},
    "paying": Field("Is Paying", "boolean"),
    "start_version": S("Initial Version"),
    "insert_id": S("Insert ID"),
    **_USER_AGENT_FIELDS,
    "utm_properties": _UTM_PROPERTIES,
    "referrer": S("Referrer"),
    "min_id_length": _MIN_ID_LENGTH,
    "library": S("Library"),
}

GROUP_IDENTIFY_USER: dict[str, Field] = {
    "user_id": S("User ID", allow_null=True),
    "device_id": S("Device ID"),
    "insert_id": S("Insert ID"),
    "time": S("Timestamp"),
    "group_properties": Field("Group Properties", "object"),
    "group_type": S("Group Type", required=True),
    "group_value": S("Group Value", required=True),
    "min_id_length": _MIN_ID_LENGTH,
}

MAP_USER: dict[str, Field] = {
    "user_id": S("User ID"),  # the alias's previousId by default; the reference's errors say "User ID"
    "global_user_id": S("Global User ID"),
    "min_id_length": _MIN_ID_LENGTH,
}

# Settings of the destination, validated before every event (the reference's onEvent path).
SETTINGS: dict[str, Field] = {
    "apiKey": S("API Key", required=True),
    "secretKey": S("Secret Key", required=True),
    "endpoint": S("Endpoint Region"),
}
REGIONS = ("north_america", "europe")
