"""logPurchase's revenue rule and its one "Product Purchased" event per product.

Kept apart because it is the one piece of arithmetic in the mapping and the one place that
turns a single Segment event into several Amplitude events.
"""

from __future__ import annotations

import math
from typing import Any

from .coerce import normalize_number

REVENUE_KEYS = ("revenue", "price", "productId", "quantity", "revenueType")
PRODUCT_EVENT_TYPE = "Product Purchased"


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def revenue_properties(x: dict[str, Any]) -> dict[str, Any]:
    """``getRevenueProperties``: price x quantity wins over revenue; nothing when revenue is 0 or absent."""
    revenue = x.get("revenue")
    quantity: Any = x.get("quantity")  # numbers when _is_number says so (Any: no float coercion when compiled)
    price: Any = x.get("price")
    if _is_number(quantity) and _is_number(price):
        revenue = normalize_number(quantity * price)
    if not revenue or revenue != revenue:  # falsy, or NaN
        return {}
    out: dict[str, Any] = {"revenue": revenue}
    revenue_type = x.get("revenueType")
    out["revenueType"] = "Purchase" if revenue_type is None else revenue_type
    if _is_number(quantity):
        out["quantity"] = _js_round(quantity)
    for key in ("price", "productId"):
        if x.get(key) is not None:
            out[key] = x[key]
    return out


def _js_round(value: int | float) -> int:
    """``Math.round``: halves go up, also for negatives (-2.5 -> -2)."""
    return int(math.floor(value + 0.5))


def product_events(base: dict[str, Any], products: list[dict[str, Any]], per_product_revenue: bool,
                   insert_id: Any, first_index: int = 2) -> list[dict[str, Any]]:
    """One event per product: the mapped fields, the product as event_properties, optional revenue."""
    events = []
    for n, product in enumerate(products, start=first_index):
        event = dict(base)
        if per_product_revenue:
            event.update(revenue_properties(product))
        event["event_properties"] = product
        event["event_type"] = PRODUCT_EVENT_TYPE
        event.pop("insert_id", None)
        if insert_id:
            event["insert_id"] = f"{insert_id}-{n}"
        events.append(event)
    return events
