"""FQL: Segment's subscription conditions, and syntax errors that say where."""

from __future__ import annotations

import pytest

from edgeproxy.mapping.fql import FQLSyntaxError, parse_fql

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
