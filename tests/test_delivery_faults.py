"""Every Amplitude answer, end to end through the worker and the test Amplitude server: which
events were delivered, resent, paused or dead-lettered, exactly.

Complements test_delivery.py (the pure verdicts and the first worker cases): here the faults
come from the server's own rules where it has them (validation, throttling, size limits) and
from injection where it does not (status sequences, outages, dropped connections).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from fake_amplitude import FakeAmplitude
from test_delivery import Rig, event, make_settings, posts, sent_events, until
from test_delivery import pytest_generate_tests, queue_backend  # noqa: F401  (each test: both queues, its own keys)

from edgeproxy.delivery import SpoolItem
from edgeproxy.delivery.spool import now_ms


def user_event(i: int, user: str, device: str, endpoint: str = "httpapi") -> SpoolItem:
    item = {"event_type": f"Event {i}", "user_id": user, "device_id": device, "insert_id": f"u-{user}-{device}-{i}",
            "time": 1_700_000_000_000 + i}
    return SpoolItem(item["insert_id"], endpoint, item, None, device, user, None, now_ms())


def insert_ids(request) -> list[str]:
    return [e["insert_id"] for e in sent_events(request)]


async def test_400_dead_letters_exactly_the_events_amplitude_names_by_kind(fake_amplitude: FakeAmplitude,
                                                                          tmp_path: Path) -> None:
    missing = event(1)
    del missing.item["event_type"]
    short_id = event(2, device="abc")  # under min_id_length 5, and no user_id
    bad_time = event(4, time="2024-01-01T00:00:00Z")  # Amplitude wants epoch ms
    batch = [event(0), missing, short_id, event(3), bad_time, event(5)]
    async with Rig(tmp_path, make_settings(fake_amplitude.base_url, tmp_path)) as rig:
        await rig.spool.append(batch)
        await rig.worker.start()
        await rig.settled(delivered=3, dead=3)
        letters = {d["message_id"]: d for d in await rig.spool.dead_letters()}
    first, resend = posts(fake_amplitude)
    assert first.status == 400 and insert_ids(first) == [b.message_id for b in batch]
    assert resend.status == 200
    assert insert_ids(resend) == ["msg-device-0001-0", "msg-device-0001-3", "msg-device-0001-5"]
    assert [e["insert_id"] for e in fake_amplitude.events] == insert_ids(resend)
    assert {m: d["reason_code"] for m, d in letters.items()} == {
        missing.message_id: "missing_fields", short_id.message_id: "invalid_id_lengths",
        bad_time.message_id: "invalid_fields"}
    assert "events_with_missing_fields: event_type" in letters[missing.message_id]["reason"]
    assert "events_with_invalid_id_lengths: device_id" in letters[short_id.message_id]["reason"]
    assert "events_with_invalid_fields: time" in letters[bad_time.message_id]["reason"]


async def test_request_level_400_dead_letters_the_whole_batch(fake_amplitude: FakeAmplitude, tmp_path: Path) -> None:
    fake_amplitude.fail_next(400, body={"code": 400, "error": "Invalid JSON request body"})
    async with Rig(tmp_path, make_settings(fake_amplitude.base_url, tmp_path)) as rig:
        await rig.spool.append([event(i) for i in range(3)])
        await rig.worker.start()
        await rig.settled(delivered=0, dead=3)
        letters = await rig.spool.dead_letters()
        by_reason = await rig.spool.dead_by_reason()
    assert len(posts(fake_amplitude)) == 1  # nothing resent: the same body would fail the same way
    assert by_reason == {"request_rejected": 3}
    assert all("Invalid JSON request body" in d["reason"] for d in letters)


@pytest.mark.parametrize("endpoint,pause_s", [("httpapi", 30), ("batch", 15)])
async def test_429_pauses_throttled_users_on_every_device_and_sends_the_rest(tmp_path: Path, endpoint: str,
                                                                             pause_s: int) -> None:
    fake = FakeAmplitude(api_keys={"test-key"}, eps_threshold=0.1)  # > 3 events per user or device in 30 s
    base = await fake.start()
    try:
        async with Rig(tmp_path, make_settings(base, tmp_path)) as rig:
            noisy = [user_event(i, "noisy-user-1", f"device-n{i:03d}", endpoint) for i in range(5)]  # 1 per device
            quiet = user_event(0, "quiet-user-1", "device-q000", endpoint)
            await rig.spool.append([noisy[0], noisy[1], quiet, *noisy[2:]])
            before_429 = now_ms()
            await rig.worker.start()
            await until(lambda: len(fake.events) == 1, "the quiet user's event")
            await until(lambda: rig.count(endpoint, "ok") == 1, "its settlement")  # settled after the 429's verdict
            after_429 = now_ms()
            first, resend = posts(fake, endpoint)
            # The user is paused wherever it shows up, even on a device Amplitude never saw.
            await rig.spool.append([user_event(9, "noisy-user-1", "device-new9", endpoint),
                                    user_event(9, "quiet-user-1", "device-q009", endpoint)])
            rig.worker.wake()
            await until(lambda: len(fake.events) == 2, "the second quiet event")
            await until(lambda: rig.count(endpoint, "ok") == 2, "its settlement")
            held = [e for d in [f"device-n{i:03d}" for i in range(5)] + ["device-new9"]
                    for e in await rig.spool.events_for_session(d)]
    finally:
        await fake.stop()
    assert first.status == 429 and insert_ids(first) == [x.message_id for x in [noisy[0], noisy[1], quiet, *noisy[2:]]]
    assert insert_ids(resend) == [quiet.message_id]  # resent now, alone
    assert {e["user_id"] for e in fake.events} == {"quiet-user-1"}
    assert all(e["state"] == "pending" for e in held) and len(held) == 6
    throttled = [e for e in held if e["attempts"] == 1]
    assert sorted(e["message_id"] for e in throttled) == sorted(x.message_id for x in noisy)
    # The pause runs pause_s from the 429's verdict, which came between these two readings of
    # the clock: exact bounds, however slowly the machine got there.
    for e in throttled:
        assert before_429 + pause_s * 1000 <= e["next_attempt_ms"] <= after_429 + pause_s * 1000, (endpoint, e)
    [new] = [e for e in held if e["attempts"] == 0]  # never sent: held until the pause ends
    assert new["next_attempt_ms"] == throttled[0]["next_attempt_ms"]
    assert len(posts(fake, endpoint)) == 3


async def test_server_failures_retry_the_same_events_with_growing_backoff(fake_amplitude: FakeAmplitude,
                                                                          tmp_path: Path) -> None:
    html = "<html><head><title>503 Service Temporarily Unavailable</title></head></html>"
    fake_amplitude.fail_next(500, ingest=True)  # accepted, but the answer was lost: dedupe must hold
    fake_amplitude.fail_next(502, body="Bad Gateway", content_type="text/plain")
    fake_amplitude.fail_next(503, body=html, content_type="text/html")
    fake_amplitude.fail_next(504, body="")
    fake_amplitude.drop_next()  # connection reset, no answer
    base, cap = 0.05, 2.0
    settings = make_settings(fake_amplitude.base_url, tmp_path, retry_base=base, retry_max=cap)
    async with Rig(tmp_path, settings) as rig:
        await rig.spool.append([event(i) for i in range(3)])
        await rig.worker.start()
        await rig.settled(delivered=3)
        [row, *_] = await rig.spool.events_for_session("device-0001")
        responses = await rig.spool.recent_responses()
    sent = posts(fake_amplitude)
    assert [r.status for r in sent] == [500, 502, 503, 504, None, 200]
    assert all(insert_ids(r) == insert_ids(sent[0]) for r in sent)  # same events, same insert_ids
    assert [e["insert_id"] for e in fake_amplitude.events] == insert_ids(sent[0]) and fake_amplitude.duplicates == 3
    assert row["attempts"] == 5 and row["state"] == "delivered"
    assert [r["status"] for r in responses] == [200, None, 504, 503, 502, 500]
    assert "Bad Gateway" in responses[4]["body"] and "503 Service" in responses[3]["body"]
    # Exponential with equal jitter: retry k waits at least half of base * 2^(k-1).
    gaps = [b.at - a.at for a, b in zip(sent, sent[1:])]
    for k, gap in enumerate(gaps, start=1):
        assert gap >= min(cap, base * 2 ** (k - 1)) / 2 - 0.005, (k, gaps)


async def test_a_real_413_halves_the_batch_until_it_fits(fake_amplitude: FakeAmplitude, tmp_path: Path) -> None:
    fake_amplitude.set_limits("httpapi", max_items=3)
    async with Rig(tmp_path, make_settings(fake_amplitude.base_url, tmp_path)) as rig:
        await rig.spool.append([event(i) for i in range(10)])
        await rig.worker.start()
        await rig.settled(delivered=10)
    sent = posts(fake_amplitude)
    assert [(len(sent_events(r)), r.status) for r in sent] == [
        (10, 413), (5, 413), (5, 413), (2, 200), (3, 200), (2, 200), (3, 200)]
    assert sorted(e["insert_id"] for e in fake_amplitude.events) == sorted(f"msg-device-0001-{i}" for i in range(10))
    assert rig.count("httpapi", "split") == 3


async def test_an_outage_is_probed_with_backoff_not_hammered(fake_amplitude: FakeAmplitude, tmp_path: Path) -> None:
    """503 for two seconds under steady load: a bounded number of requests, then everything, once."""
    outage_s, base, cap = 2.0, 0.1, 1.0
    settings = make_settings(fake_amplitude.base_url, tmp_path, retry_base=base, retry_max=cap)
    fake_amplitude.fail_for(outage_s, status=503)
    async with Rig(tmp_path, settings) as rig:
        await rig.worker.start()
        for i in range(40):  # bounded steady load: one event every 50 ms for the outage's length
            await rig.spool.append([event(i)])
            rig.worker.wake()
            await asyncio.sleep(0.05)
        await rig.settled(delivered=40)
    during = [r for r in posts(fake_amplitude) if r.status == 503]
    # One probe per backoff step: retry k comes at least base * 2^(k-1) / 2 after the one before
    # it, so two seconds hold at most 8 of them. Without the endpoint backoff every flush (50 ms)
    # would send the newest events: about 40 requests.
    assert 1 <= len(during) <= 8, len(during)
    delivered = [e["insert_id"] for e in fake_amplitude.events]
    assert sorted(delivered) == sorted(f"msg-device-0001-{i}" for i in range(40))
    assert fake_amplitude.duplicates == 0
