"""JSON paths (``$.context.page.referrer``): splitting, lookup, and a per-mapping lookup table.

Why a table: a subscription's mapping reads ~40 paths per event, most sharing a prefix
(``$.context``, ``$.context.device``) and most absent from a typical web event. Looking each
one up on its own walks ``$.context`` forty times; instead, all paths of one mapping are
registered up front in a ``Scope``, which arranges them as a tree and loads them in one walk
per event: a shared prefix is read once, and an absent prefix skips its whole subtree. Each
path gets a *slot* in a flat list of values, which the compiled directives then read by index.
The result is exactly ``get_path`` for every registered path; nothing of the input is changed.
(A subscription's ``PayloadPlan`` writes the same walk out as code, see ``plan``; the table
serves ``compile_mapping``: whole-directive mappings and ``@arrayPath`` items.)
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Callable


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

_PATH_SPLIT = re.compile(r"[.\[\]'\"]")

Values = list  # one evaluation's slots: path values, constants and computed values
Loader = Callable[[Any], Values]


@lru_cache(maxsize=4096)
def split_path(path: str) -> tuple[str, ...]:
    """``$.integrations["Actions Amplitude"].session_id`` -> ``('integrations', 'Actions Amplitude', 'session_id')``."""
    if path.startswith("$."):
        path = path[2:]
    elif path == "$":
        return ()
    return tuple(p for p in _PATH_SPLIT.split(path) if p != "")


def passes_through(value: Any) -> bool:
    """A value the reference's path lookup stops at and returns for every path below it:
    JavaScript's falsy primitives (``null``, ``false``, ``0``, ``""``). Observed: with
    ``context.os: 0`` Segment's destination sends ``os_name: "0"``, with ``context.device: ""``
    no device id at all. A truthy primitive (``true``, ``"iOS"``, ``5``) gives undefined below it."""
    return value is None or value is False or (type(value) in (int, float, str) and not value)


def get_path(data: Any, parts: tuple[str, ...]) -> Any:
    """Follow ``parts`` into dicts and lists; a falsy primitive on the way is the answer
    (``passes_through``); anything else gives ``MISSING``."""
    value = data
    for part in parts:
        if isinstance(value, dict):
            value = value.get(part, MISSING)
        elif isinstance(value, list) and part.isdigit():
            index = int(part)
            value = value[index] if index < len(value) else MISSING
        elif passes_through(value):
            return value
        else:
            return MISSING
        if value is MISSING:
            return MISSING
    return value


def preloadable(parts: tuple[str, ...]) -> bool:
    """False for a path ``get_path`` may fail on (a digit-like part such as ``²`` that ``int`` refuses).

    Such a path is left to a lazy ``get_path`` so that it fails only where it did before: when
    the directive holding it is actually evaluated, not while the whole table is loaded.
    """
    for part in parts:
        if part.isdigit():
            try:
                int(part)
            except ValueError:
                return False
    return True


@dataclass
class _Node:
    slot: int | None = None
    children: dict[str, "_Node"] = field(default_factory=dict)


# A frozen tree level: whether every child is a leaf, then per child (key, slot or None,
# the child's own level or None for a leaf, list index or None).
_Level = tuple[bool, tuple[tuple[str, "int | None", "_Level | None", "int | None"], ...]]


def _fill(value: Any, level: _Level, values: Values) -> None:
    """Store every registered path below ``value`` into its slot; absent subtrees are skipped.

    A level of leaves only (``$.context.campaign.*``: most levels) below a dict is read in place
    rather than by a further call.
    """
    if isinstance(value, dict):
        get = value.get
        for key, slot, sub, _ in level[1]:
            child = get(key, MISSING)
            if child is MISSING:
                continue
            if slot is not None:
                values[slot] = child
            if sub is None:
                continue
            leaves_only, entries = sub
            if leaves_only and isinstance(child, dict):
                child_get = child.get
                for leaf_key, leaf_slot, _, _ in entries:  # a leaf is a registered path: it has a slot
                    values[leaf_slot] = child_get(leaf_key, MISSING)  # type: ignore[index]  # MISSING: what it held
            else:
                _fill(child, sub, values)
    elif isinstance(value, list):
        size = len(value)
        for _, slot, sub, index in level[1]:
            if index is None or index >= size:
                continue
            child = value[index]
            if slot is not None:
                values[slot] = child
            if sub is not None:
                _fill(child, sub, values)
    elif value is not MISSING and passes_through(value):
        _fill_all(value, level, values)


def _fill_all(value: Any, level: _Level, values: Values) -> None:
    """Every slot below a falsy primitive holds it (``passes_through``)."""
    for _, slot, sub, _ in level[1]:
        if slot is not None:
            values[slot] = value
        if sub is not None:
            _fill_all(value, sub, values)


class Scope:
    """The slots of one evaluation context: paths of the payload, constants, computed values.

    Build it by registering paths (``path_slot``), constants (``const_slot``) and computed
    values (``new_slot``) while compiling, then call ``loader()`` once: the loader turns a
    payload into a fresh list of values (constants in place, every path looked up, computed
    slots ``MISSING`` until their node stores them).
    """

    def __init__(self) -> None:
        self._template: list[Any] = []
        self._root = _Node()
        self._paths: dict[tuple[str, ...], int] = {}

    def new_slot(self, value: Any = MISSING) -> int:
        self._template.append(value)
        return len(self._template) - 1

    def const_slot(self, value: Any) -> int:
        return self.new_slot(value)

    def path_slot(self, parts: tuple[str, ...]) -> int:
        """The slot holding ``get_path(payload, parts)``; one slot per distinct path."""
        slot = self._paths.get(parts)
        if slot is None:
            slot = self._paths[parts] = self.new_slot()
            node = self._root
            for part in parts:
                node = node.children.setdefault(part, _Node())
            node.slot = slot
        return slot

    def loader(self) -> Loader:
        template = tuple(self._template)
        root_slot = self._root.slot
        level = _freeze(self._root) if self._root.children else None

        def load(payload: Any) -> Values:
            values = list(template)
            if root_slot is not None:
                values[root_slot] = payload
            if level is not None:
                _fill(payload, level, values)
            return values

        return load


def _freeze(node: _Node) -> _Level:
    entries = tuple((key, child.slot, _freeze(child) if child.children else None, int(key) if key.isdigit() else None)
                    for key, child in node.children.items())
    return all(sub is None for _, _, sub, _ in entries), entries
