"""Request bodies: the spliced body the worker sends equals encoding the whole request anew."""

from __future__ import annotations

from urllib.parse import parse_qs

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from edgeproxy.amplitude_api import FORM_ITEMS_FIELD, JSON_ENDPOINTS, PATHS, build_request, request_data

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
items = st.lists(st.dictionaries(st.text(max_size=12), json_values, max_size=6), max_size=6)
options = st.none() | st.dictionaries(st.sampled_from(["min_id_length"]), st.integers(1, 64), max_size=1)


@settings(max_examples=200, deadline=None)
@given(endpoint=st.sampled_from(sorted(PATHS)), batch=items, opts=options, api_key=st.text(min_size=1, max_size=40))
def test_spliced_body_equals_the_encoded_request(endpoint, batch, opts, api_key) -> None:
    data = request_data(endpoint, api_key, [orjson.dumps(item) for item in batch], opts)
    if endpoint in JSON_ENDPOINTS:
        body = {"api_key": api_key, "events": batch, **({"options": opts} if opts else {})}
        assert data == orjson.dumps(body)
    else:
        form = {k: v[0] for k, v in parse_qs(data.decode(), keep_blank_values=True).items()}
        assert form["api_key"] == api_key and orjson.loads(form[FORM_ITEMS_FIELD[endpoint]]) == batch
        assert ("options" in form) == bool(opts) and (not opts or orjson.loads(form["options"]) == opts)
    assert build_request(endpoint, api_key, batch, opts).data == data
