"""Mapping directives and the generic payload steps (empty values, coercion, error wording)."""

from __future__ import annotations

import pytest

from edgeproxy.mapping.coerce import dayjs_utc_ms, format_session_id, number_to_string
from edgeproxy.mapping.directives import MISSING, DirectiveError, compile_mapping
from edgeproxy.mapping.fields import LOG_EVENT_V2, LOG_PURCHASE
from edgeproxy.mapping.schema import remove_empty_values, validate

MSG = {"userId": "u1", "name": "Home", "anonymousId": "a1", "context": {"device": {"id": None}},
       "integrations": {"Actions Amplitude": {"session_id": 42}}, "properties": {"products": {"price": "2", "sku": "x"}}}


def resolve(mapping, message=MSG):
    return compile_mapping(mapping)(message)


def test_path_with_space_and_brackets() -> None:
    assert resolve({"@path": "$.integrations.Actions Amplitude.session_id"}) == 42
    assert resolve({"@path": '$.integrations["Actions Amplitude"].session_id'}) == 42
    assert resolve({"@path": "$.nope.deeper"}) is MISSING


def test_object_drops_missing_keys_but_keeps_null() -> None:
    assert resolve({"a": {"@path": "$.nope"}, "b": {"@path": "$.context.device.id"}, "c": 1}) == {"b": None, "c": 1}


def test_if_exists_treats_null_as_absent() -> None:
    mapping = {"@if": {"exists": {"@path": "$.context.device.id"}, "then": "dev", "else": {"@path": "$.anonymousId"}}}
    assert resolve(mapping) == "a1"
    assert resolve(mapping, {"context": {"device": {"id": ""}}}) == "dev"  # '' exists


def test_if_blank() -> None:
    mapping = {"@if": {"blank": {"@path": "$.name"}, "then": "none", "else": "some"}}
    assert resolve(mapping, {"name": ""}) == "none"
    assert resolve(mapping) == "some"


def test_template_renders_missing_as_empty() -> None:
    assert resolve({"@template": "Viewed {{name}}"}) == "Viewed Home"
    assert resolve({"@template": "Viewed {{name}}"}, {}) == "Viewed "
    assert resolve({"@template": "{{ integrations.Actions Amplitude.session_id }}/{{x}}"}, {**MSG, "x": True}) == "42/true"


def test_array_path_treats_an_object_as_one_item() -> None:
    mapping = {"@arrayPath": ["$.properties.products", {"price": {"@path": "price"}, "quantity": {"@path": "quantity"}}]}
    assert resolve(mapping) == [{"price": "2"}]
    assert resolve(mapping, {}) is MISSING


def test_literal_and_lists() -> None:
    assert resolve({"@literal": {"@path": "x"}}) == {"@path": "x"}
    assert resolve([{"@path": "$.userId"}, {"@path": "$.nope"}]) == ["u1", None]


@pytest.mark.parametrize("mapping, message", [
    ({"@pth": "$.x"}, "unknown directive '@pth'"),
    ({"@path": 3}, "@path needs a string"),
    ({"@if": {"then": 1}}, "@if needs an object"),
    ({"@template": None}, "@template needs a string"),
    ({"a": {"@arrayPath": "x"}}, "mapping.a: @arrayPath needs"),
])
def test_bad_directives_are_reported(mapping, message) -> None:
    with pytest.raises(DirectiveError) as info:
        compile_mapping(mapping)
    assert message in str(info.value)


def test_empty_value_removal_rules() -> None:
    payload = remove_empty_values({
        "user_id": None, "device_id": "", "platform": None, "event_properties": {"a": None, "b": ""},
        "setOnce": {"initial_referrer": "", "initial_utm_source": None}, "unknown": 1,
    }, LOG_EVENT_V2)
    assert payload == {"user_id": None, "event_properties": {"a": None, "b": ""}, "setOnce": {"initial_referrer": ""}}


@pytest.mark.parametrize("payload, coerced", [
    ({"user_id": 98765}, {"user_id": "98765"}),
    ({"user_id": 1.5}, {"user_id": "1.5"}),
    ({"price": "19.99"}, {"price": 19.99}),
    ({"quantity": "3"}, {"quantity": 3}),
    ({"quantity": 2.0}, {"quantity": 2}),
    ({"use_batch_endpoint": "true"}, {"use_batch_endpoint": True}),
    ({"event_type": ["one"]}, {"event_type": "one"}),
    ({"products": {"price": None, "quantity": "2"}}, {"products": [{"price": 0, "quantity": 2}]}),
    ({"session_id": "2024-03-14T15:09:26Z"}, {"session_id": "2024-03-14T15:09:26Z"}),
])
def test_coercion(payload, coerced) -> None:
    out, errors = validate({"event_type": "e", **payload}, LOG_PURCHASE)
    assert errors == []
    assert out == {"event_type": "e", **coerced}


@pytest.mark.parametrize("payload, error", [
    ({"quantity": 1.5}, "Quantity must be an integer but it was a number."),
    ({"quantity": "1.5"}, "Quantity must be an integer but it was a string."),
    ({"location_lng": "east"}, "Longtitude must be a number but it was a string."),
    ({"session_id": "not-a-date"}, "Session ID must be a valid date-like string but it was not."),
    ({"time": "yesterday"}, "Timestamp must be a valid date-like string but it was not."),
    ({"event_properties": "x"}, "Event Properties must be an object but it was a string."),
    ({"event_properties": [1]}, "Event Properties must be an object but it was an array."),
    ({"user_id": {"a": 1}}, "User ID must be a string or null but it was an object."),
    ({"products": [{"quantity": 0.5}]}, "Quantity must be an integer but it was a number."),
])
def test_refusals_use_the_reference_wording(payload, error) -> None:
    _, errors = validate({"event_type": "e", **payload}, LOG_PURCHASE)
    assert errors == [error]


def test_required_field_missing() -> None:
    _, errors = validate({}, LOG_EVENT_V2)
    assert errors == ["The root value is missing the required field 'event_type'."]


@pytest.mark.parametrize("value, ms", [
    ("2024-03-14T15:09:26.535Z", 1710428966535),
    ("2024-03-14T16:09:26.535+01:00", 1710428966535),
    (1710428966535, 1710428966535),
    ("1710428966535", -8089218415000),  # dayjs reads digits as YYYYMMDDHHmmss
    ("2024-03-14", 1710374400000),
    ("Thu, 14 Mar 2024 15:09:26 GMT", 1710428966000),
    ("garbage", None),
])
def test_dayjs_utc(value, ms) -> None:
    assert dayjs_utc_ms(value) == ms


def test_session_id_formats() -> None:
    assert format_session_id("1710428966000") == 1710428966000
    assert format_session_id(-1) == -1
    assert format_session_id("2024-03-14T15:09:26.000Z") == 1710428966000


@pytest.mark.parametrize("value, text", [(98765.0, "98765"), (1.5, "1.5"), (1e21, "1e+21"), (1e-7, "1e-7"), (7, "7")])
def test_js_number_to_string(value, text) -> None:
    assert number_to_string(value) == text
