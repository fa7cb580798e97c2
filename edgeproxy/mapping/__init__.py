"""Segment message -> Amplitude items, as Segment's Amplitude (Actions) destination maps them.

A ``Mapper`` is built once from the ``[amplitude]`` config: subscriptions are validated and
compiled (FQL predicate + a ``PayloadPlan``: the mapping compiled together with the action's
field table). ``Mapper.map`` is then a pure function of one message: for every matching
subscription, resolve the mapping, remove empty values, validate and coerce against the
action's field table (one pass, see ``plan``), and let the action build its items. A refusal
(the reference's 400) becomes an error string, never an exception and never an item.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from .actions import ACTIONS, Context
from .directives import DirectiveError, compile_mapping
from .fields import REGIONS
from .fql import FQLSyntaxError, parse_condition, parse_fql
from .plan import PayloadPlan

__all__ = ["Output", "Mapped", "MappingConfigError", "Mapper", "validate_subscriptions", "DEFAULTS", "PRESETS"]

DEFAULTS: dict[str, Any] = json.loads(resources.files(__package__).joinpath("defaults.json").read_text("utf-8"))
# The five presets a newly connected destination gets, in Segment's subscription terms.
PRESETS: list[dict[str, Any]] = [
    {"name": p["name"], "action": p["partnerAction"], "subscribe": p["subscribe"], "mapping": p["mapping"],
     "replace_mapping": True}
    for p in DEFAULTS["presets"]
]
_SUBSCRIPTION_KEYS = {"name", "action", "subscribe", "mapping", "replace_mapping", "enabled"}


@dataclass(slots=True)
class Output:
    """One Amplitude item and where it goes. Slotted, not frozen: one is built per item on the
    tracking path and a frozen dataclass pays an ``object.__setattr__`` per field."""

    endpoint: str  # "httpapi" | "batch" | "identify" | "groupidentify" | "usermap"
    item: dict
    options: dict | None


@dataclass(slots=True)
class Mapped:
    outputs: list[Output] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # the reference's own refusals of this event
    settings_error: str | None = None  # the configuration refuses every event (names the config key)

    @property
    def error(self) -> str | None:
        return "; ".join(([self.settings_error] if self.settings_error else []) + self.errors) or None


class MappingConfigError(Exception):
    """Every problem with the configured subscriptions, one per line."""

    def __init__(self, problems: list[str]):
        super().__init__("\n".join(problems))
        self.problems = problems


@dataclass(frozen=True)
class _Subscription:
    name: str
    action: str
    predicate: Any
    plan: PayloadPlan  # mapping + field table: message -> (payload, errors)
    default_device_id: bool  # the mapping's device_id is the action's default one
    types: frozenset[str] | None = None  # the predicate is false unless m["type"] is one of these
    exact: bool = False  # the predicate is true exactly for those types


# The subscriptions to try for one message type, in configured order, each with whether its
# predicate still has to be asked (False: the type alone decides it).
_Candidates = tuple[tuple[_Subscription, bool], ...]


def _dispatch(subscriptions: list[_Subscription]) -> tuple[dict[str, _Candidates], _Candidates]:
    """Per message type, the subscriptions that can match it; and those for any other type.

    Why: every event used to ask every subscription's predicate, though nearly all of them are
    ``type = "..."`` tests that the event's type settles at once (see ``fql.Condition``).
    """
    unbounded = tuple((sub, True) for sub in subscriptions if sub.types is None)
    named = sorted({t for sub in subscriptions if sub.types is not None for t in sub.types})
    by_type = {t: tuple((sub, not sub.exact) for sub in subscriptions if sub.types is None or t in sub.types)
               for t in named}
    return by_type, unbounded


def _mapping_of(sub: dict[str, Any]) -> dict[str, Any]:
    own = sub.get("mapping") or {}
    if sub.get("replace_mapping"):
        return dict(own)
    return {**DEFAULTS["actions"][sub["action"]]["mapping"], **own}


def validate_subscriptions(subscriptions: Any) -> list[str]:
    """Every problem, each prefixed with its index and key (``[1].subscribe: ...``)."""
    if not isinstance(subscriptions, list):
        return ["subscriptions: must be a list of tables ([[amplitude.subscriptions]])"]
    problems: list[str] = []
    for i, sub in enumerate(subscriptions):
        if not isinstance(sub, dict):
            problems.append(f"[{i}]: must be a table with action, subscribe and optional mapping")
            continue
        for key in sorted(set(sub) - _SUBSCRIPTION_KEYS):
            problems.append(f"[{i}].{key}: unknown key (known: {', '.join(sorted(_SUBSCRIPTION_KEYS))})")
        action = sub.get("action")
        if action not in ACTIONS:
            problems.append(f"[{i}].action: must be one of {', '.join(ACTIONS)}, got {action!r}")
        subscribe = sub.get("subscribe")
        if not isinstance(subscribe, str):
            problems.append(f"[{i}].subscribe: must be an FQL condition such as 'type = \"track\"', got {subscribe!r}")
        else:
            try:
                parse_fql(subscribe)
            except FQLSyntaxError as exc:
                problems.append(f"[{i}].subscribe: {exc}")
        mapping = sub.get("mapping")
        if mapping is not None and not isinstance(mapping, dict):
            problems.append(f"[{i}].mapping: must be a table of field = value or directive, got {type(mapping).__name__}")
        elif mapping:
            try:
                compile_mapping(mapping)
            except DirectiveError as exc:
                problems.append(f"[{i}].{exc}")
        for key in ("replace_mapping", "enabled"):
            if key in sub and not isinstance(sub[key], bool):
                problems.append(f"[{i}].{key}: must be true or false, got {sub[key]!r}")
        if "name" in sub and not isinstance(sub["name"], str):
            problems.append(f"[{i}].name: must be a string, got {sub['name']!r}")
    return problems


def settings_errors(amplitude: dict[str, Any]) -> list[str]:
    """The reference validates its settings before each event and sends nothing when they are
    wrong. Each problem names the config key, then quotes the reference's message (which
    names its own field and reads like Amplitude's answer, so alone it misleads)."""
    errors = [f"amplitude.{key} is not set: Segment's destination refuses every event without it "
              f"(its message: The root value is missing the required field '{name}'.)"
              for key, name in (("api_key", "apiKey"), ("secret_key", "secretKey"))
              if amplitude.get(key) in (None, "")]
    region = amplitude.get("region")
    if region not in (None, *REGIONS):
        errors.append(f'amplitude.region is {region!r}: Segment\'s destination refuses every event unless it is '
                      f'"north_america" or "europe" (its message: Endpoint Region must be one of: '
                      f'"north_america" or "europe".)')
    return errors


class Mapper:
    """Compiled subscriptions plus the settings check; ``map`` is pure and never raises."""

    def __init__(self, amplitude: dict, *, strict_settings: bool = True):
        subscriptions = amplitude.get("subscriptions") or PRESETS
        problems = validate_subscriptions(subscriptions)
        if problems:
            raise MappingConfigError(problems)
        self.settings_error = " ".join(settings_errors(amplitude)) if strict_settings else ""
        self.subscriptions: list[_Subscription] = []
        for i, sub in enumerate(subscriptions):
            if sub.get("enabled") is False:
                continue
            mapping = _mapping_of(sub)
            default_device = DEFAULTS["actions"][sub["action"]]["mapping"].get("device_id")
            condition = parse_condition(sub["subscribe"])
            self.subscriptions.append(_Subscription(
                name=sub.get("name") or f"subscription {i}",
                action=sub["action"],
                predicate=condition.predicate,
                plan=PayloadPlan(mapping, ACTIONS[sub["action"]].fields),
                default_device_id=default_device is not None and mapping.get("device_id") == default_device,
                types=condition.types,
                exact=condition.exact,
            ))
        self._by_type, self._other_types = _dispatch(self.subscriptions)

    def matching(self, message: dict) -> list[_Subscription]:
        """The subscriptions whose condition holds for ``message``, in configured order.

        Exactly ``[s for s in self.subscriptions if s.predicate(message)]``, with the
        predicates that the message's type already settles left unasked.
        """
        return [sub for sub, ask in self._candidates(message) if not ask or sub.predicate(message)]

    def _candidates(self, message: dict) -> _Candidates:
        kind = message.get("type")
        return self._by_type.get(kind, self._other_types) if type(kind) is str else self._other_types

    def map(self, message: dict, *, device_id: str | None = None) -> Mapped:
        result = Mapped()
        if not isinstance(message, dict):
            result.errors.append(f"a Segment message must be a JSON object, got {type(message).__name__}")
            return result
        message_id = message.get("messageId")
        ctx = Context(message_id=str(message_id) if isinstance(message_id, (str, int)) and message_id != "" else None)
        for sub, ask in self._candidates(message):  # ``matching`` without a list per event
            if ask and not sub.predicate(message):
                continue
            if self.settings_error:
                result.settings_error = self.settings_error
                break
            try:
                self._apply(sub, message, device_id, ctx, result)
            except Exception as exc:  # a bug must cost one event, not the process; tests assert it never happens
                result.errors.append(f"internal mapping error in {sub.action}: {type(exc).__name__}: {exc}")
        return result

    @staticmethod
    def _apply(sub: _Subscription, message: dict, device_id: str | None, ctx: Context, result: Mapped) -> None:
        action = ACTIONS[sub.action]
        payload, errors = sub.plan.run(message, device_id if sub.default_device_id else None)
        if errors:
            result.errors.append(" ".join(errors))
            return
        for endpoint, item, options in action.perform(payload, ctx):
            result.outputs.append(Output(endpoint, item, options))
