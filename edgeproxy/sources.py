"""Sources: which write key belongs to which Amplitude project and which Segment relay.

A site with several Segment sources (prod, staging, several sites) runs one edge. Each
source owns write keys and has its own ``[sources.amplitude]`` project and
``[sources.segment]`` relay; the flat ``[segment]``/``[amplitude]`` sections are the source
named ``default``, so a file without ``[[sources]]`` keeps working unchanged. Privacy rules
are the flat ``[privacy]`` section, with the keys a source's ``[sources.privacy]`` sets
replacing it (an EU site and a US site on one edge).

The configuration resolves to immutable ``Source`` objects once (``SourceTable``); a request
finds its source by write key and carries it through the pipeline (mapping, spool items
tagged with the source, delivery targets per source) instead of reading global settings.

Write-key rules, Segment's where it has one: a key listed by a named source belongs to it;
any other key belongs to ``default`` when ``[segment] write_keys`` is empty (Segment accepts
any non-empty key) or lists it; otherwise it is refused (401). A key may belong to one
source only: ``check-config`` names both places of an overlap.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, fields, replace
from typing import Any

from edgeproxy.config import AmplitudeConfig, SegmentConfig
from edgeproxy.config_values import coerce
from edgeproxy.privacy.policy import Rules
from edgeproxy.privacy.settings import PrivacyConfig, privacy_problems
from edgeproxy.segment import WRITE_KEY_RULE, valid_write_key

DEFAULT_SOURCE = "default"
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}\Z")  # also a Prometheus label value and a URL query value
_SOURCE_KEYS = ("name", "write_keys", "amplitude", "segment", "privacy")
_SECTION_NAMES = {AmplitudeConfig: "amplitude", SegmentConfig: "segment", PrivacyConfig: "privacy"}
_RELAY_KEYS = ("relay_url", "relay_write_key")


@dataclass
class SourceConfig:
    """One ``[[sources]]`` entry as written in the file."""

    name: str = ""
    write_keys: list[str] = field(default_factory=list)
    amplitude: AmplitudeConfig = field(default_factory=AmplitudeConfig)
    segment: SegmentConfig = field(default_factory=SegmentConfig)
    privacy: dict[str, Any] = field(default_factory=dict)  # the [privacy] keys this source replaces

    def privacy_config(self, flat: PrivacyConfig) -> PrivacyConfig:
        return replace(flat, **self.privacy)


@dataclass(frozen=True)
class Relay:
    """Where a source's messages are relayed: Segment's tracking API at ``url``."""

    url: str
    write_key: str = ""  # empty: each message with the write key it came with


@dataclass(frozen=True)
class Source:
    """A source, resolved: its name, write keys, Amplitude project and relay (or none)."""

    name: str
    write_keys: frozenset[str]
    amplitude: AmplitudeConfig
    relay: Relay | None
    privacy: Rules = Rules()

    @property
    def amplitude_enabled(self) -> bool:
        return self.amplitude.enabled


def _section(cls: type, raw: Any, where: str, allowed: tuple[str, ...] | None, problems: list[str]) -> Any:
    """A dataclass section of a source from its table, every bad key reported."""
    out = cls()
    if raw is None:
        return out
    if not isinstance(raw, dict):
        problems.append(f"{where}: must be a table, e.g. [{where.split('[')[0]}.{where.rsplit('.', 1)[-1]}]")
        return out
    section = _SECTION_NAMES[cls]
    for key, value in raw.items():
        if not hasattr(out, key) or (allowed is not None and key not in allowed):
            known = ", ".join(allowed or [f.name for f in fields(cls)])
            problems.append(f"{where}.{key}: unknown key (known: {known})")
            continue
        try:
            setattr(out, key, coerce(section, key, value, getattr(cls(), key), from_env=False))
        except ValueError as exc:
            problems.append(f"{where}.{key}: {exc}")
    return out


def parse_sources(raw: Any) -> tuple[list[SourceConfig], list[str]]:
    """``[[sources]]`` tables as SourceConfig, with every problem named by its key."""
    if not isinstance(raw, list):
        return [], ["sources: must be an array of tables ([[sources]])"]
    out: list[SourceConfig] = []
    problems: list[str] = []
    for i, entry in enumerate(raw):
        where = f"sources[{i}]"
        if not isinstance(entry, dict):
            problems.append(f"{where}: must be a table ([[sources]])")
            continue
        for key in entry:
            if key not in _SOURCE_KEYS:
                problems.append(f"{where}.{key}: unknown key (known: {', '.join(_SOURCE_KEYS)})")
        source = SourceConfig(
            amplitude=_section(AmplitudeConfig, entry.get("amplitude"), f"{where}.amplitude", None, problems),
            segment=_section(SegmentConfig, entry.get("segment"), f"{where}.segment", _RELAY_KEYS, problems),
        )
        if entry.get("privacy") is not None:
            given = _section(PrivacyConfig, entry["privacy"], f"{where}.privacy", None, problems)
            keys = entry["privacy"] if isinstance(entry["privacy"], dict) else {}
            source.privacy = {key: getattr(given, key) for key in keys if hasattr(given, key)}
        name = entry.get("name", "")
        if isinstance(name, str):
            source.name = name
        else:
            problems.append(f"{where}.name: expected a string, got {name!r}")
        keys = entry.get("write_keys", [])
        if isinstance(keys, list):
            source.write_keys = keys
        else:
            problems.append(f"{where}.write_keys: expected a list of write keys, got {keys!r}")
        out.append(source)
    return out, problems


def env_name(source: str) -> str:
    """A source name as it appears in an environment variable: upper case, '-' and '.' as '_'."""
    return re.sub(r"[^A-Z0-9_]", "_", source.upper())


def apply_env(sources: list[SourceConfig], env: Any, prefix: str) -> list[str]:
    """``{prefix}SOURCES__<NAME>__AMPLITUDE__API_KEY`` (any key of a source's ``amplitude``,
    ``segment`` or ``privacy`` table): a source's secrets need not sit in the file, as the flat
    sections' need not."""
    by_env = {env_name(src.name): src for src in sources if isinstance(src.name, str) and src.name}
    problems: list[str] = []
    head = f"{prefix}SOURCES__"
    for env_key, value in env.items():
        if not env_key.startswith(head):
            continue
        name, _, rest = env_key[len(head):].partition("__")
        section, _, key = rest.lower().partition("__")
        src = by_env.get(name)
        if src is None:
            known = ", ".join(sorted(by_env)) or "none"
            problems.append(f"{env_key}: no [[sources]] entry whose name reads {name!r} here (known: {known})")
            continue
        cls = {"amplitude": AmplitudeConfig, "segment": SegmentConfig, "privacy": PrivacyConfig}.get(section)
        allowed = _RELAY_KEYS if section == "segment" else None
        if cls is None or not hasattr(cls(), key) or key == "subscriptions" or (allowed and key not in allowed):
            problems.append(f"{env_key}: expected {head}{name}__AMPLITUDE__<key>, __PRIVACY__<key> "
                            f"or __SEGMENT__RELAY_URL / RELAY_WRITE_KEY")
            continue
        try:
            coerced = coerce(section, key, value, getattr(cls(), key), from_env=True)
            if section == "privacy":
                src.privacy[key] = coerced
            else:
                setattr(getattr(src, section), key, coerced)
        except ValueError as exc:
            problems.append(f"{env_key} (sources[{src.name}].{section}.{key}): {exc}")
    return problems


def sources_problems(settings: Any) -> list[str]:
    """Names, write keys (each in one source only) and each source's own sections."""
    from edgeproxy.config_checks import amplitude_problems, relay_problems

    problems: list[str] = []
    owner: dict[str, str] = {key: "segment.write_keys" for key in settings.segment.write_keys if isinstance(key, str)}
    names: dict[str, int] = {}
    for i, src in enumerate(settings.sources):
        where = f"sources[{i}]"
        if not NAME_RE.match(src.name or ""):
            problems.append(f"{where}.name: must be 1-64 letters, digits, '_', '.', '-' (it labels metrics), got {src.name!r}")
        elif src.name == DEFAULT_SOURCE:
            problems.append(f"{where}.name: \"{DEFAULT_SOURCE}\" is the flat [segment]/[amplitude] sections' source; pick another name")
        elif src.name in names:
            problems.append(f"{where}.name: {src.name!r} is also the name of sources[{names[src.name]}]")
        else:
            names[src.name] = i
        if not src.write_keys:
            problems.append(f"{where}.write_keys: a source needs at least one write key (no event could reach it)")
        for j, key in enumerate(src.write_keys):
            here = f"{where}.write_keys[{j}]"
            if not valid_write_key(key):
                problems.append(f"{here}: a write key is {WRITE_KEY_RULE}, got {key!r}")
            elif key in owner:
                problems.append(f"{here}: write key {key!r} is also in {owner[key]}; a write key belongs to one source")
            else:
                owner[key] = here
        problems.extend(amplitude_problems(src.amplitude, f"{where}.amplitude"))
        problems.extend(relay_problems(src.segment, f"{where}.segment"))
        if src.privacy:
            problems.extend(privacy_problems(src.privacy_config(settings.privacy), f"{where}.privacy"))
    return problems


def _relay(seg: SegmentConfig) -> Relay | None:
    return Relay(seg.relay_url.rstrip("/"), seg.relay_write_key) if seg.relay_url else None


class SourceTable:
    """Every source of a configuration, and the write-key lookup the edge does per request."""

    def __init__(self, settings: Any) -> None:
        flat = settings.privacy
        self.default = Source(DEFAULT_SOURCE, frozenset(settings.segment.write_keys), settings.amplitude,
                              _relay(settings.segment), Rules.from_config(flat))
        self.named = {s.name: Source(s.name, frozenset(s.write_keys), s.amplitude, _relay(s.segment),
                                     Rules.from_config(s.privacy_config(flat)))
                      for s in settings.sources}
        self._by_key = {key: src for src in self.named.values() for key in src.write_keys}
        self._open = not settings.segment.write_keys  # any other key is the default source's

    def __iter__(self) -> Any:
        yield self.default
        yield from self.named.values()

    def __len__(self) -> int:
        return 1 + len(self.named)

    def get(self, name: str) -> Source | None:
        return self.default if name == DEFAULT_SOURCE else self.named.get(name)

    def for_write_key(self, key: str) -> Source | None:
        """The key's source, or None: the key is unknown (the edge answers 401)."""
        source = self._by_key.get(key)
        if source is not None:
            return source
        if self._open or key in self.default.write_keys:
            return self.default
        return None

    @property
    def all_write_keys(self) -> frozenset[str]:
        """Every configured key; empty when any key is accepted (Segment's behaviour)."""
        if self._open:
            return frozenset()
        return frozenset(self._by_key) | self.default.write_keys
