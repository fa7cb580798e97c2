"""Segment mapping directives (`@path`, `@template`, `@if`, `@arrayPath`, `@literal`), compiled once.

Why compiled: a subscription's mapping is fixed at start-up but applied to every event, so each
mapping node becomes a small closure up front and resolving an event is a chain of plain calls
(no re-inspection of the mapping dicts per event). The semantics are actions-core's
mapping-kit: a directive is an object with exactly one key starting with ``@``; an absent path
yields ``MISSING`` (JavaScript's ``undefined``) and such keys disappear from objects.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any, Callable

import orjson


class _Missing:
    """JavaScript's ``undefined``: distinct from ``None`` (``null``), which is a value."""

    _instance: "_Missing | None" = None

    def __new__(cls) -> "_Missing":
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "MISSING"

    def __bool__(self) -> bool:
        return False


MISSING: Any = _Missing()

Resolver = Callable[[Any], Any]

DIRECTIVES = ("@path", "@template", "@if", "@arrayPath", "@literal")

_PATH_SPLIT = re.compile(r"[.\[\]'\"]")
_PLACEHOLDER = re.compile(r"\{\{\{([^}]+)\}\}\}|\{\{([^}]+)\}\}")


class DirectiveError(ValueError):
    """A mapping that cannot be compiled; the message names the offending node."""


@lru_cache(maxsize=4096)
def split_path(path: str) -> tuple[str, ...]:
    """``$.integrations["Actions Amplitude"].session_id`` -> ``('integrations', 'Actions Amplitude', 'session_id')``."""
    if path.startswith("$."):
        path = path[2:]
    elif path == "$":
        return ()
    return tuple(p for p in _PATH_SPLIT.split(path) if p != "")


def get_path(data: Any, parts: tuple[str, ...]) -> Any:
    """Follow ``parts`` into dicts and lists; anything else on the way gives ``MISSING``."""
    value = data
    for part in parts:
        if isinstance(value, dict):
            value = value.get(part, MISSING)
        elif isinstance(value, list) and part.isdigit():
            index = int(part)
            value = value[index] if index < len(value) else MISSING
        else:
            return MISSING
        if value is MISSING:
            return MISSING
    return value


def js_string(value: Any) -> str:
    """``String(value)`` as JavaScript renders it inside a template."""
    if value is None or value is MISSING:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        from .coerce import number_to_string

        return number_to_string(value)
    if isinstance(value, str):
        return value
    return orjson.dumps(value).decode()


def is_directive(node: Any) -> bool:
    return isinstance(node, dict) and len(node) == 1 and next(iter(node)).startswith("@")


def compile_mapping(node: Any, where: str = "mapping") -> Resolver:
    """Turn a mapping node into a function of the payload; raise DirectiveError if malformed."""
    if is_directive(node):
        name, arg = next(iter(node.items()))
        builder = _BUILDERS.get(name)
        if builder is None:
            raise DirectiveError(f"{where}: unknown directive {name!r} (known: {', '.join(DIRECTIVES)})")
        return builder(arg, where)
    if isinstance(node, dict):
        items = [(key, compile_mapping(value, f"{where}.{key}")) for key, value in node.items()]

        def resolve_object(payload: Any) -> Any:
            out = {}
            for key, fn in items:
                value = fn(payload)
                if value is not MISSING:
                    out[key] = value
            return out

        return resolve_object
    if isinstance(node, list):
        elements = [compile_mapping(value, f"{where}[{i}]") for i, value in enumerate(node)]
        return lambda payload: [None if (v := fn(payload)) is MISSING else v for fn in elements]
    return lambda payload: node


def _build_path(arg: Any, where: str) -> Resolver:
    if not isinstance(arg, str):
        raise DirectiveError(f"{where}: @path needs a string such as \"$.properties.price\", got {arg!r}")
    parts = split_path(arg)
    return lambda payload: get_path(payload, parts)


def _build_literal(arg: Any, where: str) -> Resolver:
    return lambda payload: arg


def _build_template(arg: Any, where: str) -> Resolver:
    if not isinstance(arg, str):
        raise DirectiveError(f"{where}: @template needs a string such as \"Viewed {{{{name}}}}\", got {arg!r}")
    pieces: list[str | tuple[str, ...]] = []
    last = 0
    for match in _PLACEHOLDER.finditer(arg):
        pieces.append(arg[last:match.start()])
        pieces.append(split_path((match.group(1) or match.group(2)).strip()))
        last = match.end()
    pieces.append(arg[last:])

    def render(payload: Any) -> str:
        return "".join(p if isinstance(p, str) else js_string(get_path(payload, p)) for p in pieces)

    return render


def _build_if(arg: Any, where: str) -> Resolver:
    if not isinstance(arg, dict) or ("exists" not in arg and "blank" not in arg):
        raise DirectiveError(f"{where}: @if needs an object with an \"exists\" or \"blank\" key and \"then\"/\"else\"")
    unknown = set(arg) - {"exists", "blank", "then", "else"}
    if unknown:
        raise DirectiveError(f"{where}: @if has unknown keys {sorted(unknown)} (allowed: exists, blank, then, else)")
    blank = "exists" not in arg
    test = compile_mapping(arg["blank" if blank else "exists"], f"{where}.@if")
    then = compile_mapping(arg["then"], f"{where}.@if.then") if "then" in arg else (lambda p: MISSING)
    other = compile_mapping(arg["else"], f"{where}.@if.else") if "else" in arg else (lambda p: MISSING)

    def resolve_if(payload: Any) -> Any:
        value = test(payload)
        present = value is not MISSING and value is not None
        condition = (not present or value == "") if blank else present
        return then(payload) if condition else other(payload)

    return resolve_if


def _build_array_path(arg: Any, where: str) -> Resolver:
    if not isinstance(arg, list) or not 1 <= len(arg) <= 2:
        raise DirectiveError(f"{where}: @arrayPath needs [path, item mapping]")
    path = arg[0]
    root = (lambda p, parts=split_path(path): get_path(p, parts)) if isinstance(path, str) else compile_mapping(path, where)
    shape = arg[1] if len(arg) == 2 else None
    item = compile_mapping(shape, f"{where}.@arrayPath[1]") if isinstance(shape, dict) and shape else None

    def resolve_array(payload: Any) -> Any:
        value = root(payload)
        if item is None or not isinstance(value, (dict, list)):
            return value
        items = value if isinstance(value, list) else [value]
        return [item(x) for x in items]

    return resolve_array


_BUILDERS: dict[str, Callable[[Any, str], Resolver]] = {
    "@path": _build_path,
    "@template": _build_template,
    "@if": _build_if,
    "@arrayPath": _build_array_path,
    "@literal": _build_literal,
}
