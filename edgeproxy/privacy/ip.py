"""``[privacy] ip``: the visitor's IP as stored, applied before the spool (no full IP is kept)."""

from __future__ import annotations

import ipaddress
from typing import Any

IPV4_PREFIX = 24
IPV6_PREFIX = 48


def stored_ip(mode: str, value: Any) -> str | None:
    """The IP to keep for ``value`` under ``mode``; None: keep none.

    ``truncate`` zeroes the host part (IPv4 /24, IPv6 /48: the granularity Google Analytics'
    IP anonymisation and most DPAs accept; city-level geolocation still works). A value that is
    not an IP address cannot be truncated, so it is not kept either.
    """
    if mode == "full":
        return value if isinstance(value, str) else None
    if mode == "drop" or not isinstance(value, str):
        return None
    try:
        address = ipaddress.ip_address(value.strip())
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    prefix = IPV4_PREFIX if address.version == 4 else IPV6_PREFIX
    return str(ipaddress.ip_network(f"{address}/{prefix}", strict=False).network_address)


def apply_ip(mode: str, message: dict[str, Any]) -> None:
    """Rewrite (or remove) ``context.ip`` in place."""
    if mode == "full":
        return
    context = message.get("context")
    if not isinstance(context, dict) or "ip" not in context:
        return
    kept = stored_ip(mode, context["ip"])
    if kept is None:
        del context["ip"]
    else:
        context["ip"] = kept
