"""Segment's ingest rules as pure functions: types, validation, skew correction, write keys."""

from __future__ import annotations

import base64
from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgeproxy import segment
from edgeproxy.segment import Envelope, Rejected, normalize

RECEIVED = datetime(2026, 3, 14, 15, 9, 27, 12000, tzinfo=timezone.utc)


def norm(raw, path_type=None, envelope=Envelope()):
    return normalize(raw, path_type=path_type, received=RECEIVED, envelope=envelope)


def test_skew_correction_uses_sent_at():
    # The client clock is 10 minutes fast: timestamp and sentAt both 10 min ahead.
    msg = norm({"type": "track", "event": "A", "anonymousId": "a1",
                "timestamp": "2026-03-14T15:19:26.000Z", "sentAt": "2026-03-14T15:19:27.000Z"})
    assert msg["timestamp"] == "2026-03-14T15:09:26.012Z"
    assert msg["originalTimestamp"] == "2026-03-14T15:19:26.000Z"
    assert msg["receivedAt"] == "2026-03-14T15:09:27.012Z"


def test_batch_sent_at_applies_to_items_without_one():
    msg = norm({"type": "track", "event": "A", "anonymousId": "a1", "timestamp": "2026-03-14T15:09:00.000Z"},
               envelope=Envelope(sent_at="2026-03-14T15:09:10.000Z"))
    assert msg["timestamp"] == "2026-03-14T15:09:17.012Z"


def test_timestamp_only_is_kept_and_none_uses_received_at():
    kept = norm({"type": "track", "event": "A", "anonymousId": "a", "timestamp": "2020-01-01T00:00:00+02:00"})
    assert kept["timestamp"] == "2019-12-31T22:00:00.000Z"
    absent = norm({"type": "track", "event": "A", "anonymousId": "a"})
    assert absent["timestamp"] == absent["receivedAt"] == "2026-03-14T15:09:27.012Z"
    assert "originalTimestamp" not in absent


def test_message_id_generated_when_missing_and_kept_when_present():
    assert len(norm({"type": "page", "anonymousId": "a"})["messageId"]) == 36
    assert norm({"type": "page", "anonymousId": "a", "messageId": "m-1"})["messageId"] == "m-1"


def test_type_from_path_when_body_has_none():
    assert norm({"event": "A", "anonymousId": "a"}, path_type="track")["type"] == "track"


@pytest.mark.parametrize(
    "raw,field",
    [
        ([1, 2], "message"),
        ("text", "message"),
        ({"anonymousId": "a"}, "type"),
        ({"type": "purchase", "anonymousId": "a"}, "type"),
        ({"type": "track", "anonymousId": "a"}, "event"),
        ({"type": "track", "event": "", "anonymousId": "a"}, "event"),
        ({"type": "group", "anonymousId": "a"}, "groupId"),
        ({"type": "alias", "previousId": "a"}, "userId"),
        ({"type": "track", "event": "A", "anonymousId": "a", "properties": [1]}, "properties"),
        ({"type": "identify", "anonymousId": "a", "traits": "x"}, "traits"),
        ({"type": "track", "event": "A", "anonymousId": "a", "context": 5}, "context"),
        ({"type": "track", "event": "A", "userId": {"a": 1}}, "userId"),
        ({"type": "track", "event": "A", "anonymousId": True}, "anonymousId"),
        ({"type": "track", "event": "A", "anonymousId": "a", "timestamp": "yesterday"}, "timestamp"),
        ({"type": "track", "event": "A", "anonymousId": "a", "timestamp": 17}, "timestamp"),
        ({"type": "track", "event": "A", "anonymousId": "a", "timestamp": "2026-01-01T00:00:00Z", "sentAt": "soon"}, "sentAt"),
        ({"type": "track", "event": "A", "anonymousId": "a", "messageId": 5}, "messageId"),
    ],
)
def test_rejections_name_the_field(raw, field):
    with pytest.raises(Rejected) as info:
        norm(raw)
    assert info.value.field == field
    assert info.value.message


def test_envelope_context_and_integrations_merge_under_the_message():
    msg = norm({"type": "track", "event": "A", "anonymousId": "a", "context": {"locale": "fr"}},
               envelope=Envelope(context={"locale": "en", "ip": "1.2.3.4"}, integrations={"All": True}))
    assert msg["context"] == {"locale": "fr", "ip": "1.2.3.4"}
    assert msg["integrations"] == {"All": True}


def test_normalize_does_not_mutate_input():
    raw = {"type": "track", "event": "A", "anonymousId": "a", "sentAt": "2026-03-14T15:09:27.000Z"}
    copy = dict(raw)
    norm(raw)
    assert raw == copy


def basic(value: str) -> str:
    return "Basic " + base64.b64encode(value.encode()).decode()


def test_write_key_sources_and_errors():
    assert segment.resolve_write_key({"writeKey": "k1"}, None, []) == "k1"
    assert segment.resolve_write_key({}, basic("k2:"), []) == "k2"
    assert segment.resolve_write_key({}, basic("k3"), []) == "k3"  # no colon, tolerated
    with pytest.raises(Rejected) as empty:
        segment.resolve_write_key({"writeKey": ""}, None, [])
    assert empty.value.code == "invalid_request"
    with pytest.raises(Rejected) as unknown:
        segment.resolve_write_key({"writeKey": "other"}, None, ["k1"])
    assert unknown.value.code == "unauthorized"
    assert segment.write_key_from_basic("Basic !!!") is None
    assert segment.write_key_from_basic("Bearer abc") is None


def test_has_identity():
    assert segment.has_identity({"userId": "u"}, None)
    assert segment.has_identity({}, "dev")
    assert segment.has_identity({"context": {"device": {"id": "d"}}}, None)
    assert not segment.has_identity({"userId": "", "anonymousId": None}, None)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=20,
)


@given(json_values, st.sampled_from([None, "track", "page", "identify"]))
def test_normalize_either_accepts_or_rejects_never_crashes(raw, path_type):
    try:
        msg = norm(raw, path_type=path_type)
    except Rejected as exc:
        assert exc.field and exc.message
    else:
        assert msg["type"] in segment.TYPES
        assert isinstance(msg["messageId"], str) and msg["messageId"]
        segment.event_time_ms(msg)


@given(st.integers(min_value=-10**6, max_value=10**6), st.integers(min_value=0, max_value=10**5))
def test_skew_correction_is_exact(skew_ms, delay_ms):
    client_event = RECEIVED + timedelta(milliseconds=skew_ms) - timedelta(milliseconds=delay_ms)
    sent = RECEIVED + timedelta(milliseconds=skew_ms)
    msg = norm({"type": "track", "event": "A", "anonymousId": "a",
                "timestamp": segment.format_iso(client_event), "sentAt": segment.format_iso(sent)})
    corrected = segment.parse_iso(msg["timestamp"], "timestamp")
    assert abs((RECEIVED - corrected) - timedelta(milliseconds=delay_ms)) <= timedelta(milliseconds=1)


def _isoformat_reference(moment: datetime) -> str:
    """What ``format_iso`` wrote before it formatted from the fields: the definition it must keep."""
    return moment.astimezone(timezone.utc).isoformat(timespec="milliseconds")[:-6] + "Z"


@given(st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30),
                    timezones=st.sampled_from([timezone.utc, timezone(timedelta(hours=5, minutes=30)),
                                               timezone(timedelta(hours=-8))])))
def test_format_iso_writes_what_isoformat_writes(moment):
    assert segment.format_iso(moment) == _isoformat_reference(moment)


def test_format_iso_truncates_to_the_millisecond_and_pads_the_year():
    assert segment.format_iso(datetime(7, 2, 3, 4, 5, 6, 999999, tzinfo=timezone.utc)) == "0007-02-03T04:05:06.999Z"
    assert segment.format_iso(datetime(2026, 3, 14, 0, 30, tzinfo=timezone(timedelta(hours=1)))) == "2026-03-13T23:30:00.000Z"


def _parse_reference(text: str) -> datetime:
    """``parse_iso``'s general path alone: strip, "Z" as +00:00, naive as UTC."""
    text = text.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    parsed = datetime.fromisoformat(text)
    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)).astimezone(timezone.utc)


@given(st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30)),
       st.sampled_from(["Z", "z", "+00:00", "-00:00", "+02:00", "", " "]), st.sampled_from(["milliseconds", "microseconds", "seconds"]))
def test_parse_iso_reads_every_form_as_the_general_path_does(moment, suffix, timespec):
    text = moment.isoformat(timespec=timespec) + suffix
    parsed = segment.parse_iso(text, "timestamp")
    assert parsed == _parse_reference(text) and parsed.tzinfo is timezone.utc
