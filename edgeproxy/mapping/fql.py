"""Segment's subscription language (FQL), parsed once into a predicate over a Segment message.

Supported, as Segment writes it: dotted paths (``type``, ``event``, ``name``,
``properties.plan``, ``context.library.name``), ``=`` ``!=`` ``<`` ``<=`` ``>`` ``>=`` against
strings, numbers, ``true``/``false``/``null``, ``contains(path, "text")`` and
``match(path, "glob*")``, ``and``/``or``/``not`` (``!`` too) and parentheses. ``and`` binds
tighter than ``or``. A syntax error says what was expected and at which position (1-based
column), so a user can fix a subscription copied from Segment.

Besides the predicate, parsing records which message ``type`` values a condition can hold for
(``Condition.types``): nearly every subscription tests ``type = "..."``, so a mapper can pick
the subscriptions that may match an event by its type instead of asking each one.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Callable

import orjson

from .directives import MISSING, get_path, split_path

Predicate = Callable[[dict[str, Any]], bool]

_TOKEN = re.compile(
    r"""\s*(?:
        (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')
      | (?P<number>-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?(?![\w.]))
      | (?P<op>!=|<=|>=|=|<|>)
      | (?P<punct>[(),!])
      | (?P<word>[A-Za-z_$][\w$\-]*(?:\.[\w$\-]+|\[(?:\d+|"[^"]*"|'[^']*')\])*)
      | (?P<bad>\S)
    )""",
    re.VERBOSE,
)
_KEYWORDS = {"and", "or", "not", "true", "false", "null"}
_FUNCTIONS = {"contains", "match"}


@dataclass(frozen=True, slots=True)
class Condition:
    """A parsed condition: its predicate, plus what it says about the message's ``type``.

    ``types``: the predicate can only be true when ``m["type"]`` is a ``str`` in this set
    (None: no such bound). ``exact``: moreover it is true for every such message, i.e. the
    condition is ``type = "a"`` or an ``or``/``and`` of such tests and nothing else.
    """

    predicate: Predicate
    types: frozenset[str] | None = None
    exact: bool = False


def _or_types(parts: tuple[Condition, ...]) -> Condition:
    """``a or b``: bounded only when every part is (by the union); exact when every part is."""
    if any(p.types is None for p in parts):
        return Condition(_any_of(tuple(p.predicate for p in parts)))
    types = frozenset().union(*(p.types for p in parts if p.types is not None))  # (none is None: tested above)
    return Condition(_any_of(tuple(p.predicate for p in parts)), types, all(p.exact for p in parts))


def _and_types(parts: tuple[Condition, ...]) -> Condition:
    """``a and b``: bounded by every bounded part (the intersection); exact when every part is."""
    bounds = [p.types for p in parts if p.types is not None]
    types = frozenset.intersection(*bounds) if bounds else None
    return Condition(_all_of(tuple(p.predicate for p in parts)), types, all(p.exact for p in parts))


class FQLSyntaxError(ValueError):
    def __init__(self, message: str, position: int, source: str):
        super().__init__(f"{message} at position {position}: {source}")
        self.position = position
        self.source = source


@dataclass(frozen=True)
class _Tok:
    kind: str  # string number op punct word end
    text: str
    pos: int  # 1-based column


def _tokenize(source: str) -> list[_Tok]:
    tokens: list[_Tok] = []
    index = 0
    while index < len(source):
        match = _TOKEN.match(source, index)
        if match is None or match.end() == index:  # only trailing whitespace left
            break
        kind = match.lastgroup or "end"
        start = match.start(kind)
        if kind == "bad":
            quote = source[start] in "\"'"
            raise FQLSyntaxError("unterminated string" if quote else f"unexpected character {source[start]!r}", start + 1, source)
        tokens.append(_Tok(kind, match.group(kind), start + 1))
        index = match.end()
    tokens.append(_Tok("end", "", len(source) + 1))
    return tokens


def _strict_equal(a: Any, b: Any) -> bool:
    """JavaScript ``===`` on JSON values (so ``true`` is not ``1``)."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return a == b
    return type(a) is type(b) and a == b


class _Parser:
    def __init__(self, source: str):
        self.source = source
        self.tokens = _tokenize(source)
        self.i = 0

    def peek(self) -> _Tok:
        return self.tokens[self.i]

    def take(self) -> _Tok:
        tok = self.tokens[self.i]
        self.i += 1
        return tok

    def fail(self, expected: str, tok: _Tok | None = None) -> FQLSyntaxError:
        tok = tok or self.peek()
        found = "end of input" if tok.kind == "end" else repr(tok.text)
        return FQLSyntaxError(f"expected {expected}, found {found}", tok.pos, self.source)

    def is_word(self, word: str) -> bool:
        tok = self.peek()
        return tok.kind == "word" and tok.text.lower() == word

    def parse(self) -> Condition:
        if self.peek().kind == "end":
            raise self.fail("a condition such as type = \"track\"")
        condition = self.parse_or()
        if self.peek().kind != "end":
            raise self.fail("'and', 'or' or the end of the condition")
        return condition

    def parse_or(self) -> Condition:
        parts = [self.parse_and()]
        while self.is_word("or"):
            self.take()
            parts.append(self.parse_and())
        return parts[0] if len(parts) == 1 else _or_types(tuple(parts))

    def parse_and(self) -> Condition:
        parts = [self.parse_unary()]
        while self.is_word("and"):
            self.take()
            parts.append(self.parse_unary())
        return parts[0] if len(parts) == 1 else _and_types(tuple(parts))

    def parse_unary(self) -> Condition:
        tok = self.peek()
        if self.is_word("not") or (tok.kind == "punct" and tok.text == "!"):
            self.take()
            inner = self.parse_unary().predicate
            return Condition(lambda m: not inner(m))
        if tok.kind == "punct" and tok.text == "(":
            self.take()
            grouped = self.parse_or()
            if not (self.peek().kind == "punct" and self.peek().text == ")"):
                raise self.fail("')'")
            self.take()
            return grouped
        if tok.kind == "word" and tok.text.lower() in _FUNCTIONS:
            return Condition(self.parse_function())
        return self.parse_comparison()

    def parse_path(self) -> tuple[str, ...]:
        tok = self.peek()
        if tok.kind != "word" or tok.text.lower() in _KEYWORDS:
            raise self.fail("a field such as type, event or properties.plan")
        self.take()
        return split_path(tok.text)

    def parse_value(self) -> Any:
        tok = self.peek()
        if tok.kind == "string":
            self.take()
            body = tok.text[1:-1]
            if tok.text[0] == "'":
                body = body.replace('\\\'', "'").replace('"', '\\"')
            try:
                return orjson.loads(f'"{body}"')
            except orjson.JSONDecodeError:
                raise FQLSyntaxError("invalid escape in string", tok.pos, self.source) from None
        if tok.kind == "number":
            self.take()
            number = float(tok.text)
            return int(number) if number.is_integer() and "." not in tok.text and "e" not in tok.text.lower() else number
        if tok.kind == "word" and tok.text.lower() in ("true", "false", "null"):
            self.take()
            return {"true": True, "false": False, "null": None}[tok.text.lower()]
        raise self.fail("a value (a \"string\", a number, true, false or null)")

    def parse_comparison(self) -> Condition:
        path = self.parse_path()
        tok = self.peek()
        if tok.kind != "op":
            raise self.fail("an operator (=, !=, <, <=, >, >=)")
        self.take()
        value = self.parse_value()
        predicate = _comparison(path, tok.text, value)
        if path == ("type",) and tok.text == "=" and type(value) is str:
            return Condition(predicate, frozenset((value,)), exact=True)
        return Condition(predicate)

    def parse_function(self) -> Predicate:
        name = self.take().text.lower()
        if not (self.peek().kind == "punct" and self.peek().text == "("):
            raise self.fail(f"'(' after {name}")
        self.take()
        path = self.parse_path()
        if not (self.peek().kind == "punct" and self.peek().text == ","):
            raise self.fail("','")
        self.take()
        tok = self.peek()
        if tok.kind != "string":
            raise self.fail(f"a \"string\" as the second argument of {name}")
        needle = self.parse_value()
        if not (self.peek().kind == "punct" and self.peek().text == ")"):
            raise self.fail("')'")
        self.take()
        get = _getter(path)
        if name == "contains":
            return lambda m: isinstance(v := get(m), str) and needle in v
        pattern = re.compile(fnmatch.translate(needle))
        return lambda m: isinstance(v := get(m), str) and pattern.match(v) is not None


def _any_of(parts: tuple[Predicate, ...]) -> Predicate:
    """``a or b or ...``; the two-part case (the usual one) without a generator per call."""
    if len(parts) == 2:
        first, second = parts
        return lambda m: first(m) or second(m)
    return lambda m: any(p(m) for p in parts)


def _all_of(parts: tuple[Predicate, ...]) -> Predicate:
    """``a and b and ...``; the two-part case (the usual one) without a generator per call."""
    if len(parts) == 2:
        first, second = parts
        return lambda m: first(m) and second(m)
    return lambda m: all(p(m) for p in parts)


def _getter(path: tuple[str, ...]) -> Callable[[Any], Any]:
    """``get_path(m, path)``; a one-part path (``type``, ``event``) is a single ``dict.get``."""
    if len(path) == 1 and not path[0].isdigit():  # a digit part may index a list: left to get_path
        key = path[0]
        return lambda m: m.get(key, MISSING) if isinstance(m, dict) else MISSING
    return lambda m: get_path(m, path)


def _equal_to(expected: Any) -> Callable[[Any], bool]:
    """``value === expected`` with the type test chosen once (``_strict_equal`` for the rest)."""
    if type(expected) is str:
        return lambda v: type(v) is str and v == expected
    return lambda v: _strict_equal(v, expected)


def _top_level_string_equals(key: str, expected: str) -> Predicate:
    """``m.key === "text"`` in one call: absent (``None`` from ``get``) is not a string either."""
    def equals(m: Any) -> bool:
        if not isinstance(m, dict):
            return False
        value = m.get(key)
        return type(value) is str and value == expected
    return equals


def _comparison(path: tuple[str, ...], op: str, expected: Any) -> Predicate:
    get = _getter(path)
    if expected is None and op in ("=", "!="):
        absent = op == "="
        return lambda m: (get(m) in (MISSING, None)) is absent
    if op in ("=", "!="):
        if type(expected) is str and len(path) == 1 and not path[0].isdigit():
            is_expected = _top_level_string_equals(path[0], expected)  # type = "track": the usual test
        else:
            equal = _equal_to(expected)
            is_expected = lambda m: equal(get(m))
        if op == "=":
            return is_expected
        return lambda m: not is_expected(m)
    if not isinstance(expected, (int, float)) or isinstance(expected, bool):
        compare: Callable[[Any], bool] = lambda v: False  # ordering is only defined on numbers
    else:
        compare = {"<": lambda v: v < expected, "<=": lambda v: v <= expected,
                   ">": lambda v: v > expected, ">=": lambda v: v >= expected}[op]

    def ordered(m: dict[str, Any]) -> bool:
        value = get(m)
        return isinstance(value, (int, float)) and not isinstance(value, bool) and compare(value)

    return ordered


@lru_cache(maxsize=256)
def parse_condition(source: str) -> Condition:
    """Compile ``source``; raise FQLSyntaxError (with ``position``) when it is not valid FQL."""
    if not isinstance(source, str):
        raise TypeError("an FQL condition must be a string")
    return _Parser(source).parse()


def parse_fql(source: str) -> Predicate:
    """The predicate of ``parse_condition(source)``."""
    return parse_condition(source).predicate
