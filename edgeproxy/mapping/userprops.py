"""User properties: utm and referrer as ``$set``/``$setOnce``, and the ``$setOnce``/``$set``/``$add`` fields.

Two different rules exist in the reference and both are reproduced: logEventV2 *replaces* an
operator object with a non-empty mapped one, while logEvent, logPurchase and identifyUser
*merge* utm/referrer into ``$set``/``$setOnce`` key by key (the order decides who wins).
"""

from __future__ import annotations

from typing import Any, Mapping


def utm_operators(utm: Any) -> dict[str, dict[str, Any]]:
    """``convertUTMProperties``: each utm_* goes to ``$set`` and ``initial_utm_*`` to ``$setOnce``."""
    if not isinstance(utm, dict) or not utm:
        return {}
    return {"$set": dict(utm), "$setOnce": {f"initial_{k}": v for k, v in utm.items()}}


def referrer_operators(referrer: Any) -> dict[str, dict[str, Any]]:
    """``convertReferrerProperty``: a truthy referrer is both last touch and first touch."""
    if not referrer:
        return {}
    return {"$set": {"referrer": referrer}, "$setOnce": {"initial_referrer": referrer}}


def _as_object(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def merge_user_properties(*parts: dict[str, Any]) -> dict[str, Any]:
    """``mergeUserProperties``: later parts win, ``$set`` and ``$setOnce`` merge key by key."""
    out: dict[str, Any] = {}
    set_: dict[str, Any] = {}
    set_once: dict[str, Any] = {}
    for part in parts:  # (isinstance inline rather than _as_object: this runs on every identify event)
        out.update(part)
        value = part.get("$set")
        if isinstance(value, dict):
            set_.update(value)
        value = part.get("$setOnce")
        if isinstance(value, dict):
            set_once.update(value)
    out["$set"] = set_
    out["$setOnce"] = set_once
    return out


def wants_utm_merge(payload: Mapping[str, Any]) -> bool:
    """The merge runs only when utm_properties has a key or the referrer is truthy."""
    return bool(_as_object(payload.get("utm_properties"))) or bool(payload.get("referrer"))


def traits_without_merge_keys(user_properties: Any) -> dict[str, Any]:
    return {k: v for k, v in _as_object(user_properties).items() if k not in ("utm_properties", "referrer")}


def is_compact_nonempty(obj: Any) -> bool:
    """``compact()``: at least one truthy value (JavaScript truthiness)."""
    if not isinstance(obj, dict):
        return False
    for value in obj.values():  # a loop, not any(genexpr): this runs three times per logEventV2 event
        if value or isinstance(value, (dict, list)):  # objects and arrays are truthy in JavaScript, even when empty
            return True
    return False


def apply_operator_fields(user_properties: Any, operators: list[tuple[str, Any]]) -> Any:
    """logEventV2: each non-empty operator object replaces the same operator from traits.

    The reference merges one operator at a time; merging them all at once gives the same keys
    in the same order (traits first, then each new operator in turn) with one dict built.
    """
    replacements = {name: obj for name, obj in operators if is_compact_nonempty(obj)}
    if not replacements:
        return user_properties
    return {**_as_object(user_properties), **replacements}
