"""FQL: Segment's subscription conditions, and syntax errors that say where."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgeproxy.mapping.fql import FQLSyntaxError, parse_condition, parse_fql

TRACK = {"type": "track", "event": "Order Completed", "properties": {"plan": "pro", "seats": 5, "ok": True},
         "context": {"library": {"name": "analytics.js"}}}
PAGE = {"type": "page", "name": "Home", "properties": {"seats": 1}}


@pytest.mark.parametrize("source, track, page", [
    ('type = "track"', True, False),
    ('type = "track" and event != "Order Completed"', False, False),
    ('type = "track" and event = "Order Completed"', True, False),
    ('type = "page" or type = "screen"', False, True),
    ('not type = "track"', False, True),
    ('!(type = "track")', False, True),
    ('type = "track" or type = "page" and name = "Nope"', True, False),  # and binds tighter
    ('(type = "track" or type = "page") and name = "Nope"', False, False),
    ('properties.plan = "pro"', True, False),
    ('context.library.name = "analytics.js"', True, False),
    ('properties.seats = 5', True, False),
    ('properties.seats = "5"', False, False),  # strict: a string is not a number
    ('properties.ok = true', True, False),
    ('properties.ok = 1', False, False),  # true is not 1
    ('properties.seats > 2', True, False),
    ('properties.seats <= 1', False, True),
    ('name = null', True, False),
    ('name != null', False, True),
    ('contains(event, "Order")', True, False),
    ('match(event, "Order*")', True, False),
    ("event = 'Order Completed'", True, False),
    ('TYPE = "track"', False, False),  # paths are case-sensitive
    ('type = "track" AND event = "Order Completed"', True, False),  # keywords are not
])
def test_evaluation(source: str, track: bool, page: bool) -> None:
    predicate = parse_fql(source)
    assert predicate(TRACK) is track
    assert predicate(PAGE) is page


def test_missing_field_is_not_equal() -> None:
    assert parse_fql('event != "Order Completed"')({"type": "track"}) is True
    assert parse_fql('event = "Order Completed"')({"type": "track"}) is False


def test_bracket_path_with_space() -> None:
    msg = {"integrations": {"Actions Amplitude": {"session_id": 7}}}
    assert parse_fql('integrations["Actions Amplitude"].session_id = 7')(msg)


@pytest.mark.parametrize("source, message, position", [
    ('type = "track" and', "expected a field", 19),
    ('type = ', "expected a value", 8),
    ('type "track"', "expected an operator", 6),
    ('(type = "track"', "expected ')'", 16),
    ('type = "track" event = "x"', "expected 'and', 'or'", 16),
    ('type = "track', "unterminated string", 8),
    ('type = "a" & event = "b"', "unexpected character '&'", 12),
    ('', "expected a condition", 1),
    ('contains(event "x")', "expected ','", 16),
])
def test_syntax_errors_carry_position(source: str, message: str, position: int) -> None:
    with pytest.raises(FQLSyntaxError) as info:
        parse_fql(source)
    assert message in str(info.value)
    assert info.value.position == position
    assert f"at position {position}" in str(info.value)
    assert str(info.value).endswith(source)


# Conditions built from the grammar's pieces, weighted towards the type tests the dispatch reads.
_TYPES = ["track", "page", "identify", "Track", ""]
_atoms = st.one_of(
    st.sampled_from(_TYPES).map(lambda t: f'type = "{t}"'),
    st.sampled_from(_TYPES).map(lambda t: f"$.type = '{t}'"),
    st.sampled_from(['type != "track"', "type = null", "type != null", "type = 5", "type = true", 'TYPE = "track"',
                     'event = "Clicked"', 'event != "Clicked"', 'contains(type, "a")', 'match(type, "t*")', "type > 1",
                     'properties.type = "track"', "type.0 = \"t\""]),
)
conditions = st.recursive(_atoms, lambda inner: st.one_of(
    st.tuples(inner, st.sampled_from([" and ", " or ", " AND ", " Or "]), inner).map("".join),
    inner.map(lambda c: f"({c})"), inner.map(lambda c: f"not ({c})"), inner.map(lambda c: f"!({c})")), max_leaves=6)
typed_messages = st.fixed_dictionaries({}, optional={
    "type": st.one_of(st.sampled_from(_TYPES), st.none(), st.integers(0, 2), st.booleans(), st.lists(st.just("track"), max_size=1)),
    "event": st.sampled_from(["Clicked", "Other"]), "properties": st.just({"type": "track"})})


@settings(max_examples=400, deadline=None)
@given(conditions, typed_messages)
def test_condition_types_bound_the_predicate(source: str, message: dict) -> None:
    """``types`` is a sound bound and ``exact`` an exact one: the mapper's dispatch relies on both."""
    condition = parse_condition(source)
    assert condition.predicate is parse_fql(source)
    value = message.get("type")
    in_types = condition.types is not None and type(value) is str and value in condition.types
    holds = condition.predicate(message)
    if condition.types is not None and holds:
        assert in_types
    if condition.exact:
        assert condition.types is not None and holds is in_types


@pytest.mark.parametrize("source, types, exact", [
    ('type = "track"', {"track"}, True),
    ('type = "track" or type = "page"', {"track", "page"}, True),
    ('type = "track" and event != "Order Completed"', {"track"}, False),
    ('(type = "track" or type = "page") and type = "page"', {"page"}, True),
    ('type = "track" or event = "x"', None, False),
    ('not type = "track"', None, False),
    ('type != "track"', None, False),
    ('properties.type = "track"', None, False),
])
def test_condition_types(source: str, types: set | None, exact: bool) -> None:
    condition = parse_condition(source)
    assert (condition.types, condition.exact) == (None if types is None else frozenset(types), exact)


@settings(max_examples=300, deadline=None)
@given(st.lists(conditions, min_size=1, max_size=5), st.lists(typed_messages, min_size=1, max_size=5))
def test_mapper_dispatch_by_type_equals_asking_every_predicate(sources: list[str], messages: list[dict]) -> None:
    from edgeproxy.mapping import Mapper

    mapper = Mapper({"api_key": "k", "secret_key": "s",
                     "subscriptions": [{"action": "logEventV2", "subscribe": s, "name": str(i)} for i, s in enumerate(sources)]})
    for message in messages:
        expected = [sub.name for sub in mapper.subscriptions if sub.predicate(message)]
        assert [sub.name for sub in mapper.matching(message)] == expected
