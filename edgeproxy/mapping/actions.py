"""The six actions: for each, its field table and its ``perform`` (validated payload -> items).

Everything generic (directives, empty-value removal, coercion) happened before ``perform``;
what is left here is each action's own small rule set, written as in the reference: which
payload keys become Amplitude keys, time and session conversion, platform/library rules,
user-property operators, revenue. Deliberate differences (SPEC section 4): ``insert_id``
defaults to the message id, and the leaked ``use_batch_endpoint``/``products`` keys are not
copied into events.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from . import fields as F
from .coerce import dayjs_utc_ms, format_session_id
from .fields import Field
from .revenue import REVENUE_KEYS, product_events, revenue_properties
from .useragent import parse_user_agent_properties
from .userprops import (
    apply_operator_fields,
    merge_user_properties,
    referrer_operators,
    traits_without_merge_keys,
    utm_operators,
    wants_utm_merge,
)

Item = tuple[str, dict[str, Any], dict[str, Any] | None]  # (endpoint, item, options)

# Payload keys that steer an action and never become Amplitude keys themselves.
_CONTROL_KEYS = frozenset({
    "time", "session_id", "userAgent", "userAgentParsing", "includeRawUserAgent", "userAgentData",
    "min_id_length", "library", "library2", "setOnce", "setAlways", "add", "utm_properties", "referrer",
    "products", "trackRevenuePerProduct", "use_batch_endpoint", *REVENUE_KEYS,
})
_IOS = re.compile("ios", re.IGNORECASE)
_ANDROID = re.compile("android", re.IGNORECASE)


@dataclass(slots=True)
class Context:
    """What perform needs besides the payload: the message id to default insert_id from.

    Slotted, not frozen: built once per message, and never changed by an action."""

    message_id: str | None


def options_for(payload: Mapping[str, Any]) -> dict[str, Any] | None:
    """``options`` only when min_id_length is a positive number (0 and null are ignored)."""
    n = payload.get("min_id_length")
    return {"min_id_length": n} if isinstance(n, (int, float)) and not isinstance(n, bool) and n > 0 else None


def _platform(payload: Mapping[str, Any], platform: Any) -> Any:
    """First ``ios`` -> ``iOS``, first ``android`` -> ``Android``; empty + analytics.js -> ``Web``."""
    if platform:
        platform = _ANDROID.sub("Android", _IOS.sub("iOS", platform, count=1), count=1)
    if payload.get("library") == "analytics.js" and not platform:
        platform = "Web"
    return platform


def _library(payload: Mapping[str, Any]) -> Any:
    library2 = payload.get("library2")
    if isinstance(library2, dict) and library2.get("behavior") == "use_mapping":
        return library2.get("mapping")
    return "segment"


def _user_agent_keys(payload: Mapping[str, Any]) -> dict[str, Any]:
    """A fresh dict (callers build the item on it): parsed user-agent keys, then the raw one."""
    out: dict[str, Any] = {}
    if payload.get("userAgentParsing"):
        out = parse_user_agent_properties(payload.get("userAgent"), payload.get("userAgentData"))
    if payload.get("includeRawUserAgent") and payload.get("userAgent") is not None:
        out["user_agent"] = payload["userAgent"]
    return out


def _event_properties(payload: Mapping[str, Any], props: dict[str, Any] | None = None) -> dict[str, Any]:
    """The mapped keys an event carries, with time, session and platform converted.

    Added to ``props`` when given: the user-agent keys an event starts with, so that the result
    is ``{**user agent keys, **properties}`` without building the properties as a dict of their own.
    """
    if props is None:
        props = {k: v for k, v in payload.items() if k not in _CONTROL_KEYS}
    else:
        for k, v in payload.items():
            if k not in _CONTROL_KEYS:
                props[k] = v
    platform = _platform(payload, payload.get("platform"))  # not a control key: the value just copied
    if platform:
        props["platform"] = platform
    time = payload.get("time")
    if time:
        ms = dayjs_utc_ms(time)
        if ms is not None:
            props["time"] = ms
    session_id = payload.get("session_id")
    if session_id:
        ms = dayjs_utc_ms(session_id)
        # formatSessionId after the validity check: for a non-string it is that same dayjs value
        value = ms if ms is None or not isinstance(session_id, str) else format_session_id(session_id)
        if value is not None:
            props["session_id"] = value
    return props


def _merge_utm(props: dict[str, Any], payload: Mapping[str, Any]) -> None:
    if wants_utm_merge(payload):
        props["user_properties"] = merge_user_properties(
            utm_operators(payload.get("utm_properties")),
            referrer_operators(payload.get("referrer")),
            traits_without_merge_keys(props.get("user_properties")),
        )


def _finish(event: dict[str, Any], library: Any, insert_id: Any) -> dict[str, Any]:
    if library is not None:
        event["library"] = library
    if "insert_id" not in event and insert_id:
        event["insert_id"] = insert_id
    return event


def _events_endpoint(payload: Mapping[str, Any]) -> str:
    return "batch" if payload.get("use_batch_endpoint") else "httpapi"


def log_event_v2(payload: dict[str, Any], ctx: Context) -> list[Item]:
    event = _event_properties(payload, _user_agent_keys(payload))
    user_properties = apply_operator_fields(payload.get("user_properties"), [
        ("$setOnce", payload.get("setOnce")), ("$set", payload.get("setAlways")), ("$add", payload.get("add"))])
    if user_properties is not None:
        event["user_properties"] = user_properties
    return [(_events_endpoint(payload), _finish(event, _library(payload), ctx.message_id), options_for(payload))]


def log_event(payload: dict[str, Any], ctx: Context) -> list[Item]:
    event = _event_properties(payload, _user_agent_keys(payload))
    _merge_utm(event, payload)
    return [(_events_endpoint(payload), _finish(event, _library(payload), ctx.message_id), options_for(payload))]


def log_purchase(payload: dict[str, Any], ctx: Context) -> list[Item]:
    props = _event_properties(payload)
    _merge_utm(props, payload)
    products = payload.get("products") or []
    per_product = bool(payload.get("trackRevenuePerProduct"))
    main = _user_agent_keys(payload)
    main.update(props)
    if not (products and per_product):
        main.update(revenue_properties(payload))
    library = _library(payload)
    events = [_finish(main, library, ctx.message_id)]
    mapped_insert_id = props.get("insert_id")
    base = dict(props)
    if library is not None:
        base["library"] = library
    events += product_events(base, products, per_product, mapped_insert_id or ctx.message_id)
    endpoint, options = _events_endpoint(payload), options_for(payload)
    return [(endpoint, e, options) for e in events]


_IDENTIFY_EXCLUDED = frozenset({"utm_properties", "referrer", "user_properties", "userAgent", "userAgentParsing",
                                "includeRawUserAgent", "userAgentData", "min_id_length", "library"})


def identify_user(payload: dict[str, Any], ctx: Context) -> list[Item]:
    rest = {k: v for k, v in payload.items() if k not in _IDENTIFY_EXCLUDED}
    platform = _platform(payload, rest.get("platform"))
    if platform:
        rest["platform"] = platform
    user_properties = payload.get("user_properties")
    if wants_utm_merge(payload):
        user_properties = merge_user_properties(traits_without_merge_keys(user_properties),
                                                utm_operators(payload.get("utm_properties")),
                                                referrer_operators(payload.get("referrer")))
    item = _user_agent_keys(payload)
    item.update(rest)
    if user_properties is not None:
        item["user_properties"] = user_properties
    item["library"] = "segment"
    return [("identify", item, options_for(payload))]


def group_identify_user(payload: dict[str, Any], ctx: Context) -> list[Item]:
    association = {payload["group_type"]: payload["group_value"]}
    options = options_for(payload)
    out: list[Item] = []
    if payload.get("user_id") or payload.get("device_id"):
        identify: dict[str, Any] = {"groups": association, "library": "segment", "user_properties": dict(association)}
        for key in ("device_id", "insert_id", "user_id"):
            if key in payload:
                identify[key] = payload[key]
        if "time" in payload:  # without a timestamp the reference uses the clock; Amplitude does the same
            identify["time"] = dayjs_utc_ms(payload["time"])
        out.append(("identify", identify, options))
    group = {"group_value": payload["group_value"], "group_type": payload["group_type"], "library": "segment"}
    if "group_properties" in payload:
        group["group_properties"] = payload["group_properties"]
    out.append(("groupidentify", group, options))
    return out


def map_user(payload: dict[str, Any], ctx: Context) -> list[Item]:
    return [("usermap", dict(payload), options_for(payload))]


@dataclass(frozen=True)
class Action:
    name: str
    fields: Mapping[str, Field]
    perform: Callable[[dict[str, Any], Context], list[Item]]


ACTIONS: dict[str, Action] = {
    "logEventV2": Action("logEventV2", F.LOG_EVENT_V2, log_event_v2),
    "logEvent": Action("logEvent", F.LOG_EVENT, log_event),
    "logPurchase": Action("logPurchase", F.LOG_PURCHASE, log_purchase),
    "identifyUser": Action("identifyUser", F.IDENTIFY_USER, identify_user),
    "groupIdentifyUser": Action("groupIdentifyUser", F.GROUP_IDENTIFY_USER, group_identify_user),
    "mapUser": Action("mapUser", F.MAP_USER, map_user),
}
