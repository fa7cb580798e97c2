"""The semantic checks of the settings: every problem, each named by its key.

Why apart from ``config``: the loader reads TOML and the environment into typed sections;
these rules judge the values (ranges, URL shapes, names, the mapping's subscriptions) and are
shared with the per-source sections (``sources.py``). They read the sections' attributes and
never import the loader, so either side can change without the other.
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import TYPE_CHECKING

from edgeproxy.privacy.settings import privacy_problems
from edgeproxy.segment import WRITE_KEY_RULE, valid_write_key

if TYPE_CHECKING:
    from edgeproxy.config import AmplitudeConfig, SegmentConfig, Settings

# URL schemes redis-py's from_url accepts: sessions.store and delivery.queue name Redis this way.
REDIS_SCHEMES = ("redis://", "rediss://", "unix://")


def is_redis_url(value: str) -> bool:
    return value.startswith(REDIS_SCHEMES)


MIN_SPOOL_SIZE = 1024**2
# delivery.durability -> the SQLite spool's PRAGMA synchronous (WAL mode).
DURABILITY = {"power_loss": "FULL", "process_crash": "NORMAL"}


def validate(s: Settings) -> list[str]:
    """Every semantic problem, each prefixed with its key."""
    problems: list[str] = []
    if not 0 < s.server.port < 65536:
        problems.append(f"server.port: must be between 1 and 65535, got {s.server.port}")
    for key in ("prefix", "healthz_path", "readyz_path", "metrics_path", "debug_path"):
        value = getattr(s.server, key)
        if not value.startswith("/") or (value != "/" and value.endswith("/")) or "//" in value:
            problems.append(f"server.{key}: must start with '/' and not end with one, got {value!r}")
    if s.server.ip_rate_limit < 0:
        problems.append("server.ip_rate_limit: must be 0 (no limit) or positive")
    for key in ("header_timeout", "idle_timeout", "body_timeout"):
        if getattr(s.server, key) <= 0:
            problems.append(f"server.{key}: must be positive (a duration such as \"10s\")")
    if s.server.max_connections_per_ip < 0:
        problems.append("server.max_connections_per_ip: must be 0 (no cap) or positive")
    if s.server.ip_burst < 1:
        problems.append("server.ip_burst: must be at least 1")
    if s.server.log_format not in {"auto", "json", "text"}:
        problems.append(f"server.log_format: must be one of auto, json, text, got {s.server.log_format!r}")
    for i, proxy in enumerate(s.server.trusted_proxies):
        try:
            ipaddress.ip_network(proxy, strict=False)
        except (ValueError, TypeError):
            problems.append(f"server.trusted_proxies[{i}]: not an IP address or network: {proxy!r}")
    for i, origin in enumerate(s.server.cors_origins):
        if not isinstance(origin, str) or not re.match(r"^https?://[^/]+$", origin):
            problems.append(f"server.cors_origins[{i}]: must be an origin like https://www.example.com, got {origin!r}")
    if s.origin.url and not re.match(r"^https?://[^/]+", s.origin.url):
        problems.append(f"origin.url: must be an http(s) URL, got {s.origin.url!r}")
    if s.cdn.analytics_js_dir and not Path(s.cdn.analytics_js_dir).is_dir():
        problems.append(f"cdn.analytics_js_dir: not a directory: {s.cdn.analytics_js_dir!r}")
    if not 1 <= s.cdn.browser_batch_size <= 100:
        problems.append(f"cdn.browser_batch_size: must be 1-100 events, got {s.cdn.browser_batch_size}")
    if not 0.05 <= s.cdn.browser_batch_timeout <= 60:
        problems.append(f"cdn.browser_batch_timeout: must be between 50ms and 60s, got {s.cdn.browser_batch_timeout:g}s")
    if s.cdn.upstream and not re.match(r"^https?://[^/]+", s.cdn.upstream):
        problems.append(f"cdn.upstream: must be an http(s) URL, got {s.cdn.upstream!r}")
    for i, key in enumerate(s.segment.write_keys):
        if not valid_write_key(key):
            problems.append(f"segment.write_keys[{i}]: a write key is {WRITE_KEY_RULE}, got {key!r}")
    if not valid_write_key(s.origin.snippet_write_key):
        problems.append(f"origin.snippet_write_key: a write key is {WRITE_KEY_RULE}, got {s.origin.snippet_write_key!r}")
    if s.sessions.timeout <= 0:
        problems.append("sessions.timeout: must be positive")
    for key in ("device_cookie_max_age", "ajs_cookie_max_age"):
        if getattr(s.sessions, key) <= 0:
            problems.append(f"sessions.{key}: must be positive (a cookie's lifetime, e.g. \"400d\")")
    if s.sessions.store != "memory" and not is_redis_url(s.sessions.store):
        problems.append(f"sessions.store: must be \"memory\" or a redis:// URL, got {s.sessions.store!r}")
    for i, key in enumerate(s.sessions.signing_keys):
        if not isinstance(key, str) or len(key) < 16:
            problems.append(f"sessions.signing_keys[{i}]: must be a string of at least 16 characters")
    for key in ("device_cookie", "session_cookie"):
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", getattr(s.sessions, key)):
            problems.append(f"sessions.{key}: must be a cookie name of letters, digits, '_', '.', '-'")
    if not 1 <= s.delivery.batch_size <= 2000:
        problems.append(f"delivery.batch_size: must be between 1 and 2000 (Amplitude's limit), got {s.delivery.batch_size}")
    if s.debug.trail_size < 0:
        problems.append("debug.trail_size: must be 0 (no event trail) or positive")
    if s.delivery.flush_interval <= 0:
        problems.append("delivery.flush_interval: must be positive")
    if s.delivery.queue and not is_redis_url(s.delivery.queue):
        problems.append(f"delivery.queue: must be empty (the SQLite spool) or a redis:// URL, got {s.delivery.queue!r}")
    if s.delivery.claim_idle <= 0:
        problems.append("delivery.claim_idle: must be positive (longer than one delivery request takes)")
    if s.delivery.queue_min_replicas < 0:
        problems.append("delivery.queue_min_replicas: must be 0 or more")
    if s.delivery.rate_limit < 0:
        problems.append("delivery.rate_limit: must be 0 (unlimited) or positive")
    if s.delivery.durability not in DURABILITY:
        problems.append(f"delivery.durability: must be \"power_loss\" or \"process_crash\", got {s.delivery.durability!r}")
    if s.delivery.max_spool_size < MIN_SPOOL_SIZE:
        problems.append(f"delivery.max_spool_size: must be at least 1MB, got {s.delivery.max_spool_size} bytes")
    problems.extend(amplitude_problems(s.amplitude, "amplitude"))
    problems.extend(relay_problems(s.segment, "segment"))
    problems.extend(privacy_problems(s.privacy, "privacy"))
    from edgeproxy.sources import sources_problems

    problems.extend(sources_problems(s))
    return problems


def amplitude_problems(amp: AmplitudeConfig, where: str) -> list[str]:
    """An Amplitude project's settings (``[amplitude]`` or a source's ``[sources.amplitude]``)."""
    problems = []
    if amp.region not in {"north_america", "europe"}:
        problems.append(f"{where}.region: must be one of: \"north_america\" or \"europe\", got {amp.region!r}")
    if amp.endpoint_url and not re.match(r"^https?://[^/]+", amp.endpoint_url):
        problems.append(f"{where}.endpoint_url: must be an http(s) URL, got {amp.endpoint_url!r}")
    if not isinstance(amp.subscriptions, list):
        problems.append(f"{where}.subscriptions: must be an array of tables ([[{where}.subscriptions]])")
    else:
        problems.extend(_subscription_problems(amp, where))
    return problems


def relay_problems(seg: SegmentConfig, where: str) -> list[str]:
    """The Segment relay's settings (``[segment]`` or a source's ``[sources.segment]``)."""
    problems = []
    if seg.relay_url and not re.match(r"^https?://[^/?#]+(/[^?#]*)?$", seg.relay_url):
        problems.append(f"{where}.relay_url: must be an http(s) URL such as \"https://api.segment.io\", got {seg.relay_url!r}")
    elif re.search(r"/v1(/[a-z]*)?/?$", seg.relay_url):
        problems.append(f"{where}.relay_url: give the API's base URL without /v1 (edgeproxy posts to "
                        f"{{relay_url}}/v1/batch), got {seg.relay_url!r}")
    if seg.relay_write_key and not seg.relay_url:
        problems.append(f"{where}.relay_write_key: set, but {where}.relay_url is empty, so nothing is relayed")
    return problems


def _subscription_problems(amp: AmplitudeConfig, where: str = "amplitude") -> list[str]:
    """Let the mapping layer judge subscriptions (FQL syntax, action names, mapping keys)."""
    try:
        from edgeproxy.mapping import validate_subscriptions
    except ImportError:  # mapping layer not built yet
        return []
    return [f"{where}.subscriptions{p}" if p.startswith("[") else p for p in validate_subscriptions(amp.subscriptions)]
