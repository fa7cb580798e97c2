"""A subscription's mapping compiled together with its action's field table into one function.

Why generated code: the definition is resolve the whole mapping into a dict, ``remove_empty_values``
into a second dict, then ``validate`` into a third. Run per event as closures over a list of
slots, that is ~40 path lookups, a dozen calls for directives and a loop of ~40 (key, slot, step)
entries with a call per present field. Written out as one Python function instead, every path is
a local loaded by nested ``dict.get`` (a shared prefix read once, an absent one skipping its
subtree), every directive an ``if`` or a dict display, and every field a test of its local with
the usual case (a non-empty ``str`` for a string field, and so on) settled inline. ``plan.source``
holds the text; the test suite pins its results to the definition on generated messages and
mappings. The result (payload, key order, errors and their order) is exactly
``validate(remove_empty_values(resolved))``.

The generator knows the directives' semantics only as far as writing them down takes (absent
members leave objects, ``@if``'s test, ``undefined`` list items become ``null``); checking a
mapping, ``@arrayPath``'s item mappings and string conversion stay with ``directives``.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

from .coerce import is_date_like
from .directives import (
    MISSING,
    Scope,
    array_item_mapping,
    array_items,
    compile_mapping,
    compile_node,
    get_path,
    is_directive,
    js_string,
    placeholders,
    preloadable,
    split_path,
)
from .fields import Field
from .paths import passes_through
from .schema import (
    DROPPED,
    Invalid,
    field_step,
    missing_message,
    remove_empty_values,
    validate,
)

__all__ = ["PayloadPlan"]

Plan = Callable[[Any, "str | None"], "tuple[dict[str, Any], list[str]]"]

_AS_IS = {"string": "type({v}) is str and {v}", "boolean": "type({v}) is bool", "number": "type({v}) is int",
          "integer": "type({v}) is int", "datetime": "type({v}) is int or type({v}) is str and {v} and is_date_like({v})"}


def _as_is(spec: Field, prebuilt: bool) -> str | None:
    """The test, on a field's value ``{v}``, under which its step returns the value unchanged (see
    ``schema.field_step``): the usual values are stored without a call. ``prebuilt``: the value is
    a fresh object of the plan's own, already without nulls."""
    if spec.multiple:
        return None
    if spec.type == "object":
        if spec.properties is None:
            return "type({v}) is dict"
        if prebuilt and all(sub.type == "string" for sub in spec.properties.values()):
            return "strings_only({v})"  # (setOnce, setAlways, userAgentData, library2)
        return None
    return _AS_IS.get(spec.type)


def _strings_only(obj: dict[str, Any]) -> bool:
    for value in obj.values():
        if type(value) is not str:
            return False
    return True


class PayloadPlan:
    """``plan(message, device_id)`` -> ``(payload, errors)`` for one subscription.

    Equivalent to resolving ``mapping`` against ``message``, replacing ``device_id`` by the
    given one when it is truthy, then ``validate(remove_empty_values(...), fields)``. Raises
    DirectiveError at construction when the mapping is malformed.
    """

    def __init__(self, mapping: dict[str, Any], fields: Mapping[str, Field], where: str = "mapping"):
        self._fields = fields
        self.source: str | None = None  # the generated function's text, for reading and debugging
        self.run: Plan = self._generic_run  # ``run(message, device_id)``: ``plan(...)`` without a call in between
        if is_directive(mapping):  # a whole mapping that is one directive: no per-key plan to make
            self._resolve = compile_mapping(mapping, where)
            return
        for key, node in mapping.items():  # the directives' own checks and messages for a malformed node
            compile_node(node, Scope(), f"{where}.{key}")
        try:
            source, namespace = _Writer(fields).plan(mapping)
            code = compile(source, f"<payload plan of {where}>", "exec")
        except (SyntaxError, RecursionError, MemoryError):  # nested beyond what Python compiles (~100 levels)
            self._resolve = compile_mapping(mapping, where)
            return
        exec(code, namespace)
        self.source = source
        self.run = namespace["plan"]

    def __call__(self, message: Any, device_id: str | None = None) -> tuple[dict[str, Any], list[str]]:
        return self.run(message, device_id)

    def _generic_run(self, message: Any, device_id: str | None) -> tuple[dict[str, Any], list[str]]:
        """The definition, step by step."""
        resolved = self._resolve(message)
        if device_id:
            resolved["device_id"] = device_id
        return validate(remove_empty_values(resolved, self._fields), self._fields)


def _take(payload: dict[str, Any], key: str, value: Any, step: Callable[[Any], Any], if_missing: str | None,
          missing: list[str], invalid: list[str]) -> None:
    """A present value the inline test did not settle: its field's step, then store, drop or report."""
    try:
        value = step(value)
    except Invalid as exc:
        invalid.append(exc.message)
        return
    if value is not DROPPED:
        payload[key] = value
    elif if_missing is not None:
        missing.append(if_missing)


def _locals(tree: dict[str, Any]) -> Any:
    """The registered locals of every path in ``tree``, depth first."""
    for local, children in tree.values():
        if local is not None:
            yield local
        yield from _locals(children)


def _declared_object(spec: Field | None) -> bool:
    return spec is not None and spec.type == "object" and bool(spec.properties) and not spec.multiple


_Tree = dict[str, tuple["str | None", "_Tree"]]  # key -> (the local of this path if registered, children)


class _Writer:
    """Writes one plan function. Every value gets a name: a local (``p`` path, ``n`` path prefix,
    ``v`` computed value, ``o`` object) or a namespace constant (``k``), so an expression is never
    evaluated twice."""

    def __init__(self, fields: Mapping[str, Field]):
        self.fields = fields
        self.namespace: dict[str, Any] = {"MISSING": MISSING, "passes_through": passes_through, "take": _take, "js_string": js_string,
                                          "get_path": get_path, "array_items": array_items,
                                          "is_date_like": is_date_like, "strings_only": _strings_only}
        self.tree: _Tree = {}
        self.paths: dict[tuple[str, ...], str] = {(): "message"}
        self.lines: list[str] = []
        self.count = 0
        self.constants: dict[str, Any] = {}  # name or literal -> its value: never MISSING, tested here once
        self.present: set[str] = set()  # names that are never MISSING nor None: no test written for them

    def fresh(self, prefix: str) -> str:
        self.count += 1
        return f"{prefix}{self.count}"

    def emit(self, depth: int, line: str) -> None:
        self.lines.append("    " * depth + line)

    def const(self, value: Any) -> str:
        if value is None or type(value) in (str, bool, int):
            name = repr(value)  # a literal: these are immutable and their repr reads back exactly
        else:
            name = self.fresh("k")
            self.namespace[name] = value  # shared by every event, as the directives share a constant
        self.constants[name] = value
        if value is not None:
            self.present.add(name)
        return name

    def path(self, text: str, depth: int, inline: bool = False) -> str:
        """A path's local, or its lookup where it is evaluated when it may fail (see ``preloadable``):
        assigned to a local, or ``inline`` as an expression for a caller that uses it once."""
        parts = split_path(text)
        if not preloadable(parts):
            lookup = f"get_path(message, {self.const(parts)})"
            return lookup if inline else self.assign(depth, lookup)
        if parts not in self.paths:
            self.paths[parts] = self.fresh("p")
            level = self.tree
            for part in parts[:-1]:
                level = level.setdefault(part, (None, {}))[1]
            level[parts[-1]] = (self.paths[parts], level.get(parts[-1], (None, {}))[1])
        return self.paths[parts]

    def assign(self, depth: int, expression: str, prefix: str = "v", present: bool = False) -> str:
        name = self.fresh(prefix)
        self.emit(depth, f"{name} = {expression}")
        if present:
            self.present.add(name)
        return name

    def node(self, node: Any, depth: int, without_nulls: bool = False) -> str:
        """The name holding ``node``'s value, after the statements computing it."""
        if is_directive(node):
            directive, arg = next(iter(node.items()))
            if directive == "@path":
                return self.path(arg, depth)
            if directive == "@literal":
                return self.const(arg)
            if directive == "@if":
                return self.condition(arg, depth)
            if directive == "@template":
                pieces = [repr(p) if i % 2 == 0 else f"js_string({self.path(p, depth, inline=True)})"
                          for i, p in enumerate(placeholders(arg))]
                return self.assign(depth, " + ".join(pieces), present=True)
            root = self.path(arg[0], depth) if isinstance(arg[0], str) else self.node(arg[0], depth)  # @arrayPath
            return self.assign(depth, f"array_items({root}, {self.const(array_item_mapping(arg, ''))})")
        if isinstance(node, dict):  # absent members are left out (and null ones too, where asked)
            members = [(key, self.node(value, depth)) for key, value in node.items()]
            name = self.assign(depth, "{}", "o", present=True)
            for key, value in members:
                store = f"{name}[{self.const(key)}] = {value}"
                if value in self.present:
                    self.emit(depth, store)
                elif value not in self.constants:  # (the constant left is null)
                    test = f"{value} is not MISSING" + (f" and {value} is not None" if without_nulls else "")
                    self.emit(depth, f"if {test}: {store}")
                elif not without_nulls:
                    self.emit(depth, store)
            return name
        if isinstance(node, list):  # an absent item is null
            items = [v if v in self.present or v in self.constants else f"None if {v} is MISSING else {v}"
                     for v in [self.node(value, depth) for value in node]]
            return self.assign(depth, "[" + ", ".join(items) + "]", present=True)
        return self.const(node)

    def condition(self, arg: dict[str, Any], depth: int) -> str:
        """``@if``: ``exists`` holds for a value that is neither absent nor null, ``blank`` for the rest and ''."""
        blank = "exists" not in arg
        value = self.node(arg["blank" if blank else "exists"], depth)
        if value in self.constants:  # decided now: only the branch taken is written
            known = self.constants[value]
            holds = (known is None or known == "") if blank else known is not None
            taken = "then" if holds else "else"
            return self.node(arg[taken], depth) if taken in arg else "MISSING"
        name = self.fresh("v")
        if blank:
            self.emit(depth, f"if {value} is MISSING or {value} is None or {value} == '':")
        else:
            self.emit(depth, f"if {value} is not MISSING and {value} is not None:")
        self.emit(depth + 1, f"{name} = {self.node(arg['then'], depth + 1) if 'then' in arg else 'MISSING'}")
        self.emit(depth, "else:")
        self.emit(depth + 1, f"{name} = {self.node(arg['else'], depth + 1) if 'else' in arg else 'MISSING'}")
        return name

    def load(self, value: str, tree: _Tree, depth: int) -> None:
        """Read every registered path below ``value`` into its local: dict keys, and digit keys of lists."""
        self.emit(depth, f"if isinstance({value}, dict):")
        for key, (local, children) in tree.items():
            self.child(f"{value}.get({key!r}, MISSING)", local, children, depth + 1)
        indexed = [(int(key), local, children) for key, (local, children) in tree.items() if key.isdigit()]
        if indexed:
            self.emit(depth, f"elif isinstance({value}, list):")
            for index, local, children in indexed:
                self.emit(depth + 1, f"if len({value}) > {index}:")
                self.child(f"{value}[{index}]", local, children, depth + 2)
        below = list(_locals(tree))
        if below:  # a falsy primitive is every path below it (paths.passes_through)
            self.emit(depth, f"elif {value} is not MISSING and passes_through({value}):")
            self.emit(depth + 1, " = ".join(below) + f" = {value}")

    def child(self, expression: str, local: str | None, children: _Tree, depth: int) -> None:
        name = local or self.fresh("n")
        self.emit(depth, f"{name} = {expression}")
        if children:
            self.load(name, children, depth)

    def plan(self, mapping: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        """The source of ``plan(message, device_id)`` and the namespace it runs in."""
        values: dict[str, str] = {}
        prebuilt: set[str] = set()
        for key, node in mapping.items():  # computed in mapping order, also for keys the table drops
            declared = isinstance(node, dict) and not is_directive(node) and _declared_object(self.fields.get(key))
            values[key] = self.node(node, 1, without_nulls=declared)
            if declared:
                prebuilt.add(key)
        computed, self.lines = self.lines, []
        if "device_id" in self.fields:  # its own local: a path's local may be read by another field too
            self.emit(1, f"device = {values.get('device_id', 'MISSING')}")
            self.emit(1, "if device_id: device = device_id")
            values["device_id"] = "device"
        self.emit(1, "payload = {}")
        self.emit(1, "missing = []")
        self.emit(1, "invalid = []")
        for key, spec in self.fields.items():
            if key in values or spec.required:
                self.field(key, spec, values.get(key, "MISSING"), key in prebuilt)
        self.emit(1, "return payload, missing + invalid")
        fields, self.lines = self.lines, []
        locals_ = [name for parts, name in self.paths.items() if parts]
        for start in range(0, len(locals_), 10):
            self.emit(1, " = ".join(locals_[start:start + 10]) + " = MISSING")
        if self.tree:
            self.load("message", self.tree, 1)
        source = "\n".join(["def plan(message, device_id):", *self.lines, *computed, *fields, ""])
        return source, self.namespace

    def field(self, key: str, spec: Field, value: str, prebuilt: bool) -> None:
        """Store, drop or report one field of the table, in the table's order."""
        if_missing = missing_message(key) if spec.required else None
        if value == "MISSING":
            if if_missing is not None:
                self.emit(1, f"missing.append({if_missing!r})")
            return
        step = self.const(field_step(spec, without_nulls=prebuilt))
        take = f"take(payload, {key!r}, {value}, {step}, {if_missing!r}, missing, invalid)"
        as_is = _as_is(spec, prebuilt)
        present = value in self.present or value in self.constants
        if not present:
            self.emit(1, f"if {value} is not MISSING:")
        depth = 1 if present else 2
        if as_is is None:
            self.emit(depth, take)
        else:
            self.emit(depth, f"if {as_is.format(v=value)}: payload[{key!r}] = {value}")
            self.emit(depth, f"else: {take}")
        if if_missing is not None and not present:
            self.emit(1, f"else: missing.append({if_missing!r})")
