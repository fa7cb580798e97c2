"""Amplitude's User Privacy API (v1): deletion requests for ``edgeproxy forget``.

``POST {base}/api/2/deletions/users`` with Basic auth ``api_key:secret_key`` and a JSON body
``{"user_ids": [...], "requester": ..., "ignore_invalid_id": "True"}``, at most 100 ids per
request; the answer (200) lists the scheduled deletion jobs. Hosts are the regional ones of
Segment's Amplitude destination (``regional-endpoints.ts``: ``amplitude.com`` and
``analytics.eu.amplitude.com``, not the ingestion hosts). A spooled item is one user id; the
worker batches them like any other item, so deletions are durable and retried.
"""

from __future__ import annotations

import base64
from typing import Any, Sequence

import orjson

from edgeproxy.delivery.classify import DeadReason, Verdict

ENDPOINT = "deletions"
PATH = "/api/2/deletions/users"
URLS = {"north_america": "https://amplitude.com" + PATH, "europe": "https://analytics.eu.amplitude.com" + PATH}
MAX_IDS = 100  # per request
REQUESTER = "edgeproxy forget"


def url(region: str, base_override: str = "") -> str:
    return base_override.rstrip("/") + PATH if base_override else URLS[region]


def basic_auth(api_key: str, secret_key: str) -> str:
    return "Basic " + base64.b64encode(f"{api_key}:{secret_key}".encode()).decode()


def deletion_item(user_id: str) -> dict[str, Any]:
    """The spooled item for one person (``user_id`` as Amplitude knows it)."""
    return {"user_id": user_id}


def request_body(items: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One request's body; an unknown user id (a person whose events never reached Amplitude)
    must not fail the others, hence ``ignore_invalid_id``."""
    user_ids = list(dict.fromkeys(str(item["user_id"]) for item in items))
    return {"user_ids": user_ids, "requester": REQUESTER, "ignore_invalid_id": "True"}


def encode(items: Sequence[dict[str, Any]]) -> bytes:
    return orjson.dumps(request_body(items))


def classify(status: int | None, body: bytes, n: int, transport_error: str = "") -> Verdict:
    """2xx: scheduled. 400: the request was refused (dead-lettered with Amplitude's words).
    401/403: wrong api_key/secret_key, retried after the operator fixes them. Others retry."""
    if status is None:
        return Verdict("retry", backoff=tuple(range(n)), error=transport_error or "no response")
    if 200 <= status < 300:
        return Verdict("ok", ack=tuple(range(n)))
    text = body[:300].decode("utf-8", "replace").strip() if body else ""
    error = f"{status}: {text}" if text else str(status)
    if status == 400:
        reason = DeadReason("rejected", f"Amplitude deletions: {error}")
        return Verdict("dead", dead={i: reason for i in range(n)}, error=error)
    if status == 429:
        return Verdict("throttled", backoff=tuple(range(n)), retry_after=30.0, error=f"rate limited: {error}")
    return Verdict("retry", backoff=tuple(range(n)), error=error, config_problem=status in (401, 403, 404))
