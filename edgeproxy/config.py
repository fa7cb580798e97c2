"""Typed settings: one TOML file plus ``EDGEPROXY_SECTION__KEY`` environment overrides.

Why a hand-written loader rather than a settings framework: the rules are small (TOML,
environment strings coerced to the declared type, durations like ``"30m"``) and the one
thing users need most from it is a complete list of problems, each named by its key, which
``edgeproxy check-config`` prints. Every problem is collected; nothing stops at the first.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from edgeproxy.config_checks import validate
from edgeproxy.config_values import coerce
from edgeproxy.privacy.settings import PrivacyConfig

ENV_PREFIX = "EDGEPROXY_"

# Keys that hold secrets: they may come from the environment alone, and are never printed.
SECRET_KEYS = {
    ("sessions", "signing_keys"),
    ("amplitude", "api_key"),
    ("amplitude", "secret_key"),
    ("segment", "relay_write_key"),
    ("debug", "token"),
}


class ConfigError(Exception):
    """Raised with every problem found; ``problems`` holds one ``key: message`` per line."""

    def __init__(self, problems: list[str]):
        super().__init__("\n".join(problems))
        self.problems = problems


@dataclass
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8080
    prefix: str = "/_e"
    trusted_proxies: list[str] = field(default_factory=list)
    # Origins allowed to call the tracking API cross-origin with credentials. Empty: any
    # origin is answered with `*` semantics (no credentials), like Segment's API.
    cors_origins: list[str] = field(default_factory=list)
    healthz_path: str = "/healthz"
    readyz_path: str = "/readyz"
    metrics_path: str = "/metrics"
    debug_path: str = "/debug"
    log_format: str = "auto"  # "json", "text" or "auto" (text on a terminal)
    # Tracking calls per second from one client IP (0 = no limit) and how many may come at once.
    ip_rate_limit: float = 100.0
    ip_burst: int = 1000
    shutdown_grace: float = 10.0
    # Slow or idle clients (edge/connections.py): a new connection's first request head must be
    # complete within header_timeout; a kept-alive connection idle (or sending its next head)
    # longer than idle_timeout is closed; a tracking call's body must arrive within body_timeout.
    header_timeout: float = 10.0
    idle_timeout: float = 75.0
    body_timeout: float = 30.0
    max_connections_per_ip: int = 1000  # open connections from one address (0 = no cap; trusted_proxies exempt)
    # One structured line per request (logger "edgeproxy.access"): method, path without the
    # query, status, size, duration, client, route. Never cookies, tokens or the query string.
    access_log: bool = False


@dataclass
class OriginConfig:
    url: str = ""
    inject_snippet: bool = False
    timeout: float = 30.0
    # Write key the injected/demo snippet loads analytics.js with when [segment] write_keys is empty.
    snippet_write_key: str = "edgeproxy"


@dataclass
class CdnConfig:
    analytics_js_dir: str = ""
    upstream: str = "https://cdn.segment.com"
    # The settings served switch analytics.js to its batching delivery strategy
    # (integrations["Segment.io"].deliveryStrategy): events go to /v1/b in batches of
    # browser_batch_size, or after browser_batch_timeout, and are flushed at page hide.
    browser_batching: bool = False
    browser_batch_size: int = 10
    browser_batch_timeout: float = 5.0


@dataclass
class SegmentConfig:
    write_keys: list[str] = field(default_factory=list)
    # Segment's tracking API to relay every accepted message to (cloud-mode), e.g.
    # "https://api.segment.io"; empty = no relay.
    relay_url: str = ""
    relay_write_key: str = ""  # empty = each message is relayed with its own write key


@dataclass
class SessionsConfig:
    timeout: float = 1800.0
    cookie_domain: str = ""
    secure_cookies: bool = True
    store: str = "memory"
    signing_keys: list[str] = field(default_factory=list)
    device_cookie: str = "_ep_did"
    session_cookie: str = "_ep_sess"
    device_cookie_max_age: float = 400 * 86400.0
    # Set analytics.js's own identity cookies (ajs_anonymous_id, ajs_user_id) from the server,
    # so its anonymousId outlives Safari's 7-day cap on script-written storage (identity/ajs.py).
    ajs_cookies: bool = True
    ajs_cookie_max_age: float = 400 * 86400.0
    # Stamp a server session on non-web events that carry no session id (off: Segment's
    # mobile plugins own their 5-minute sessions).
    stamp_non_web: bool = False
    session_events: bool = False
    session_start_event: str = "session_start"
    session_end_event: str = "session_end"
    max_sessions: int = 1_000_000


@dataclass
class DeliveryConfig:
    data_dir: str = "./data"
    batch_size: int = 500
    flush_interval: float = 1.0
    request_timeout: float = 10.0
    retry_base: float = 1.0
    retry_max: float = 300.0
    rate_limit: float = 0.0  # events per second per project; 0 = unlimited
    retention: int = 10_000  # delivered rows kept for /debug
    # Disk budget of the spool: past it, tracking calls get 503 + Retry-After (nothing is lost:
    # clients keep their events). "512MB", "2GB" or a number of bytes.
    max_spool_size: int = 1024**3
    # What an acknowledged event survives before its 200: "power_loss" (the SQLite spool fsyncs
    # every commit) or "process_crash" (kill -9 and restarts, not a power cut; no fsync per
    # commit, so each tracking call waits ~a disk flush less).
    durability: str = "power_loss"
    # Empty: the SQLite spool in data_dir. A redis:// URL: Redis streams shared by every process.
    queue: str = ""
    claim_idle: float = 60.0  # Redis queue: a stopped process's in-flight items are taken over after this
    queue_min_replicas: int = 0  # Redis queue: replicas that must confirm an append (WAIT) before the 200


@dataclass
class DebugConfig:
    token: str = ""
    # Recent messages the cockpit's event trail keeps in memory (0: no trail). Each holds
    # references to the message and its payloads: at most ~100 KB each (Segment's 32 KB
    # message, mapped), typically ~3 KB.
    trail_size: int = 1000


@dataclass
class AmplitudeConfig:
    enabled: bool = True  # false: Amplitude is reached through the Segment relay only
    api_key: str = ""
    secret_key: str = ""
    region: str = "north_america"
    endpoint_url: str = ""
    subscriptions: list[dict[str, Any]] = field(default_factory=list)

    def as_mapping_config(self) -> dict[str, Any]:
        """The ``[amplitude]`` section as the mapping layer (and conformance cases) see it."""
        out: dict[str, Any] = {"region": self.region, "subscriptions": self.subscriptions}
        if self.api_key:
            out["api_key"] = self.api_key
        if self.secret_key:
            out["secret_key"] = self.secret_key
        if self.endpoint_url:
            out["endpoint_url"] = self.endpoint_url
        return out


@dataclass
class Settings:
    server: ServerConfig = field(default_factory=ServerConfig)
    origin: OriginConfig = field(default_factory=OriginConfig)
    cdn: CdnConfig = field(default_factory=CdnConfig)
    segment: SegmentConfig = field(default_factory=SegmentConfig)
    sessions: SessionsConfig = field(default_factory=SessionsConfig)
    delivery: DeliveryConfig = field(default_factory=DeliveryConfig)
    debug: DebugConfig = field(default_factory=DebugConfig)
    amplitude: AmplitudeConfig = field(default_factory=AmplitudeConfig)
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)
    # [[sources]]: more write keys, each with its own Amplitude project and relay (sources.py).
    sources: list[Any] = field(default_factory=list)

    @property
    def data_dir(self) -> Path:
        return Path(self.delivery.data_dir)


SECTIONS: dict[str, type] = {f.name: f.default_factory for f in dataclasses.fields(Settings)  # type: ignore[misc]
                              if f.name != "sources"}


def _defaults_of(section: str) -> Any:
    return SECTIONS[section]()


def load_settings(path: str | os.PathLike[str] | None = None, env: Mapping[str, str] | None = None) -> Settings:
    """Read the TOML file (if any), apply environment overrides, validate; raise ConfigError."""
    env = os.environ if env is None else env
    problems: list[str] = []
    raw: dict[str, Any] = {}
    if path is not None:
        try:
            with open(path, "rb") as fh:
                raw = tomllib.load(fh)
        except FileNotFoundError:
            raise ConfigError([f"{path}: file not found"]) from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError([f"{path}: not valid TOML: {exc}"]) from None

    settings = Settings()
    for section_name, section_raw in raw.items():
        if section_name == "sources":
            from edgeproxy.sources import parse_sources

            settings.sources, source_problems = parse_sources(section_raw)
            problems.extend(source_problems)
            continue
        if section_name not in SECTIONS:
            problems.append(f"{section_name}: unknown section (known: {', '.join(SECTIONS)})")
            continue
        if not isinstance(section_raw, dict):
            problems.append(f"{section_name}: must be a table, e.g. [{section_name}]")
            continue
        target = getattr(settings, section_name)
        defaults = _defaults_of(section_name)
        for key, value in section_raw.items():
            if not hasattr(defaults, key):
                problems.append(f"{section_name}.{key}: unknown key")
                continue
            try:
                setattr(target, key, coerce(section_name, key, value, getattr(defaults, key), from_env=False))
            except ValueError as exc:
                problems.append(f"{section_name}.{key}: {exc}")

    from edgeproxy.sources import apply_env

    problems.extend(apply_env(settings.sources, env, ENV_PREFIX))
    for env_key, value in env.items():
        if not env_key.startswith(ENV_PREFIX) or "__" not in env_key or env_key.startswith(f"{ENV_PREFIX}SOURCES__"):
            continue
        section_name, _, key = env_key[len(ENV_PREFIX):].lower().partition("__")
        if section_name not in SECTIONS:
            problems.append(f"{env_key}: unknown section {section_name!r}")
            continue
        defaults = _defaults_of(section_name)
        if not hasattr(defaults, key) or key in ("subscriptions", "sources"):
            problems.append(f"{env_key}: unknown key {section_name}.{key}")
            continue
        try:
            setattr(getattr(settings, section_name), key, coerce(section_name, key, value, getattr(defaults, key), from_env=True))
        except ValueError as exc:
            problems.append(f"{env_key} ({section_name}.{key}): {exc}")

    problems.extend(validate(settings))
    if problems:
        raise ConfigError(problems)
    return settings


def redacted(settings: Settings) -> dict[str, Any]:
    """Settings as a dict with secrets replaced, for logs and /debug."""
    out = dataclasses.asdict(settings)
    for section, key in SECRET_KEYS:
        if out[section].get(key):
            out[section][key] = "***"
    for source in out.get("sources", []):
        for section, key in SECRET_KEYS:
            if section in source and source[section].get(key):
                source[section][key] = "***"
    return out
