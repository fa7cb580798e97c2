"""Property-based: the mapper never raises on arbitrary JSON-like messages and never mutates them."""

from __future__ import annotations

import copy

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgeproxy.mapping import DEFAULTS, Mapper

KEYS = {"api_key": "k", "secret_key": "s"}
ALL_ACTIONS = [
    {"action": "logEventV2", "subscribe": 'type = "track" or type = "page" or type = "screen"'},
    {"action": "logEvent", "subscribe": 'type = "track"'},
    {"action": "logPurchase", "subscribe": 'type = "track"', "mapping": {"trackRevenuePerProduct": True}},
    {"action": "identifyUser", "subscribe": 'type = "identify" or type = "track"'},
    {"action": "groupIdentifyUser", "subscribe": 'type = "group"',
     "mapping": {"group_type": {"@path": "$.traits.kind"}, "group_value": {"@path": "$.groupId"}, "min_id_length": {"@path": "$.n"}}},
    {"action": "mapUser", "subscribe": 'type = "alias"'},
]
MAPPERS = [Mapper(KEYS), Mapper({**KEYS, "subscriptions": ALL_ACTIONS})]

scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**60, 2**60), st.floats(allow_nan=False, allow_infinity=False),
                    st.text(max_size=12), st.sampled_from(["", "1710428966000", "2024-03-14T15:09:26Z", "ios", "analytics.js",
                                                           "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X)"]))
json_values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                           st.dictionaries(st.text(max_size=8), inner, max_size=3)), max_leaves=12)
# Paths the default mappings read, so generated messages reach every field.
PATHS = sorted({part for a in DEFAULTS["actions"].values() for v in a["mapping"].values()
                for part in orjson.dumps(v).decode().split('"') if part.startswith("$.")})


def _put(message: dict, path: str, value) -> None:
    parts = path[2:].split(".")
    node = message
    for part in parts[:-1]:
        nxt = node.get(part)
        if not isinstance(nxt, dict):
            nxt = node[part] = {}
        node = nxt
    node[parts[-1]] = value


@st.composite
def messages(draw):
    message = {"type": draw(st.sampled_from(["track", "page", "screen", "identify", "group", "alias", 5, None])),
               "event": draw(st.one_of(st.sampled_from(["Order Completed", "Clicked"]), scalars))}
    for path in draw(st.lists(st.sampled_from(PATHS + ["$.properties.products", "$.traits.kind", "$.groupId", "$.n"]), max_size=12)):
        _put(message, path, draw(json_values))
    return message


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(messages())
def test_never_raises_and_never_mutates(message) -> None:
    before = copy.deepcopy(message)
    for mapper in MAPPERS:
        mapped = mapper.map(message, device_id="dev")
        assert not any("internal mapping error" in e for e in mapped.errors), mapped.errors
        for out in mapped.outputs:
            orjson.dumps(out.item)  # JSON-serialisable
            assert out.endpoint in {"httpapi", "batch", "identify", "groupidentify", "usermap"}
    assert message == before


@settings(max_examples=200, deadline=None)
@given(json_values)
def test_arbitrary_json_values(value) -> None:
    mapped = MAPPERS[1].map(value)  # type: ignore[arg-type]
    assert not any("internal mapping error" in e for e in mapped.errors)
