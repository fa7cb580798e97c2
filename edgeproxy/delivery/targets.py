"""Delivery targets: who a spooled item goes to, and how that service is spoken to.

The spool is one queue whose items are tagged with a target (``"amplitude"``, or
``"segment"`` for the relay to Segment's tracking API) and a source; the worker batches a
group of items and hands it to the group's ``Target``, which knows the service's request
(URL, body, headers, limits) and how to read its answer (a ``Verdict``). The worker knows
only this interface: the retries, backoff, dead letters and the response log are the same
for every target, so a new target is one small class here plus its API module.

``build_targets`` makes one target per configured (target, source): each source's Amplitude
project unless ``amplitude.enabled = false``, and its relay when ``relay_url`` is set.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Protocol, Sequence

from edgeproxy import amplitude_privacy_api, segment_api
from edgeproxy.amplitude_api import build_request, content_type, endpoint_url, request_data
from edgeproxy.delivery.classify import Verdict, classify
from edgeproxy.delivery.ratelimit import RateLimiter
from edgeproxy.delivery.records import ClaimedItem
from edgeproxy.sources import Relay, Source, SourceTable

AMPLITUDE = "amplitude"
SEGMENT = "segment"
DELETIONS = "deletions"  # Amplitude's User Privacy API (edgeproxy forget)
TARGETS = (AMPLITUDE, SEGMENT, DELETIONS)

AMPLITUDE_MAX_BODY_BYTES = 1_000_000 - 8_192  # Amplitude: "under 1 MB"; the margin covers api_key and options
MAX_EVENTS = 2_000  # Amplitude: "< 2,000 events" on /2/httpapi, 2,000 on /batch
ENDPOINT_MAX_ITEMS = {"groupidentify": 1_024}


def amplitude_max_items(endpoint: str, batch_size: int) -> int:
    return max(1, min(batch_size, MAX_EVENTS - 1 if endpoint == "httpapi" else MAX_EVENTS,
                      ENDPOINT_MAX_ITEMS.get(endpoint, MAX_EVENTS)))


@dataclass(frozen=True)
class OutboundRequest:
    """One request to send; ``compress``: gzip ``data`` (off the event loop) and say so."""

    url: str
    data: bytes
    headers: Mapping[str, str]
    compress: bool = False


class Target(Protocol):
    kind: str  # "amplitude" | "segment": the metrics label and the spool's target column
    source: str
    name: str  # for logs: "Amplitude", "Segment relay (source staging)"
    max_body_bytes: int
    max_item_bytes: int  # an item larger than this can never be sent: dead-lettered unsent
    limiter: RateLimiter
    config_hint: str  # which keys to check when the service refuses the configuration

    @property
    def sink(self) -> bool:
        """Deliver to the local sink (/debug) instead of the network (read-only: may be computed)."""

    def max_items(self, endpoint: str, batch_size: int) -> int: ...

    def request(self, endpoint: str, options: dict[str, Any] | None, batch: Sequence[ClaimedItem],
                now_ms: int) -> OutboundRequest: ...

    def readable(self, endpoint: str, options: dict[str, Any] | None, batch: Sequence[ClaimedItem]) -> dict[str, Any]:
        """The request body as /debug's sink shows it."""

    def classify(self, endpoint: str, status: int | None, body: bytes, headers: Mapping[str, str], n: int,
                 transport_error: str) -> Verdict: ...

    def redact(self, text: str) -> str: ...


def _where(source: str) -> str:
    return "" if source == "default" else f" (source {source})"


@dataclass
class AmplitudeTarget:
    """One Amplitude project: HTTP API v2 and the form endpoints (``amplitude_api``)."""

    source: str
    api_key: str
    region: str = "north_america"
    endpoint_url: str = ""
    rate_limit: float = 0.0
    kind: str = AMPLITUDE
    max_body_bytes: int = AMPLITUDE_MAX_BODY_BYTES
    max_item_bytes: int = AMPLITUDE_MAX_BODY_BYTES
    limiter: RateLimiter = field(init=False)

    def __post_init__(self) -> None:
        self.limiter = RateLimiter(self.rate_limit)
        prefix = "amplitude" if self.source == "default" else f"sources[{self.source}].amplitude"
        self.config_hint = f"check {prefix}.api_key, {prefix}.region and {prefix}.endpoint_url"
        self.name = "Amplitude" + _where(self.source)

    @property
    def sink(self) -> bool:
        return not self.api_key

    def max_items(self, endpoint: str, batch_size: int) -> int:
        return amplitude_max_items(endpoint, batch_size)

    def request(self, endpoint: str, options: dict[str, Any] | None, batch: Sequence[ClaimedItem],
                now_ms: int) -> OutboundRequest:
        data = request_data(endpoint, self.api_key, [c.raw for c in batch], options)  # stored JSON, spliced
        return OutboundRequest(endpoint_url(endpoint, self.region, self.endpoint_url), data,
                               {"Content-Type": content_type(endpoint)})

    def readable(self, endpoint: str, options: dict[str, Any] | None, batch: Sequence[ClaimedItem]) -> dict[str, Any]:
        return build_request(endpoint, self.api_key, [c.item for c in batch], options, region=self.region,
                             base_override=self.endpoint_url).body

    def classify(self, endpoint: str, status: int | None, body: bytes, headers: Mapping[str, str], n: int,
                 transport_error: str) -> Verdict:
        return classify(endpoint, status, body, n, transport_error=transport_error)

    def redact(self, text: str) -> str:
        """Amplitude echoes a wrong API key in its error ("Invalid API key: <key>")."""
        return text.replace(self.api_key, "***") if self.api_key and text else text


@dataclass
class SegmentTarget:
    """Segment's tracking API: ``POST {relay_url}/v1/batch``, gzip, Basic auth (``segment_api``)."""

    source: str
    relay: Relay
    kind: str = SEGMENT
    sink: bool = False
    max_body_bytes: int = segment_api.MAX_BODY_BYTES
    max_item_bytes: int = segment_api.MAX_ITEM_BYTES
    limiter: RateLimiter = field(default_factory=lambda: RateLimiter(0))

    def __post_init__(self) -> None:
        prefix = "segment" if self.source == "default" else f"sources[{self.source}].segment"
        self.config_hint = f"check {prefix}.relay_url and {prefix}.relay_write_key (or the sources' write keys)"
        self.name = "Segment relay" + _where(self.source)

    def max_items(self, endpoint: str, batch_size: int) -> int:
        return max(1, min(batch_size, segment_api.MAX_ITEMS))

    def write_key(self, options: dict[str, Any] | None) -> str:
        """``relay_write_key``, else the key the messages came with (stored as the group's options)."""
        return self.relay.write_key or str((options or {}).get("write_key") or "")

    def request(self, endpoint: str, options: dict[str, Any] | None, batch: Sequence[ClaimedItem],
                now_ms: int) -> OutboundRequest:
        data = segment_api.request_body([(c.raw, c.received_ms) for c in batch], now_ms)
        headers = {"Content-Type": "application/json", "Authorization": segment_api.basic_auth(self.write_key(options)),
                   "User-Agent": "edgeproxy"}
        return OutboundRequest(segment_api.url(self.relay.url), data, headers, compress=True)

    def readable(self, endpoint: str, options: dict[str, Any] | None, batch: Sequence[ClaimedItem]) -> dict[str, Any]:
        return {"batch": [c.item for c in batch]}

    def classify(self, endpoint: str, status: int | None, body: bytes, headers: Mapping[str, str], n: int,
                 transport_error: str) -> Verdict:
        return segment_api.classify(status, body, n, headers, transport_error=transport_error)

    def redact(self, text: str) -> str:
        key = self.relay.write_key
        return text.replace(key, "***") if key and text else text


@dataclass
class DeletionTarget:
    """An Amplitude project's User Privacy API: deletion requests (``amplitude_privacy_api``)."""

    source: str
    api_key: str
    secret_key: str
    region: str = "north_america"
    endpoint_url: str = ""
    kind: str = DELETIONS
    sink: bool = False
    max_body_bytes: int = 1_000_000
    max_item_bytes: int = 8_192
    limiter: RateLimiter = field(default_factory=lambda: RateLimiter(0))

    def __post_init__(self) -> None:
        prefix = "amplitude" if self.source == "default" else f"sources[{self.source}].amplitude"
        self.config_hint = f"check {prefix}.api_key and {prefix}.secret_key (the project's secret key)"
        self.name = "Amplitude deletions" + _where(self.source)

    def max_items(self, endpoint: str, batch_size: int) -> int:
        return max(1, min(batch_size, amplitude_privacy_api.MAX_IDS))

    def request(self, endpoint: str, options: dict[str, Any] | None, batch: Sequence[ClaimedItem],
                now_ms: int) -> OutboundRequest:
        headers = {"Content-Type": "application/json",
                   "Authorization": amplitude_privacy_api.basic_auth(self.api_key, self.secret_key)}
        return OutboundRequest(amplitude_privacy_api.url(self.region, self.endpoint_url),
                               amplitude_privacy_api.encode([c.item for c in batch]), headers)

    def readable(self, endpoint: str, options: dict[str, Any] | None, batch: Sequence[ClaimedItem]) -> dict[str, Any]:
        return amplitude_privacy_api.request_body([c.item for c in batch])

    def classify(self, endpoint: str, status: int | None, body: bytes, headers: Mapping[str, str], n: int,
                 transport_error: str) -> Verdict:
        return amplitude_privacy_api.classify(status, body, n, transport_error)

    def redact(self, text: str) -> str:
        for secret in (self.api_key, self.secret_key):
            text = text.replace(secret, "***") if secret and text else text
        return text


def targets_for(source: Source, rate_limit: float = 0.0) -> list[Target]:
    out: list[Target] = []
    if source.amplitude_enabled:
        amp = source.amplitude
        out.append(AmplitudeTarget(source.name, amp.api_key, amp.region, amp.endpoint_url, rate_limit))
        if amp.api_key and amp.secret_key:
            out.append(DeletionTarget(source.name, amp.api_key, amp.secret_key, amp.region, amp.endpoint_url))
    if source.relay is not None:
        out.append(SegmentTarget(source.name, source.relay))
    return out


def build_targets(settings: Any, sources: SourceTable | None = None) -> dict[tuple[str, str], Target]:
    """Every configured target by (kind, source name)."""
    sources = sources or SourceTable(settings)
    return {(t.kind, t.source): t for src in sources for t in targets_for(src, settings.delivery.rate_limit)}
