"""The compiled fast paths of the mapping give exactly what the generic steps give.

``PayloadPlan`` (mapping + field table in one pass), the path table of ``paths.Scope``, the
per-field steps of ``schema.field_step`` and the caches in ``coerce``/``useragent`` are
optimisations: each test here pins one of them to the plain definition it replaces.
"""

from __future__ import annotations

import copy

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgeproxy.mapping import DEFAULTS, PRESETS
from edgeproxy.mapping.coerce import dayjs_utc_ms, is_date_like, js_number
from edgeproxy.mapping.directives import MISSING, compile_mapping
from edgeproxy.mapping.fields import IDENTIFY_USER, LOG_EVENT, LOG_EVENT_V2, Field
from edgeproxy.mapping.fql import parse_fql
from edgeproxy.mapping.paths import Scope, get_path, split_path
from edgeproxy.mapping.plan import PayloadPlan
from edgeproxy.mapping.schema import (
    DROPPED,
    Invalid,
    field_step,
    remove_empty_values,
    validate,
)
from edgeproxy.mapping.useragent import parse_user_agent_properties

WEB_CONTEXT = {
    "library": {"name": "analytics.js"}, "locale": "en-US", "ip": "203.0.113.42",
    "page": {"referrer": "https://www.google.com/", "title": "Pricing"},
    "campaign": {"source": "newsletter", "medium": None, "name": "", "term": 7},
    "userAgent": "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36",
    "userAgentData": {"model": None, "platformVersion": "15.0.0"},
    "device": {"id": "dev-1", "type": "ios", "advertisingId": None, "idfa": "idfa-1"},
}
MESSAGES = [
    {"type": "track", "event": "Clicked", "userId": 98765, "anonymousId": "a1", "timestamp": "2024-03-14T15:09:26.535Z",
     "properties": {"price": "2.5", "quantity": "3", "products": [{"price": 1, "quantity": None}, None]},
     "traits": {"plan": "team"}, "context": WEB_CONTEXT, "integrations": {"Actions Amplitude": {"session_id": "1710428966000"}}},
    {"type": "track", "event": "", "userId": None, "properties": {"quantity": 1.5}, "context": {"device": []}},
    {"type": "identify", "traits": {"a": 1}, "context": {"campaign": {"source": ["x"]}, "page": {"referrer": ""}}},
    {"type": "page"},
]


def generic(mapping, fields, message, device_id=None):
    """The definition: resolve, override the device id, remove empty values, validate."""
    resolved = compile_mapping(mapping)(message)
    if device_id:
        resolved["device_id"] = device_id
    return validate(remove_empty_values(resolved, fields), fields)


@pytest.mark.parametrize("preset", PRESETS, ids=[p["name"] for p in PRESETS])
@pytest.mark.parametrize("message", MESSAGES)
@pytest.mark.parametrize("device_id", [None, "", "dev-9"])
def test_plan_equals_the_generic_steps(preset, message, device_id) -> None:
    from edgeproxy.mapping.actions import ACTIONS

    fields = ACTIONS[preset["action"]].fields
    before = copy.deepcopy(message)
    payload, errors = PayloadPlan(preset["mapping"], fields)(message, device_id)
    expected_payload, expected_errors = generic(preset["mapping"], fields, copy.deepcopy(message), device_id)
    assert (list(payload.items()), errors) == (list(expected_payload.items()), expected_errors)  # key order too
    assert message == before


def test_plan_reports_missing_before_invalid_in_table_order() -> None:
    mapping = {"quantity": {"@path": "$.q"}, "event_type": {"@path": "$.e"}, "price": {"@path": "$.p"}}
    payload, errors = PayloadPlan(mapping, LOG_EVENT)({"q": 1.5, "e": "", "p": "x"})
    assert payload == {}
    assert errors == ["The root value is missing the required field 'event_type'.",
                      "Price must be a number but it was a string.", "Quantity must be an integer but it was a number."]
    # a required field the mapping does not set at all is missing too
    assert PayloadPlan({}, LOG_EVENT)({})[1] == ["The root value is missing the required field 'event_type'."]


def test_device_id_override_does_not_leak_into_a_field_reading_the_same_path() -> None:
    mapping = {"device_id": {"@path": "$.anonymousId"}, "user_id": {"@path": "$.anonymousId"}, "event_type": "e"}
    payload, _ = PayloadPlan(mapping, LOG_EVENT)({"anonymousId": "anon"}, "dev-9")
    assert payload == {"user_id": "anon", "device_id": "dev-9", "event_type": "e"}


def test_device_id_override_applies_when_the_mapping_has_none() -> None:
    assert PayloadPlan({"event_type": "e"}, LOG_EVENT)({}, "dev-9")[0] == {"device_id": "dev-9", "event_type": "e"}


def test_a_mapping_that_is_one_directive_still_takes_the_generic_path() -> None:
    plan = PayloadPlan({"@path": "$.properties"}, LOG_EVENT)
    assert plan({"properties": {"event_type": "e", "x": 1, "quantity": "2"}}) == ({"event_type": "e", "quantity": 2}, [])


def test_object_of_paths_for_declared_properties_is_fresh_and_cleaned() -> None:
    message = {"context": {"page": {"referrer": None}, "campaign": {"source": 5, "medium": ""}}}
    payload, errors = PayloadPlan(DEFAULTS["actions"]["logEventV2"]["mapping"] | {"event_type": "e"}, LOG_EVENT_V2)(message)
    assert errors == []
    assert payload["setOnce"] == {"initial_utm_source": "5", "initial_utm_medium": ""}  # null goes, '' stays, 5 coerced
    assert payload["setAlways"] == {"utm_source": "5", "utm_medium": ""}
    assert message["context"]["campaign"] == {"source": 5, "medium": ""}


def test_declared_object_read_from_the_message_is_copied_not_shared() -> None:
    campaign = {"utm_source": "x", "utm_term": None}
    payload, _ = PayloadPlan({"event_type": "e", "setAlways": {"@path": "$.c"}}, LOG_EVENT_V2)({"c": campaign})
    assert payload["setAlways"] == {"utm_source": "x"}
    assert payload["setAlways"] is not campaign and campaign == {"utm_source": "x", "utm_term": None}


@pytest.mark.parametrize("spec, value", [
    (LOG_EVENT_V2["user_id"], ""), (LOG_EVENT_V2["user_id"], None), (LOG_EVENT_V2["user_id"], 12.0),
    (LOG_EVENT_V2["device_id"], None), (LOG_EVENT_V2["device_id"], ["x"]), (LOG_EVENT_V2["event_properties"], {"a": None}),
    (LOG_EVENT_V2["event_properties"], []), (LOG_EVENT_V2["use_batch_endpoint"], "false"), (LOG_EVENT_V2["use_batch_endpoint"], True),
    (LOG_EVENT_V2["time"], 17.5), (LOG_EVENT_V2["time"], "2024-03-14"), (LOG_EVENT_V2["time"], "soon"), (LOG_EVENT_V2["time"], True),
    (LOG_EVENT_V2["setOnce"], {"initial_referrer": 1, "other": None}), (LOG_EVENT_V2["setOnce"], {"initial_referrer": {}}),
    (LOG_EVENT_V2["products"], {"price": None}), (LOG_EVENT_V2["min_id_length"], None), (IDENTIFY_USER["paying"], 1),
    # number and integer fields: ints and floats take the fast step, everything else the general one
    *[(LOG_EVENT_V2[key], value) for key in ("price", "quantity", "min_id_length")
      for value in (3, 2.0, 2.5, -0.0, 2.0 ** 60, 1e300, float("inf"), True, "4", "4.5", "", None, [7], [7.5], {})],
])
def test_field_step_equals_removal_then_validation(spec, value) -> None:
    fields = {"k": spec}
    cleaned = remove_empty_values({"k": copy.deepcopy(value)}, fields)
    expected, errors = validate(cleaned, fields)
    try:
        got = field_step(spec)(value)
    except Invalid as exc:
        assert errors == [exc.message]
    else:
        assert errors == []
        assert got == expected.get("k", DROPPED) and type(got) is type(expected.get("k", DROPPED))


def test_field_step_without_nulls_is_only_for_declared_objects() -> None:
    with pytest.raises(ValueError, match="without_nulls"):
        field_step(Field("Plain", "string"), without_nulls=True)


def test_scope_loads_shared_prefixes_lists_and_the_root() -> None:
    scope = Scope()
    paths = ["$.context.page.url", "$.context.page", "$.context.nope.x", "$.items.1.sku", "$.items.9", "$", "$.a.b"]
    slots = [scope.path_slot(split_path(p)) for p in paths]
    assert scope.path_slot(split_path("$.context.page")) == slots[1]  # one slot per distinct path
    message = {"context": {"page": {"url": "u"}}, "items": [{"sku": "s0"}, {"sku": "s1"}], "a": "not an object"}
    values = scope.loader()(message)
    assert [values[s] for s in slots] == [get_path(message, split_path(p)) for p in paths]
    assert [values[s] for s in slots][:3] == ["u", {"url": "u"}, MISSING]


def test_a_path_int_cannot_read_fails_only_where_it_is_evaluated() -> None:
    mapping = {"@if": {"exists": {"@path": "$.a"}, "then": {"@path": "$.a"}, "else": {"@path": "$.list.²"}}}
    assert compile_mapping(mapping)({"a": 1, "list": [1]}) == 1
    with pytest.raises(ValueError):
        compile_mapping(mapping)({"list": [1]})


@pytest.mark.parametrize("text, number", [
    ("2024-03-14T15:09:26.535Z", None), ("12", 12.0), ("1.", 1.0), (".5", 0.5), ("-1e3", -1000.0), ("+Infinity", float("inf")),
    ("1.2.3", None), ("1e", None), ("e5", None), (" 7 ", 7.0), ("0x1f", 31.0), ("", 0.0),
])
def test_js_number(text, number) -> None:
    assert js_number(text) == number


def test_date_cache_gives_the_same_answer_twice_and_edge_years_still_work() -> None:
    for _ in range(2):
        assert dayjs_utc_ms("2024-03-14T15:09:26.535Z") == 1710428966535
        assert is_date_like("2024-03-14T15:09:26.535Z")
    assert dayjs_utc_ms("9999-12-31T23:59:59.999Z") == 253402300799999  # edge years: the time-tuple path
    assert dayjs_utc_ms("0001-01-01T00:00:00Z") == -62135596800000
    assert dayjs_utc_ms("0002-01-01T00:00:00+01:00") == -62104064400000  # the subtraction path, with an offset
    assert dayjs_utc_ms("1969-12-31T23:59:59.999Z") == -1  # floor, not truncation


@pytest.mark.parametrize("text", ["2024-03-14T15:09:26.535Z", "12:30", " 1:2", "1e5:", "Infinity:", "0x1:", ":",
                                  "99999999999999999:", "2024-01-01 10:00", "1710428966535", "99999999999999999", "", "0x10"])
def test_is_date_like_skips_number_parsing_only_where_number_says_nan(text) -> None:
    """A colon never appears in a string ``Number()`` accepts, so for those ``is_date_like`` asks
    dayjs directly; the rule it implements is unchanged: a truthy number in range, else dayjs."""
    number = js_number(text)
    expected = abs(number) <= 8.64e15 if number else dayjs_utc_ms(text) is not None
    if ":" in text:
        assert number is None
    assert is_date_like(text) == expected


def test_user_agent_cache_keeps_hints_of_different_types_apart() -> None:
    ua = WEB_CONTEXT["userAgent"]
    assert parse_user_agent_properties(ua, {"platformVersion": 1})["os_version"] == 1
    assert parse_user_agent_properties(ua, {"platformVersion": True})["os_version"] is True
    assert parse_user_agent_properties(ua, {"platformVersion": "1"})["os_version"] == "1"
    assert parse_user_agent_properties(ua, {"model": ["m"]})["device_model"] == ["m"]  # unhashable: computed, not cached
    first = parse_user_agent_properties(ua)
    first["os_name"] = "changed"
    assert parse_user_agent_properties(ua)["os_name"] == "Windows"  # callers get their own dict


@pytest.mark.parametrize("condition, message, expected", [
    ('type = "track"', {"type": "track"}, True),
    ('type = "track"', {"type": ["track"]}, False),
    ('event = 5', {"event": 5.0}, True),
    ('event = true', {"event": 1}, False),
    ('$.0 = "a"', ["a"], True),  # a digit path indexes a list, as get_path does
    ('type = "a" or type = "b"', {"type": "b"}, True),
    ('type = "a" and event = "b"', {"type": "a", "event": "c"}, False),
    ('type = "a" or type = "b" or type = "c"', {"type": "c"}, True),
])
def test_fql_fast_paths(condition, message, expected) -> None:
    assert parse_fql(condition)(message) is expected


# Generated plans against the definition: random mappings built from every directive (with paths
# that share prefixes, index lists, read the root, or may fail), on random messages.
_scalars = st.one_of(st.none(), st.booleans(), st.integers(-3, 2**40), st.floats(allow_nan=False), st.sampled_from(
    ["", "x", "2024-03-14T15:09:26Z", "1710428966000", "ios", "analytics.js", "true", "3", "1.5", "soon"]))
_json = st.recursive(_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.sampled_from(["a", "b", "0", "1", "price", "model", "x"]), inner, max_size=3)),
    max_leaves=8)
_PATHS = ["$.a", "$.a.b", "$.a.b.c", "$.l.0", "$.l.1.b", "$.l.0.²", "$", "$.b", "$.x", "b", "$.context.device.id",
          '$.integrations["Actions Amplitude"].x', "$.a.0", "$['a'].x"]
_path_nodes = st.sampled_from(_PATHS).map(lambda p: {"@path": p})
_mapping_nodes = st.recursive(
    st.one_of(_path_nodes, _scalars, _json.map(lambda v: {"@literal": v}),
              st.sampled_from(["Viewed {{a.b}}", "{{{x}}}-{{l.0.²}}", "plain", "{{ b }}{{$}}"]).map(lambda t: {"@template": t}),
              st.tuples(st.sampled_from(["$.l", "$.a", "$.x", "$.l.0.²"]), st.dictionaries(
                  st.sampled_from(["price", "b"]), _path_nodes.map(lambda n: {"@path": n["@path"].replace("$.", "")}), max_size=2),
                  st.booleans()).map(lambda t: {"@arrayPath": [t[0], t[1]] if t[2] else [t[0]]})),
    lambda inner: st.one_of(
        st.tuples(st.sampled_from(["exists", "blank"]), inner, st.none() | inner, st.none() | inner).map(
            lambda t: {"@if": {t[0]: t[1], **({"then": t[2]} if t[2] is not None else {}),
                               **({"else": t[3]} if t[3] is not None else {})}}),
        st.dictionaries(st.sampled_from(["a", "b", "model", "platformVersion", "utm_source", "initial_referrer"]), inner, max_size=3),
        st.lists(inner, max_size=2),
        inner.map(lambda n: {"@arrayPath": [n, {"b": {"@path": "b"}}]})),
    max_leaves=6)
_TABLES = [LOG_EVENT_V2, IDENTIFY_USER, LOG_EVENT]
_mappings = st.dictionaries(
    st.sampled_from(sorted({k for t in _TABLES for k in t}) + ["unknown"]), _mapping_nodes, max_size=8)
_messages = st.one_of(_json, st.fixed_dictionaries({}, optional={
    "a": _json, "b": _json, "l": _json, "x": _json, "context": st.fixed_dictionaries({}, optional={"device": _json}),
    "integrations": st.just({"Actions Amplitude": {"x": "1710428966000"}})}))


def _outcome(run):
    """(payload items in order, errors), or the exception a definition and a plan must both raise."""
    try:
        payload, errors = run()
    except Exception as exc:  # noqa: BLE001 - the same failure is part of the equivalence
        return type(exc), str(exc)
    return list(payload.items()), errors


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_mappings, st.sampled_from(range(len(_TABLES))), st.lists(_messages, min_size=1, max_size=4),
       st.sampled_from([None, "", "dev-9"]))
def test_generated_plan_equals_the_generic_steps(mapping, table, messages, device_id) -> None:
    fields = _TABLES[table]
    plan = PayloadPlan(mapping, fields)
    assert plan.source is not None
    for message in messages:
        before = copy.deepcopy(message)
        got = _outcome(lambda: plan(message, device_id))
        assert message == before
        assert got == _outcome(lambda: generic(mapping, fields, copy.deepcopy(message), device_id))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from([(a, m) for a, spec in DEFAULTS["actions"].items() for m in [spec["mapping"]]]
                       + [(p["action"], p["mapping"]) for p in PRESETS]),
       st.lists(_messages, min_size=1, max_size=3), st.sampled_from([None, "dev-9"]))
def test_default_plans_equal_the_generic_steps(action_mapping, messages, device_id) -> None:
    from edgeproxy.mapping.actions import ACTIONS

    action, mapping = action_mapping
    fields = ACTIONS[action].fields
    plan = PayloadPlan(mapping, fields)
    for message in messages:
        assert _outcome(lambda: plan(message, device_id)) == _outcome(lambda: generic(mapping, fields, message, device_id))


def test_a_path_too_deep_to_generate_takes_the_generic_steps() -> None:
    deep = "$." + ".".join(["a"] * 150)
    mapping = {"event_type": {"@path": deep}, "user_id": {"@path": "$.u"}}
    message: dict = {"u": "x"}
    node = message
    for _ in range(149):
        node = node.setdefault("a", {})
    node["a"] = "deep"
    plan = PayloadPlan(mapping, LOG_EVENT)
    assert plan.source is None
    assert plan(message) == ({"user_id": "x", "event_type": "deep"}, [])


@pytest.mark.parametrize("mapping", [
    {"event_type": {"@if": {"blank": {"@path": "$.a"}, "then": "blank", "else": {"@path": "$.a"}}}},
    {"event_type": {"@if": {"exists": {"@path": "$.a"}, "then": {"@template": "{{a}}!"}}}},
    *[{"event_type": {"@if": {test: known, "then": "then", "else": "else"}}}
      for test in ("exists", "blank") for known in (None, "", "x", 0, False, {"o": 1}, {"@literal": None}, {"x": None}, [])],
    {"userAgentData": {"model": None, "platformVersion": {"@path": "$.a"}}, "setOnce": {"initial_referrer": None}, "event_type": "e"},
    {"event_properties": {"model": None, "n": {"@path": "$.a"}, "l": [None, {"@path": "$.a"}, {"@path": "$.zz"}]}},
])
@pytest.mark.parametrize("a", [MISSING, "", None, "x", 0, [], {}, ["", None]])
def test_generated_plan_on_tests_decided_when_written(mapping, a) -> None:
    """Constants and null members are settled while the plan is written: pinned here value by value."""
    message = {} if a is MISSING else {"a": a}
    plan = PayloadPlan(mapping, LOG_EVENT_V2)
    assert _outcome(lambda: plan(message)) == _outcome(lambda: generic(mapping, LOG_EVENT_V2, message))
