"""The relay to Segment's tracking API: its rules (pure) and the worker against the local
stand-in (``fake_segment.py``), on both queue backends.

What a Segment customer relies on: every accepted message reaches Segment once per
messageId, authenticated as its source, with the event time it would have had arriving
directly; Segment's refusals are dead-lettered with its reason; and a refusing or
unreachable Segment never holds back Amplitude delivery, nor the reverse.
"""

from __future__ import annotations

import base64
import email.utils
import logging
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import orjson
import pytest
from fake_amplitude import FakeAmplitude
from fake_segment import FakeSegment
from hypothesis import given
from hypothesis import strategies as st
from test_delivery import Rig, make_settings, partition, pytest_generate_tests, queue_backend, until  # noqa: F401

from edgeproxy import segment_api
from edgeproxy.delivery import SpoolItem
from edgeproxy.delivery.spool import now_ms
from edgeproxy.pipeline import relay_record
from edgeproxy.segment import format_iso, parse_iso

# ---------------------------------------------------------------------------------------------
# The relayed message and request (pure).


def normalized(**extra) -> dict:
    """A message as ``segment.normalize`` leaves it, enriched by identity."""
    msg = {"type": "track", "event": "Signup", "anonymousId": "anon-1", "messageId": "m-1", "writeKey": "wk",
           "timestamp": "2026-12-06T10:00:00.100Z", "originalTimestamp": "2026-12-06T10:00:00.000Z",
           "receivedAt": "2026-12-06T10:00:00.200Z", "sentAt": "2026-12-06T10:00:00.050Z",
           "integrations": {"Actions Amplitude": {"session_id": 1765015200000}}, "context": {"ip": "203.0.113.9"}}
    msg.update(extra)
    return msg


def test_relay_message_is_the_clients_with_segments_server_fields_removed() -> None:
    out = segment_api.relay_message(normalized())
    assert "receivedAt" not in out and "originalTimestamp" not in out and "writeKey" not in out
    assert out["timestamp"] == "2026-12-06T10:00:00.000Z"  # the client's, not the corrected one
    assert out["sentAt"] == "2026-12-06T10:00:00.050Z"
    assert out["integrations"] == {"Actions Amplitude": {"session_id": 1765015200000}}
    assert out["context"] == {"ip": "203.0.113.9"} and out["messageId"] == "m-1"


def test_relay_message_without_a_client_timestamp_drops_sent_at() -> None:
    """The normalized timestamp is then the server's receive time: pairing it with the client's
    sentAt would make Segment "correct" a skew that is not there."""
    msg = normalized()
    del msg["originalTimestamp"]
    out = segment_api.relay_message(msg)
    assert "sentAt" not in out and out["timestamp"] == "2026-12-06T10:00:00.100Z"


def test_basic_auth_is_the_write_key_and_a_colon() -> None:
    assert segment_api.basic_auth("wk") == "Basic " + base64.b64encode(b"wk:").decode()


def test_request_body_moves_sent_at_forward_by_the_wait() -> None:
    received = 1_765_015_200_000
    waited = 600_000  # ten minutes in the spool
    with_sent = orjson.dumps({"messageId": "a", "sentAt": "2026-12-06T10:00:00.000Z"})
    without = orjson.dumps({"messageId": "b", "timestamp": "2026-12-06T10:00:00.000Z"})
    body = orjson.loads(segment_api.request_body([(with_sent, received), (without, received)], received + waited))
    assert body["batch"][0]["sentAt"] == "2026-12-06T10:10:00.000Z"
    assert body["batch"][1] == {"messageId": "b", "timestamp": "2026-12-06T10:00:00.000Z"}
    assert parse_iso(body["sentAt"], "sentAt") == datetime.fromtimestamp((received + waited) / 1000, timezone.utc)


def test_request_body_keeps_a_sent_at_that_is_not_a_date() -> None:
    raw = orjson.dumps({"messageId": "a", "sentAt": "yesterday"})
    assert orjson.loads(segment_api.request_body([(raw, 0)], 1_000))["batch"][0]["sentAt"] == "yesterday"


def test_relay_message_stores_sent_at_last_and_request_body_moves_it_in_the_bytes(monkeypatch: Any) -> None:
    """The common path splices the new sentAt into the stored bytes: no JSON parse per message."""
    stored = orjson.dumps(segment_api.relay_message(normalized()))
    assert list(orjson.loads(stored))[-1] == "sentAt"

    def no_parse(_: Any) -> Any:
        raise AssertionError("parsed a message whose sentAt is its last key")

    monkeypatch.setattr(segment_api.orjson, "loads", no_parse)
    received = 1_765_015_200_000
    body = segment_api.request_body([(stored, received)], received + 61_000)
    monkeypatch.undo()
    [out] = orjson.loads(body)["batch"]
    assert out == {**orjson.loads(stored), "sentAt": "2026-12-06T10:01:01.050Z"}


@pytest.mark.parametrize("message", [
    {"messageId": "a", "sentAt": "2026-12-06T10:00:00.000Z", "properties": {"x": 1}},  # not last: an older layout
    {"messageId": "a", "properties": {"sentAt": "2026-12-06T10:00:00.000Z"}},  # only a nested one
    {"messageId": "a", "properties": {"sentAt": "2026-12-06T10:00:00.000Z"}, "sentAt": "2026-12-06T10:00:00.000Z"},
    {"messageId": "a", "properties": {"k": "v"}, "sentAt": 1765015200},  # not a string
    {"messageId": "a", "sentAt": "2026-12-06T10:00:00.000+01:00"},
    {"messageId": "a", "sentAt": "yester\"day"},  # escaped: the round trip
    {"messageId": "a", "sentAt": "tomorrow"},
    {"messageId": "a", "sentAt": ""},
    {"messageId": "a", "sentAt": None},
    {"sentAt": "2026-12-06T10:00:00.000Z"},  # the only key: no comma before it
    {"messageId": "a", "p": ',"sentAt":"x"}', "sentAt": "2026-12-06T10:00:00.000Z"},  # the marker inside a string
])
def test_request_body_splices_exactly_what_the_json_round_trip_gives(message: dict[str, Any]) -> None:
    raw = orjson.dumps(message)
    waited = timedelta(milliseconds=90_061_001)
    expected = dict(message)
    if message.get("sentAt") not in (None, ""):
        expected["sentAt"] = segment_api._shift(message["sentAt"], waited)
    [out] = orjson.loads(segment_api.request_body([(raw, 0)], 90_061_001))["batch"]
    assert out == expected


def test_retry_after_forms() -> None:
    assert segment_api.retry_after_seconds({"Retry-After": "7"}) == 7.0
    later = email.utils.format_datetime(datetime.now(timezone.utc) + timedelta(seconds=30), usegmt=True)
    assert 25 <= segment_api.retry_after_seconds({"Retry-After": later}) <= 30
    assert segment_api.retry_after_seconds({"X-RateLimit-Reset": "3"}) == 3.0
    assert segment_api.retry_after_seconds({"Retry-After": "86400"}) == segment_api.MAX_RETRY_AFTER_S
    assert segment_api.retry_after_seconds({"Retry-After": "soon"}) == segment_api.DEFAULT_RETRY_AFTER_S
    assert segment_api.retry_after_seconds(None) == segment_api.DEFAULT_RETRY_AFTER_S


def j(obj) -> bytes:
    return orjson.dumps(obj)


def test_classify_200_acks_everything() -> None:
    v = segment_api.classify(200, j({"success": True}), 3)
    assert v.outcome == "ok" and v.ack == (0, 1, 2)


def test_classify_invalid_write_key_dead_letters_all_as_a_config_problem() -> None:
    v = segment_api.classify(400, j({"success": False, "message": "An invalid write key was provided",
                                     "code": "invalid_request"}), 3)
    assert v.outcome == "dead" and v.config_problem and set(v.dead) == {0, 1, 2}
    assert v.dead[0].code == "invalid_write_key" and "An invalid write key was provided" in v.dead[0].text


def test_classify_400_halves_until_the_refused_message_is_alone() -> None:
    body = j({"success": False, "message": "Exceed payload limit", "code": "invalid_request"})
    assert segment_api.classify(400, body, 4).resend == ((0, 1), (2, 3))
    alone = segment_api.classify(400, body, 1)
    assert alone.outcome == "dead" and alone.dead[0].code == "rejected"
    assert alone.dead[0].text == "Segment: Exceed payload limit"


def test_classify_400_without_json_keeps_the_text() -> None:
    v = segment_api.classify(400, b"<html>Bad Request</html>", 1)
    assert "HTTP 400" in v.dead[0].text and "Bad Request" in v.dead[0].text


def test_classify_413_halves_then_dead_letters_too_large() -> None:
    assert segment_api.classify(413, b"", 2).resend == ((0,), (1,))
    assert segment_api.classify(413, b"", 1).dead[0].code == "too_large"


def test_classify_429_waits_retry_after_for_everything() -> None:
    v = segment_api.classify(429, j({"message": "rate limited"}), 2, {"Retry-After": "12"})
    assert v.outcome == "throttled" and v.backoff == (0, 1) and v.retry_after == 12.0


@pytest.mark.parametrize("status", [500, 502, 503, 504])
def test_classify_5xx_retries(status) -> None:
    v = segment_api.classify(status, b"upstream trouble", 2)
    assert v.outcome == "retry" and v.backoff == (0, 1) and not v.config_problem


@pytest.mark.parametrize("status", [401, 403, 404, 405])
def test_classify_wrong_url_or_auth_retries_and_flags_the_configuration(status) -> None:
    """Nothing is lost to a typo in relay_url: the items wait for the fix (and say why)."""
    v = segment_api.classify(status, b"", 2)
    assert v.outcome == "retry" and v.config_problem


def test_classify_no_answer_retries_with_the_transport_error() -> None:
    v = segment_api.classify(None, b"", 2, transport_error="connection reset")
    assert v.outcome == "retry" and v.error == "connection reset"


@given(status=st.sampled_from([None, 200, 400, 401, 404, 413, 429, 500, 503]), n=st.integers(0, 40),
       message=st.sampled_from(["An invalid write key was provided", "Exceed payload limit", ""]))
def test_every_index_lands_in_exactly_one_bucket(status, n, message) -> None:
    v = segment_api.classify(status, j({"message": message}), n, {"Retry-After": "1"})
    assert partition(v) == list(range(n))


# ---------------------------------------------------------------------------------------------
# The worker against the stand-in.

WRITE_KEY = "wk-relay-1"


def relay_settings(tmp_path: Path, segment_url: str, *, amplitude_url: str = "", **segment) -> object:
    s = make_settings(amplitude_url, tmp_path)
    s.amplitude.enabled = bool(amplitude_url)
    s.segment.relay_url = segment_url
    for key, value in segment.items():
        setattr(s.segment, key, value)
    return s


def message(i: int, *, anon: str = "anon-0001", **extra) -> dict:
    """A normalized, enriched message as ingest hands it to ``relay_record``."""
    msg = {"type": "track", "event": f"Event {i}", "anonymousId": anon, "messageId": f"rel-{anon}-{i}",
           "properties": {"i": i}, "context": {"ip": "203.0.113.9", "library": {"name": "analytics-python"}},
           "integrations": {"Actions Amplitude": {"session_id": 1_765_015_200_000}},
           "originalTimestamp": "2026-12-06T10:00:00.000Z", "timestamp": "2026-12-06T10:00:00.000Z",
           "receivedAt": "2026-12-06T10:00:00.000Z", "writeKey": WRITE_KEY}
    msg.update(extra)
    return msg


def relayed(i: int, *, write_key: str = WRITE_KEY, received_ms: int | None = None, **extra) -> SpoolItem:
    return relay_record(message(i, **extra), write_key=write_key, device_id=None, session_id=1_765_015_200_000,
                        received_ms=now_ms() if received_ms is None else received_ms)


def amplitude_event(i: int) -> SpoolItem:
    item = {"event_type": f"Event {i}", "device_id": "anon-0001", "insert_id": f"amp-{i}", "time": 1_765_015_200_000}
    return SpoolItem(f"amp-{i}", "httpapi", item, None, "anon-0001", None, 1_765_015_200_000, now_ms())


def count(rig: Rig, outcome: str, target: str = "segment", endpoint: str = "batch") -> float:
    return rig.metrics.registry.get_sample_value(
        "edgeproxy_deliveries_total", {"target": target, "source": "default", "endpoint": endpoint, "outcome": outcome}) or 0.0


def message_ids(fake: FakeSegment) -> list[str]:
    return [m["messageId"] for m in fake.messages()]


async def test_a_batch_goes_in_one_gzipped_request_as_its_write_key(fake_segment: FakeSegment, tmp_path: Path) -> None:
    async with Rig(tmp_path, relay_settings(tmp_path, fake_segment.base_url)) as rig:
        await rig.spool.append([relayed(i) for i in range(20)])
        await rig.worker.start()
        await rig.settled(delivered=20)
    [request] = fake_segment.requests
    assert request.path == "/v1/batch" and request.status == 200
    assert request.headers["Authorization"] == segment_api.basic_auth(WRITE_KEY)
    assert request.headers["Content-Encoding"] == "gzip" and request.size < len(request.body)
    assert message_ids(fake_segment) == [f"rel-anon-0001-{i}" for i in range(20)]
    first = fake_segment.messages(WRITE_KEY)[0]
    assert first["integrations"]["Actions Amplitude"]["session_id"] == 1_765_015_200_000
    assert first["anonymousId"] == "anon-0001" and first["properties"] == {"i": 0} and first["context"]["ip"] == "203.0.113.9"
    assert count(rig, "ok") == 1
    assert rig.metrics.registry.get_sample_value(
        "edgeproxy_delivered_items_total", {"target": "segment", "source": "default", "endpoint": "batch"}) == 20


async def test_relay_write_key_overrides_each_messages_key(fake_segment: FakeSegment, tmp_path: Path) -> None:
    async with Rig(tmp_path, relay_settings(tmp_path, fake_segment.base_url, relay_write_key="wk-central")) as rig:
        await rig.spool.append([relayed(0, write_key="wk-a"), relayed(1, write_key="wk-b")])
        await rig.worker.start()
        await rig.settled(delivered=2)
    assert {r.write_key for r in fake_segment.requests} == {"wk-central"}
    assert len(fake_segment.messages("wk-central")) == 2


async def test_messages_of_different_write_keys_never_share_a_request(fake_segment: FakeSegment, tmp_path: Path) -> None:
    async with Rig(tmp_path, relay_settings(tmp_path, fake_segment.base_url)) as rig:
        await rig.spool.append([relayed(i, write_key=f"wk-{i % 2}") for i in range(6)])
        await rig.worker.start()
        await rig.settled(delivered=6)
    assert sorted(r.write_key for r in fake_segment.requests) == ["wk-0", "wk-1"]
    assert sorted(m["event"] for m in fake_segment.messages("wk-1")) == ["Event 1", "Event 3", "Event 5"]


async def test_a_wait_in_the_spool_does_not_move_the_event_time(fake_segment: FakeSegment, tmp_path: Path) -> None:
    """Segment sets ``timestamp = receivedAt − (sentAt − timestamp)``: after ten minutes in the
    spool (Segment down, say) the event keeps the time it happened, not the time it was sent."""
    happened = datetime.now(timezone.utc) - timedelta(minutes=10)
    sent = happened + timedelta(milliseconds=300)
    item = relayed(0, received_ms=int((sent.timestamp() + 0.05) * 1000), originalTimestamp=format_iso(happened),
                   sentAt=format_iso(sent))
    async with Rig(tmp_path, relay_settings(tmp_path, fake_segment.base_url)) as rig:
        await rig.spool.append([item])
        await rig.worker.start()
        await rig.settled(delivered=1)
    [msg] = fake_segment.messages()
    assert msg["originalTimestamp"] == format_iso(happened)
    drift = abs((parse_iso(msg["timestamp"], "timestamp") - happened).total_seconds())
    assert drift < 5, f"Segment's corrected timestamp is {drift:.1f} s from when the event happened"


async def test_5xx_is_retried_until_delivered_once(fake_segment: FakeSegment, tmp_path: Path) -> None:
    fake_segment.fail_next(503, {"message": "unavailable"}, times=2)
    async with Rig(tmp_path, relay_settings(tmp_path, fake_segment.base_url)) as rig:
        await rig.spool.append([relayed(i) for i in range(3)])
        await rig.worker.start()
        await rig.settled(delivered=3)
    assert [r.status for r in fake_segment.requests] == [503, 503, 200]
    assert message_ids(fake_segment) == [f"rel-anon-0001-{i}" for i in range(3)]
    assert count(rig, "retry") == 2 and count(rig, "ok") == 1


async def test_429_waits_at_least_retry_after(fake_segment: FakeSegment, tmp_path: Path) -> None:
    fake_segment.fail_next(429, {"message": "Too many requests"}, headers={"Retry-After": "1"})
    async with Rig(tmp_path, relay_settings(tmp_path, fake_segment.base_url)) as rig:
        await rig.spool.append([relayed(0)])
        await rig.worker.start()
        await rig.settled(delivered=1)
    throttled, ok = fake_segment.requests
    assert (throttled.status, ok.status) == (429, 200)
    assert ok.at - throttled.at >= 0.95, "resent before Segment's Retry-After"
    assert count(rig, "throttled") == 1


async def test_an_answer_lost_after_segment_stored_it_is_resent_with_the_same_message_ids(
        fake_segment: FakeSegment, tmp_path: Path) -> None:
    """At least once: Segment dedupes on messageId, so the resend costs nothing downstream."""
    fake_segment.drop_next(ingest=True)
    async with Rig(tmp_path, relay_settings(tmp_path, fake_segment.base_url)) as rig:
        await rig.spool.append([relayed(i) for i in range(4)])
        await rig.worker.start()
        await rig.settled(delivered=4)
    assert len(fake_segment.messages()) == 8 and sorted(fake_segment.duplicates()) == [f"rel-anon-0001-{i}" for i in range(4)]
    assert [m["messageId"] for m in fake_segment.unique_messages()] == [f"rel-anon-0001-{i}" for i in range(4)]


async def test_a_message_over_32kb_is_dead_lettered_alone_unsent(fake_segment: FakeSegment, tmp_path: Path) -> None:
    """Enrichment (session id, ip) can push a message the edge accepted just past Segment's limit."""
    big = relayed(1, properties={"blob": "x" * segment_api.MAX_ITEM_BYTES})
    async with Rig(tmp_path, relay_settings(tmp_path, fake_segment.base_url)) as rig:
        await rig.spool.append([relayed(0), big, relayed(2)])
        await rig.worker.start()
        await rig.settled(delivered=2, dead=1)
        [letter] = await rig.spool.dead_letters()
    assert letter["message_id"] == "rel-anon-0001-1" and letter["reason_code"] == "too_large"
    assert letter["target"] == "segment" and "Segment relay" in letter["reason"]
    assert message_ids(fake_segment) == ["rel-anon-0001-0", "rel-anon-0001-2"]


async def test_an_invalid_write_key_dead_letters_the_batch_and_says_what_to_check(
        fake_segment: FakeSegment, tmp_path: Path, caplog) -> None:
    fake_segment.fail_next(400, {"success": False, "message": "An invalid write key was provided", "code": "invalid_request"})
    caplog.set_level(logging.ERROR)
    async with Rig(tmp_path, relay_settings(tmp_path, fake_segment.base_url)) as rig:
        await rig.spool.append([relayed(i) for i in range(3)])
        await rig.worker.start()
        await rig.settled(delivered=0, dead=3)
        by_reason = await rig.spool.dead_by_reason()
        letters = await rig.spool.dead_letters()
    assert by_reason == {"invalid_write_key": 3}
    assert all("An invalid write key was provided" in d["reason"] for d in letters)
    assert "segment.relay_url" in caplog.text and "relay_write_key" in caplog.text


async def test_a_relay_item_without_a_configured_relay_is_kept_as_a_dead_letter(tmp_path: Path) -> None:
    """Relay switched off with items still queued: they wait, replayable, instead of vanishing."""
    async with Rig(tmp_path, make_settings("", tmp_path)) as rig:
        await rig.spool.append([relayed(0)])
        await rig.worker.start()
        await rig.settled(delivered=0, dead=1)
        [letter] = await rig.spool.dead_letters()
    assert letter["reason_code"] == "no_target" and "replay --reason no_target" in letter["reason"]


async def test_segment_down_does_not_hold_back_amplitude(fake_segment: FakeSegment, fake_amplitude: FakeAmplitude,
                                                         tmp_path: Path) -> None:
    fake_segment.fail_for(600, status=503)
    settings = relay_settings(tmp_path, fake_segment.base_url, amplitude_url=fake_amplitude.base_url)
    async with Rig(tmp_path, settings) as rig:
        await rig.spool.append([x for i in range(5) for x in (relayed(i), amplitude_event(i))])
        await rig.worker.start()
        await until(lambda: len(fake_amplitude.events) == 5, "Amplitude got its 5 events")
        await until(lambda: len(fake_segment.requests) >= 2, "the relay retried")
        stats = await rig.stats()
        assert stats["delivered"] == 5 and stats["dead"] == 0
        assert not fake_segment.messages()
        fake_segment.reset()  # Segment is back: the relay catches up
        await rig.settled(delivered=10)
    assert sorted(message_ids(fake_segment)) == sorted(f"rel-anon-0001-{i}" for i in range(5))


async def test_amplitude_down_does_not_hold_back_the_relay(fake_segment: FakeSegment, fake_amplitude: FakeAmplitude,
                                                           tmp_path: Path) -> None:
    fake_amplitude.fail_for(600, status=503)
    settings = relay_settings(tmp_path, fake_segment.base_url, amplitude_url=fake_amplitude.base_url)
    async with Rig(tmp_path, settings) as rig:
        await rig.spool.append([x for i in range(5) for x in (amplitude_event(i), relayed(i))])
        await rig.worker.start()
        await until(lambda: len(fake_segment.messages()) == 5, "Segment got its 5 messages")
        await until(lambda: len(fake_amplitude.requests) >= 2, "Amplitude delivery retried")
        assert (await rig.stats())["delivered"] == 5 and not fake_amplitude.events
        fake_amplitude.reset()
        await rig.settled(delivered=10)
    assert len(fake_amplitude.events) == 5


async def test_replayed_relay_dead_letters_are_sent_again(fake_segment: FakeSegment, tmp_path: Path) -> None:
    from edgeproxy.delivery.spool import ReplayFilter

    fake_segment.fail_next(400, {"success": False, "message": "An invalid write key was provided"})
    async with Rig(tmp_path, relay_settings(tmp_path, fake_segment.base_url)) as rig:
        await rig.spool.append([relayed(i) for i in range(2)])
        await rig.worker.start()
        await rig.settled(delivered=0, dead=2)
        assert await rig.spool.replay_dead_letters(ReplayFilter(target="amplitude")) == 0
        assert await rig.spool.replay_dead_letters(ReplayFilter(target="segment", source="default",
                                                                endpoint="batch")) == 2
        rig.worker.wake()
        await rig.settled(delivered=2)
    assert message_ids(fake_segment) == ["rel-anon-0001-0", "rel-anon-0001-1"]

