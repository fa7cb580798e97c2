"""Segment mapping directives (`@path`, `@template`, `@if`, `@arrayPath`, `@literal`), compiled once.

Why compiled: a subscription's mapping is fixed at start-up but applied to every event, so each
mapping node becomes a small closure up front and resolving an event is a chain of plain calls
(no re-inspection of the mapping dicts per event). Why slots: every path a mapping reads is
registered in a ``Scope`` (see ``paths``) and loaded in one walk per event; a ``@path`` node is
then just an index into that list of values, and an object of paths is one ``itemgetter`` call.
The semantics are actions-core's mapping-kit: a directive is an object with exactly one key
starting with ``@``; an absent path yields ``MISSING`` (JavaScript's ``undefined``) and such
keys disappear from objects.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from operator import itemgetter
from typing import Any, Callable

import orjson

from .coerce import number_to_string
from .paths import MISSING, Scope, Values, get_path, preloadable, split_path

__all__ = ["MISSING", "DIRECTIVES", "DirectiveError", "Compiled", "Resolver", "Scope", "array_item_mapping",
           "array_items", "compile_mapping", "compile_node", "get_path", "is_directive", "js_string", "placeholders",
           "preloadable", "slots_getter", "split_path"]

Resolver = Callable[[Any], Any]

DIRECTIVES = ("@path", "@template", "@if", "@arrayPath", "@literal")

_PLACEHOLDER = re.compile(r"\{\{\{([^}]+)\}\}\}|\{\{([^}]+)\}\}")


class DirectiveError(ValueError):
    """A mapping that cannot be compiled; the message names the offending node."""


@dataclass(frozen=True)
class Compiled:
    """A compiled node: ``fn(values)`` gives its value; ``slot`` is set when the value is simply
    ``values[slot]`` (a path or a constant), so a parent can read it without a call."""

    fn: Callable[[Values], Any]
    slot: int | None = None


def _in_slot(slot: int) -> Compiled:
    return Compiled(itemgetter(slot), slot)


def slots_getter(slots: tuple[int, ...]) -> Callable[[Values], tuple[Any, ...]]:
    """``values -> tuple(values[s] for s in slots)`` as one C call (``itemgetter``), for any count."""
    if not slots:
        return lambda values: ()
    if len(slots) == 1:
        only = slots[0]
        return lambda values: (values[only],)
    return itemgetter(*slots)


def js_string(value: Any) -> str:
    """``String(value)`` as JavaScript renders it inside a template."""
    if value is None or value is MISSING:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return number_to_string(value)
    if isinstance(value, str):
        return value
    return orjson.dumps(value).decode()


def is_directive(node: Any) -> bool:
    return isinstance(node, dict) and len(node) == 1 and next(iter(node)).startswith("@")


def compile_mapping(node: Any, where: str = "mapping") -> Resolver:
    """Turn a mapping node into a function of the payload; raise DirectiveError if malformed."""
    scope = Scope()
    compiled = compile_node(node, scope, where)
    load, fn = scope.loader(), compiled.fn
    return lambda payload: fn(load(payload))


def compile_node(node: Any, scope: Scope, where: str) -> Compiled:
    """Compile ``node`` against ``scope``: the paths it reads become slots of that scope."""
    if is_directive(node):
        name, arg = next(iter(node.items()))
        builder = _BUILDERS.get(name)
        if builder is None:
            raise DirectiveError(f"{where}: unknown directive {name!r} (known: {', '.join(DIRECTIVES)})")
        return builder(arg, scope, where)
    if isinstance(node, dict):
        return _compile_object(node, scope, where)
    if isinstance(node, list):
        elements = [compile_node(value, scope, f"{where}[{i}]").fn for i, value in enumerate(node)]
        return Compiled(lambda values: [None if (v := fn(values)) is MISSING else v for fn in elements])
    return _in_slot(scope.const_slot(node))


def _compile_object(node: dict, scope: Scope, where: str) -> Compiled:
    """An object: computed members are stored into slots (in key order), then all are read at once."""
    keys: list[str] = []
    slots: list[int] = []
    computed: list[tuple[int, Callable[[Values], Any]]] = []
    for key, value in node.items():
        member = compile_node(value, scope, f"{where}.{key}")
        slot = member.slot
        if slot is None:
            slot = scope.new_slot()
            computed.append((slot, member.fn))
        keys.append(key)
        slots.append(slot)
    names, read, steps = tuple(keys), slots_getter(tuple(slots)), tuple(computed)

    def resolve_object(values: Values) -> dict[str, Any]:
        for slot, fn in steps:
            values[slot] = fn(values)
        return {key: value for key, value in zip(names, read(values)) if value is not MISSING}

    return Compiled(resolve_object)


def _path(path: str, scope: Scope) -> Compiled:
    parts = split_path(path)
    if preloadable(parts):
        return _in_slot(scope.path_slot(parts))
    root = scope.path_slot(())
    return Compiled(lambda values: get_path(values[root], parts))


def _build_path(arg: Any, scope: Scope, where: str) -> Compiled:
    if not isinstance(arg, str):
        raise DirectiveError(f"{where}: @path needs a string such as \"$.properties.price\", got {arg!r}")
    return _path(arg, scope)


def _build_literal(arg: Any, scope: Scope, where: str) -> Compiled:
    return _in_slot(scope.const_slot(arg))


def _build_template(arg: Any, scope: Scope, where: str) -> Compiled:
    if not isinstance(arg, str):
        raise DirectiveError(f"{where}: @template needs a string such as \"Viewed {{{{name}}}}\", got {arg!r}")
    pieces = [p if i % 2 == 0 else _path(p, scope).fn for i, p in enumerate(placeholders(arg))]

    def render(values: Values) -> str:
        return "".join(p if isinstance(p, str) else js_string(p(values)) for p in pieces)

    return Compiled(render)


def placeholders(template: str) -> list[str]:
    """``"Viewed {{name}}!"`` -> ``["Viewed ", "name", "!"]``: text and placeholder paths alternate."""
    pieces: list[str] = []
    last = 0
    for match in _PLACEHOLDER.finditer(template):
        pieces.append(template[last:match.start()])
        pieces.append((match.group(1) or match.group(2)).strip())
        last = match.end()
    pieces.append(template[last:])
    return pieces


def _missing(values: Values) -> Any:
    return MISSING


def _build_if(arg: Any, scope: Scope, where: str) -> Compiled:
    if not isinstance(arg, dict) or ("exists" not in arg and "blank" not in arg):
        raise DirectiveError(f"{where}: @if needs an object with an \"exists\" or \"blank\" key and \"then\"/\"else\"")
    unknown = set(arg) - {"exists", "blank", "then", "else"}
    if unknown:
        raise DirectiveError(f"{where}: @if has unknown keys {sorted(unknown)} (allowed: exists, blank, then, else)")
    blank = "exists" not in arg
    test = compile_node(arg["blank" if blank else "exists"], scope, f"{where}.@if").fn
    then = compile_node(arg["then"], scope, f"{where}.@if.then").fn if "then" in arg else _missing
    other = compile_node(arg["else"], scope, f"{where}.@if.else").fn if "else" in arg else _missing

    def resolve_if(values: Values) -> Any:
        value = test(values)
        present = value is not MISSING and value is not None
        condition = (not present or value == "") if blank else present
        return then(values) if condition else other(values)

    return Compiled(resolve_if)


def _build_array_path(arg: Any, scope: Scope, where: str) -> Compiled:
    if not isinstance(arg, list) or not 1 <= len(arg) <= 2:
        raise DirectiveError(f"{where}: @arrayPath needs [path, item mapping]")
    path = arg[0]
    root = (_path(path, scope) if isinstance(path, str) else compile_node(path, scope, where)).fn
    item = array_item_mapping(arg, where)
    return Compiled(lambda values: array_items(root(values), item))


def array_item_mapping(arg: list, where: str) -> Resolver | None:
    """``@arrayPath``'s item mapping, if it has one. It reads paths relative to each item: its own
    scope, loaded once per item."""
    shape = arg[1] if len(arg) == 2 else None
    return compile_mapping(shape, f"{where}.@arrayPath[1]") if isinstance(shape, dict) and shape else None


def array_items(value: Any, item: Resolver | None) -> Any:
    """``@arrayPath`` given the value at its path: each item mapped (one object counts as one item)."""
    if item is None or not isinstance(value, (dict, list)):
        return value
    items = value if isinstance(value, list) else [value]
    return [item(x) for x in items]


_BUILDERS: dict[str, Callable[[Any, Scope, str], Compiled]] = {
    "@path": _build_path,
    "@template": _build_template,
    "@if": _build_if,
    "@arrayPath": _build_array_path,
    "@literal": _build_literal,
}
