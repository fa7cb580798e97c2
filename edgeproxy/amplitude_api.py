"""Amplitude's ingestion endpoints and request bodies: the facts both mapping and delivery need.

One table of endpoints (as Segment's ``regional-endpoints.ts``) and one function that turns a
batch of items for one endpoint into the request Amplitude expects. The mapping layer uses it
to show requests (``edgeproxy map``); the delivery worker uses it to send them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence
from urllib.parse import urlencode

import orjson

REGIONS = ("north_america", "europe")

# endpoint -> {region: url}
ENDPOINTS: dict[str, dict[str, str]] = {
    "httpapi": {
        "north_america": "https://api2.amplitude.com/2/httpapi",
        "europe": "https://api.eu.amplitude.com/2/httpapi",
    },
    "batch": {
        "north_america": "https://api2.amplitude.com/batch",
        "europe": "https://api.eu.amplitude.com/batch",
    },
    "identify": {
        "north_america": "https://api2.amplitude.com/identify",
        "europe": "https://api.eu.amplitude.com/identify",
    },
    "groupidentify": {
        "north_america": "https://api2.amplitude.com/groupidentify",
        "europe": "https://api.eu.amplitude.com/groupidentify",
    },
    "usermap": {
        "north_america": "https://api.amplitude.com/usermap",
        "europe": "https://api.eu.amplitude.com/usermap",
    },
}

# Path of each endpoint, used with an ``endpoint_url`` base override (a local test server).
PATHS = {"httpapi": "/2/httpapi", "batch": "/batch", "identify": "/identify", "groupidentify": "/groupidentify", "usermap": "/usermap"}

JSON_ENDPOINTS = frozenset({"httpapi", "batch"})
FORM_ENDPOINTS = frozenset({"identify", "groupidentify", "usermap"})
# The form field that carries the JSON array of items on each form endpoint.
FORM_ITEMS_FIELD = {"identify": "identification", "groupidentify": "identification", "usermap": "mapping"}

JSON_CONTENT_TYPE = "application/json"
FORM_CONTENT_TYPE = "application/x-www-form-urlencoded;charset=UTF-8"


def endpoint_url(endpoint: str, region: str = "north_america", base_override: str = "") -> str:
    """The URL for ``endpoint``; ``base_override`` (e.g. ``http://127.0.0.1:9000``) replaces the host."""
    if base_override:
        return base_override.rstrip("/") + PATHS[endpoint]
    return ENDPOINTS[endpoint][region]


@dataclass(frozen=True)
class AmplitudeRequest:
    """One request ready to send: ``body`` is the readable form (JSON fields parsed)."""

    endpoint: str
    url: str
    content_type: str
    body: dict[str, Any]
    data: bytes


def build_request(
    endpoint: str,
    api_key: str,
    items: list[dict[str, Any]],
    options: dict[str, Any] | None,
    *,
    region: str = "north_america",
    base_override: str = "",
) -> AmplitudeRequest:
    """Build the request for a batch of items that share endpoint and options."""
    body: dict[str, Any] = {"api_key": api_key, "events" if endpoint in JSON_ENDPOINTS else FORM_ITEMS_FIELD[endpoint]: items}
    if options:
        body["options"] = options
    data = request_data(endpoint, api_key, [orjson.dumps(item) for item in items], options)
    return AmplitudeRequest(endpoint, endpoint_url(endpoint, region, base_override), content_type(endpoint), body, data)


def content_type(endpoint: str) -> str:
    return JSON_CONTENT_TYPE if endpoint in JSON_ENDPOINTS else FORM_CONTENT_TYPE


def request_data(endpoint: str, api_key: str, encoded_items: Sequence[bytes], options: dict[str, Any] | None) -> bytes:
    """The request body for items already encoded as JSON: spliced together, not re-encoded.

    The same bytes as encoding ``{"api_key", "events", "options"}`` with orjson (JSON
    endpoints), or the form ``api_key``, ``identification``/``mapping``, ``options`` with the
    items as one JSON array (form endpoints). The delivery worker sends the items as the
    spool stored them, so a batch costs a join instead of a decode and an encode per item.
    """
    items = b"[" + b",".join(encoded_items) + b"]"
    if endpoint in JSON_ENDPOINTS:
        tail = b',"options":' + orjson.dumps(options) + b"}" if options else b"}"
        return b'{"api_key":' + orjson.dumps(api_key) + b',"events":' + items + tail
    form = {"api_key": api_key, FORM_ITEMS_FIELD[endpoint]: items.decode()}
    if options:
        form["options"] = orjson.dumps(options).decode()
    return urlencode(form).encode()
