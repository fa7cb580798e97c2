"""Delivery: response classification (pure, every shape in the reference section 2.7), the rate
limiter, and the worker against the fake Amplitude server."""

from __future__ import annotations

import random

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgeproxy.delivery.classify import Verdict, backoff_delay, classify, pause_seconds
from edgeproxy.delivery.ratelimit import RateLimiter


def j(obj) -> bytes:
    return orjson.dumps(obj)


def partition(v: Verdict) -> list[int]:
    return sorted([*v.ack, *v.dead, *(i for sub in v.resend for i in sub), *v.backoff, *v.pause])


def test_200_json_acks_all() -> None:
    body = j({"code": 200, "events_ingested": 3, "payload_size_bytes": 50, "server_upload_time": 1396381378123})
    v = classify("httpapi", 200, body, 3)
    assert (v.outcome, v.ack) == ("ok", (0, 1, 2))


def test_200_plain_text_success_on_form_endpoints() -> None:
    v = classify("identify", 200, b"success", 2)
    assert (v.outcome, v.ack) == ("ok", (0, 1))


def test_400_invalid_fields_dead_letters_named_events_and_resends_the_rest() -> None:
    body = j({"code": 400, "error": "Invalid field values on some events", "events_with_invalid_fields": {"time": [1, 3]}})
    v = classify("httpapi", 400, body, 5)
    assert set(v.dead) == {1, 3}
    assert v.dead[1].code == "invalid_fields"
    assert v.dead[1].text == "Invalid field values on some events (events_with_invalid_fields: time)"
    assert v.resend == ((0, 2, 4),)
    assert v.outcome == "dead" and not v.ack


def test_400_missing_fields_and_first_index_form() -> None:
    # The V2 page says "index of the first event": a bare int is accepted as well as a list.
    body = j({"code": 400, "error": "Request missing required field", "events_with_missing_fields": {"event_type": 0}})
    v = classify("httpapi", 400, body, 2)
    assert set(v.dead) == {0} and v.dead[0].code == "missing_fields" and v.resend == ((1,),)


def test_400_invalid_id_lengths_observed_shape() -> None:
    body = j({"code": 400, "events_with_invalid_id_lengths": {"device_id": [0]},
              "error": "Invalid id length for user_id or device_id"})
    v = classify("batch", 400, body, 1)
    assert v.dead[0].code == "invalid_id_lengths" and "device_id" in v.dead[0].text
    assert v.resend == ()


def test_400_one_event_with_several_problems_keeps_every_reason() -> None:
    body = j({"code": 400, "error": "Invalid field values on some events",
              "events_with_invalid_fields": {"time": [0]}, "events_with_missing_fields": {"event_type": [0]}})
    v = classify("httpapi", 400, body, 2)
    assert "time" in v.dead[0].text and "event_type" in v.dead[0].text
    assert partition(v) == [0, 1]


def test_400_silenced_devices_are_dead_lettered() -> None:
    body = j({"code": 400, "error": "Events silenced for device_id", "silenced_devices": ["d1"], "silenced_events": [2]})
    v = classify("httpapi", 400, body, 3)
    assert set(v.dead) == {2} and v.dead[2].code == "silenced" and v.resend == ((0, 1),)


@pytest.mark.parametrize("body", [
    {"missing_field": "events", "code": 400, "error": "Request missing required field"},
    {"code": 400, "error": "Invalid JSON request body"},
    {"code": 400, "error": "Invalid field values on some events", "events_with_invalid_fields": {"time": [7, -1]}},
])
def test_request_level_400_dead_letters_the_batch(body) -> None:
    v = classify("httpapi", 400, j(body), 3)
    assert set(v.dead) == {0, 1, 2} and v.resend == ()
    assert all(r.code == "request_rejected" for r in v.dead.values())
    assert not v.config_problem


def test_missing_field_is_named_in_the_reason() -> None:
    v = classify("httpapi", 400, j({"missing_field": "api_key", "code": 400, "error": "Request missing required field"}), 1)
    assert "missing_field: api_key" in v.dead[0].text


def test_invalid_api_key_is_a_config_problem() -> None:
    v = classify("httpapi", 400, j({"code": 400, "error": "Invalid API key: abc"}), 2)
    assert v.config_problem and set(v.dead) == {0, 1}
    assert v.dead[0].code == "invalid_api_key" and "Invalid API key: abc" in v.dead[0].text


def test_400_html_page_is_request_level() -> None:
    v = classify("identify", 400, b"<html><head><title>400 Bad Request</title></head></html>", 2)
    assert set(v.dead) == {0, 1} and "400 Bad Request" in v.dead[0].text


def test_413_halves_the_batch() -> None:
    v = classify("httpapi", 413, j({"code": 413, "error": "Payload too large"}), 5)
    assert v.outcome == "split" and v.resend == ((0, 1), (2, 3, 4))


def test_413_for_a_single_item_dead_letters_it() -> None:
    v = classify("batch", 413, j({"code": 413, "error": "Payload too large"}), 1)
    assert v.outcome == "dead" and v.dead[0].code == "too_large" and "Payload too large" in v.dead[0].text


def test_403_bisects_to_isolate_a_poisoned_event() -> None:
    assert classify("httpapi", 403, j({"code": 403, "error": "Forbidden"}), 2).resend == ((0,), (1,))
    alone = classify("httpapi", 403, j({"code": 403, "error": "Forbidden"}), 1)
    assert alone.dead[0].code == "forbidden"


def test_429_pauses_throttled_events_and_resends_the_others() -> None:
    body = j({"code": 429, "error": "Too many requests for some devices and users", "eps_threshold": 30,
              "throttled_devices": {"C8F9E604": 31}, "throttled_users": {"datamonster@amplitude.com": 32},
              "throttled_events": [3, 4, 7]})
    v = classify("httpapi", 429, body, 8)
    assert v.outcome == "throttled" and v.pause == (3, 4, 7) and v.pause_s == 30.0
    assert v.resend == ((0, 1, 2, 5, 6),)
    assert v.throttled_devices == {"C8F9E604"} and v.throttled_users == {"datamonster@amplitude.com"}


def test_429_batch_daily_quota_names_devices_and_pauses_15s() -> None:
    body = j({"code": 429, "error": "Too many requests for some devices and users",
              "exceeded_daily_quota_devices": {"d1": 500001}, "exceeded_daily_quota_users": {},
              "throttled_events": [0]})
    v = classify("batch", 429, body, 2)
    assert v.pause == (0,) and v.pause_s == 15.0 and v.throttled_devices == {"d1"} and v.resend == ((1,),)


@pytest.mark.parametrize("body", [b"Too Many Requests", b"", j({"code": 429, "error": "Too many requests"})])
def test_429_without_event_indexes_pauses_everything(body) -> None:
    v = classify("identify", 429, body, 3)
    assert v.pause == (0, 1, 2) and v.resend == () and v.pause_s == 15.0


def test_pause_seconds_per_endpoint() -> None:
    assert pause_seconds("httpapi") == 30.0
    assert {pause_seconds(e) for e in ("batch", "identify", "groupidentify", "usermap")} == {15.0}


@pytest.mark.parametrize("status", [500, 502, 503, 504])
@pytest.mark.parametrize("body", [b"", b"<html><body><h1>502 Bad Gateway</h1></body></html>", j({"code": 500}), b"\xff\xfe"])
def test_5xx_retries_everything_with_backoff(status, body) -> None:
    v = classify("httpapi", status, body, 4)
    assert v.outcome == "retry" and v.backoff == (0, 1, 2, 3) and not v.dead and not v.ack


def test_html_error_text_is_kept_in_the_error() -> None:
    v = classify("httpapi", 502, b"<html>Bad Gateway</html>", 1)
    assert "Bad Gateway" in v.error


def test_no_response_retries_and_says_why() -> None:
    v = classify("httpapi", None, None, 2, transport_error="timeout after 10s")
    assert v.outcome == "retry" and v.backoff == (0, 1) and v.error == "timeout after 10s"


def test_wrong_endpoint_404_is_retried_and_flagged() -> None:
    v = classify("httpapi", 404, b"Not Found", 1)
    assert v.backoff == (0,) and v.config_problem


@given(
    status=st.one_of(st.none(), st.integers(100, 599)),
    n=st.integers(1, 40),
    body=st.one_of(
        st.binary(max_size=64),
        st.fixed_dictionaries({}, optional={
            "error": st.text(max_size=10),
            "throttled_events": st.lists(st.integers(-3, 50)),
            "events_with_invalid_fields": st.dictionaries(st.text(max_size=4), st.lists(st.integers(-3, 50))),
            "events_with_missing_fields": st.dictionaries(st.text(max_size=4), st.one_of(st.integers(-3, 50), st.text())),
            "silenced_events": st.lists(st.integers(-3, 50)),
        }).map(orjson.dumps),
    ),
)
def test_every_index_lands_in_exactly_one_bucket(status, n, body) -> None:
    v = classify("httpapi", status, body, n)
    assert partition(v) == list(range(n))
    assert all(0 < len(sub) < n for sub in v.resend)  # resends shrink: delivery always progresses


def test_backoff_is_exponential_capped_and_jittered() -> None:
    rng = random.Random(1)
    delays = [backoff_delay(a, 1.0, 60.0, rng) for a in range(1, 12)]
    assert 0.5 <= delays[0] <= 1.0 and 1.0 <= delays[1] <= 2.0 and 2.0 <= delays[2] <= 4.0
    assert all(30.0 <= d <= 60.0 for d in delays[7:])
    assert len({backoff_delay(3, 1.0, 60.0, rng) for _ in range(20)}) > 1


def test_rate_limiter_spaces_reservations() -> None:
    limiter = RateLimiter(100.0)
    assert limiter.reserve(50, 0.0) == 0.0
    assert limiter.reserve(50, 0.0) == pytest.approx(0.5)
    assert limiter.reserve(100, 0.2) == pytest.approx(0.8)  # after the previous 50 events' slot
    assert limiter.reserve(10, 10.0) == 0.0  # idle time is not hoarded into a burst beyond one batch
    assert RateLimiter(0).reserve(10_000, 0.0) == 0.0
    with pytest.raises(ValueError):
        RateLimiter(-1)


# ---------------------------------------------------------------------------------------------
# The worker against the fake Amplitude server.

import asyncio  # noqa: E402
import logging  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

from fake_amplitude import FakeAmplitude  # noqa: E402

from edgeproxy.config import Settings  # noqa: E402
from edgeproxy.delivery import DeliveryWorker, Spool, SpoolItem  # noqa: E402
from edgeproxy.delivery.spool import now_ms  # noqa: E402
from edgeproxy.metrics import Metrics  # noqa: E402


def event(i: int, device: str = "device-0001", **extra) -> SpoolItem:
    item = {"event_type": f"Event {i}", "device_id": device, "insert_id": f"msg-{device}-{i}", "time": 1_700_000_000_000 + i,
            **extra}
    return SpoolItem(f"msg-{device}-{i}", "httpapi", item, None, device, None, 1_700_000_000_000, now_ms())


def make_settings(base_url: str, tmp_path: Path, *, api_key: str = "test-key", **delivery) -> Settings:
    s = Settings()
    s.amplitude.api_key = api_key
    s.amplitude.endpoint_url = base_url
    s.delivery.data_dir = str(tmp_path)
    s.delivery.flush_interval = 0.05
    s.delivery.retry_base = 0.01
    s.delivery.retry_max = 0.05
    s.delivery.request_timeout = 5.0
    for key, value in delivery.items():
        setattr(s.delivery, key, value)
    return s


async def until(condition, what: str, *, timeout: float = 60.0, pause: float = 0.02) -> None:
    """Poll a condition until it holds, failing after ``timeout`` seconds: a hang becomes a
    failure, while a slow (shared, loaded) machine only makes the wait longer. The bound is
    generous because it is never what a test measures."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for: {what}")
        await asyncio.sleep(pause)


# The queue the current test's Rig uses; the queue_backend fixture sets it and clears it
# after the test, so no test can build a Rig on another test's Redis keys.
QUEUE_BACKENDS: dict[str, str] = {}


def pytest_generate_tests(metafunc) -> None:
    """Every worker test (each builds a Rig) runs against both queue backends.

    A module whose tests build a Rig imports this hook and the ``queue_backend`` fixture."""
    if "Rig" in metafunc.function.__code__.co_names:
        metafunc.parametrize("queue_backend", ["sqlite", "redis"], indirect=True)


@pytest.fixture(autouse=True)
def queue_backend(request):
    backend = getattr(request, "param", "sqlite")
    QUEUE_BACKENDS["queue"] = backend
    if backend == "redis":
        QUEUE_BACKENDS["url"] = request.getfixturevalue("shared_redis")
        QUEUE_BACKENDS["prefix"] = request.getfixturevalue("unique_prefix")
    yield backend
    QUEUE_BACKENDS.clear()


class Rig:
    """A queue (SQLite or Redis), a worker and metrics wired together, with helpers to read the outcome."""

    def __init__(self, tmp_path: Path, settings: Settings) -> None:
        self.metrics = Metrics()
        if "queue" not in QUEUE_BACKENDS:
            raise RuntimeError("a Rig needs the queue_backend fixture: import it and pytest_generate_tests from test_delivery")
        if QUEUE_BACKENDS["queue"] == "redis":
            from edgeproxy.delivery.redis_queue import RedisQueue

            self.spool = RedisQueue.from_url(QUEUE_BACKENDS["url"], prefix=QUEUE_BACKENDS["prefix"], metrics=self.metrics)
        else:
            self.spool = Spool(tmp_path, metrics=self.metrics)
        self.settings = settings
        self.worker = DeliveryWorker(self.spool, settings, self.metrics)

    async def __aenter__(self) -> "Rig":
        await self.spool.open()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.worker.stop(grace=1.0)
        await self.spool.close()

    async def stats(self) -> dict:
        return await self.spool.stats()

    async def settled(self, delivered: int, dead: int = 0) -> None:
        async def check() -> bool:
            s = await self.stats()
            return s["delivered"] == delivered and s["dead"] == dead and s["in_flight"] == 0
        await until(check, f"{delivered} delivered and {dead} dead")

    def count(self, endpoint: str, outcome: str) -> float:
        return self.metrics.registry.get_sample_value(
            "edgeproxy_deliveries_total", {"target": "amplitude", "source": "default", "endpoint": endpoint, "outcome": outcome}) or 0.0


def posts(fake: FakeAmplitude, endpoint: str = "httpapi") -> list:
    return [r for r in fake.requests if r.endpoint == endpoint]


def sent_events(request) -> list[dict]:
    """The events of a recorded JSON request, parsed from its raw body (faults skip parsing)."""
    return orjson.loads(request.raw)["events"]


async def test_many_events_go_in_one_request(fake_amplitude: FakeAmplitude, tmp_path: Path) -> None:
    async with Rig(tmp_path, make_settings(fake_amplitude.base_url, tmp_path)) as rig:
        await rig.spool.append([event(i) for i in range(50)])
        await rig.worker.start()
        await rig.settled(delivered=50)
    assert len(posts(fake_amplitude)) == 1
    assert [e["insert_id"] for e in fake_amplitude.events] == [f"msg-device-0001-{i}" for i in range(50)]
    assert rig.count("httpapi", "ok") == 1
    assert rig.metrics.registry.get_sample_value("edgeproxy_delivered_items_total", {"target": "amplitude", "source": "default", "endpoint": "httpapi"}) == 50


async def test_wakes_from_appends_are_coalesced_into_a_few_cycles(fake_amplitude: FakeAmplitude, tmp_path: Path) -> None:
    """Every append wakes the worker; with the default flush_interval it looks at the queue at
    most every MIN_CYCLE_GAP_S (each look is a read of every group: ~0.35 ms of the event loop
    on the bench machine), and a full batch still goes at the next look."""
    from edgeproxy.delivery.worker import MIN_CYCLE_GAP_S

    async with Rig(tmp_path, make_settings(fake_amplitude.base_url, tmp_path, flush_interval=1.0, batch_size=10)) as rig:
        looks = 0
        due_groups = rig.spool.due_groups

        async def counted(*args, **kwargs):
            nonlocal looks
            looks += 1
            return await due_groups(*args, **kwargs)

        rig.spool.due_groups = counted
        await rig.worker.start()
        loop = asyncio.get_running_loop()
        started = loop.time()
        for _ in range(100):  # ~0.5 s of a wake every 5 ms, as under steady ingest
            rig.worker.wake()
            await asyncio.sleep(0.005)
        elapsed = loop.time() - started
        assert looks <= elapsed / MIN_CYCLE_GAP_S + 2, (looks, elapsed)  # 20 ms gaps: ~25 looks
        await rig.spool.append([event(i) for i in range(10)])  # a full batch
        rig.worker.wake()
        await rig.settled(delivered=10)
        assert loop.time() - started < elapsed + 0.9  # sent before flush_interval, as a full batch


async def test_batches_are_capped_at_batch_size(fake_amplitude: FakeAmplitude, tmp_path: Path) -> None:
    async with Rig(tmp_path, make_settings(fake_amplitude.base_url, tmp_path, batch_size=10)) as rig:
        await rig.spool.append([event(i) for i in range(25)])
        await rig.worker.start()
        await rig.settled(delivered=25)
    assert sorted(len(sent_events(r)) for r in posts(fake_amplitude)) == [5, 10, 10]


async def test_options_and_form_endpoints_batch_separately(fake_amplitude: FakeAmplitude, tmp_path: Path) -> None:
    idents = [SpoolItem(f"id-{i}", "identify", {"user_id": f"user-{i:04d}", "user_properties": {"$set": {"n": i}}},
                        None, None, f"user-{i:04d}", None, now_ms()) for i in range(3)]
    short = [SpoolItem(f"s-{i}", "httpapi", {"event_type": "x", "user_id": "ab", "insert_id": f"s-{i}"},
                       {"min_id_length": 1}, None, "ab", None, now_ms()) for i in range(2)]
    async with Rig(tmp_path, make_settings(fake_amplitude.base_url, tmp_path)) as rig:
        await rig.spool.append([event(1), *idents, *short])
        await rig.worker.start()
        await rig.settled(delivered=6)
    [ident] = posts(fake_amplitude, "identify")
    assert [x["user_id"] for x in ident.body["identification"]] == ["user-0000", "user-0001", "user-0002"]
    bodies = sorted((r.body.get("options"), len(sent_events(r))) for r in posts(fake_amplitude)
                    if r.body.get("options")) + [(None, 1)]
    assert bodies == [({"min_id_length": 1}, 2), (None, 1)]


async def test_5xx_then_success_resends_the_same_insert_id_once_ingested(fake_amplitude: FakeAmplitude, tmp_path: Path) -> None:
    fake_amplitude.fail_next(500, ingest=True)  # Amplitude took it but the answer was a 500
    async with Rig(tmp_path, make_settings(fake_amplitude.base_url, tmp_path)) as rig:
        await rig.spool.append([event(i) for i in range(3)])
        await rig.worker.start()
        await rig.settled(delivered=3)
        [e] = await rig.spool.events_for_session("device-0001", limit=1)
        responses = await rig.spool.recent_responses()
    first, second = posts(fake_amplitude)
    assert first.raw == second.raw  # same events, same insert_ids
    assert len(fake_amplitude.events) == 3 and fake_amplitude.duplicates == 3
    assert e["attempts"] == 1 and e["state"] == "delivered"
    assert [r["status"] for r in responses] == [200, 500]
    assert rig.count("httpapi", "retry") == 1 and rig.count("httpapi", "ok") == 1


async def test_400_dead_letters_the_named_events_and_delivers_the_rest(fake_amplitude: FakeAmplitude, tmp_path: Path) -> None:
    bad = event(1, time="2024-01-01T00:00:00Z")  # ISO time: Amplitude 400s it
    async with Rig(tmp_path, make_settings(fake_amplitude.base_url, tmp_path)) as rig:
        await rig.spool.append([event(0), bad, event(2)])
        await rig.worker.start()
        await rig.settled(delivered=2, dead=1)
        [dead] = await rig.spool.dead_letters()
    assert dead["message_id"] == bad.message_id
    assert "Invalid field values on some events" in dead["reason"] and "time" in dead["reason"]
    assert [e["insert_id"] for e in fake_amplitude.events] == ["msg-device-0001-0", "msg-device-0001-2"]
    assert len(posts(fake_amplitude)) == 2
    assert rig.metrics.registry.get_sample_value("edgeproxy_dead_letters_total", {"target": "amplitude", "source": "default", "reason": "invalid_fields"}) == 1


async def test_invalid_api_key_dead_letters_the_batch_and_logs_loudly(
    fake_amplitude: FakeAmplitude, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="edgeproxy.delivery")
    async with Rig(tmp_path, make_settings(fake_amplitude.base_url, tmp_path, api_key="wrong-key")) as rig:
        await rig.spool.append([event(0), event(1)])
        await rig.worker.start()
        await rig.settled(delivered=0, dead=2)
        letters = await rig.spool.dead_letters()
        [response] = await rig.spool.recent_responses()
    assert all("Invalid API key" in d["reason"] for d in letters)
    assert any("amplitude.api_key" in r.getMessage() for r in caplog.records if r.levelno == logging.ERROR)
    # Amplitude echoes the key in its error; it is a secret and stays out of logs and /debug.
    assert "wrong-key" in posts(fake_amplitude)[0].response.decode()
    assert "wrong-key" not in caplog.text
    assert all("wrong-key" not in d["reason"] for d in letters) and "wrong-key" not in response["body"]


async def test_413_splits_the_batch(fake_amplitude: FakeAmplitude, tmp_path: Path) -> None:
    fake_amplitude.fail_next(413)
    async with Rig(tmp_path, make_settings(fake_amplitude.base_url, tmp_path)) as rig:
        await rig.spool.append([event(i) for i in range(5)])
        await rig.worker.start()
        await rig.settled(delivered=5)
    assert [len(sent_events(r)) for r in posts(fake_amplitude)] == [5, 2, 3]
    assert len(fake_amplitude.events) == 5 and rig.count("httpapi", "split") == 1


async def test_413_for_one_event_alone_dead_letters_it(fake_amplitude: FakeAmplitude, tmp_path: Path) -> None:
    fake_amplitude.fail_next(413, times=3)
    async with Rig(tmp_path, make_settings(fake_amplitude.base_url, tmp_path)) as rig:
        await rig.spool.append([event(0), event(1)])
        await rig.worker.start()
        await rig.settled(delivered=0, dead=2)
        letters = await rig.spool.dead_letters()
    assert [len(sent_events(r)) for r in posts(fake_amplitude)] == [2, 1, 1]
    assert all("Payload too large" in d["reason"] for d in letters)


async def test_429_pauses_the_throttled_device_while_others_go(tmp_path: Path) -> None:
    fake = FakeAmplitude(api_keys={"test-key"}, eps_threshold=0.1)  # > 3 events per device in 30 s
    base = await fake.start()
    try:
        async with Rig(tmp_path, make_settings(base, tmp_path)) as rig:
            noisy = [event(i, device="noisy-device") for i in range(5)]
            quiet = [event(i, device=f"quiet-{i:04d}") for i in range(2)]
            await rig.spool.append([*noisy[:2], quiet[0], *noisy[2:], quiet[1]])
            await rig.worker.start()
            await until(lambda: len(fake.events) == 2, "the quiet devices' events")
            await until(lambda: rig.count("httpapi", "ok") == 1, "the resend to be settled")
            # While the pause lasts, a new event of the throttled device is held back, others go.
            await rig.spool.append([event(9, device="noisy-device"), event(9, device="quiet-0009")])
            rig.worker.wake()
            await until(lambda: len(fake.events) == 3, "the new quiet event")
            await until(lambda: rig.count("httpapi", "ok") == 2, "the second batch to be settled")
            held = await rig.spool.events_for_session("noisy-device")
            stats = await rig.stats()
    finally:
        await fake.stop()
    assert {e["device_id"] for e in fake.events} == {"quiet-0000", "quiet-0001", "quiet-0009"}
    assert sum(1 for r in fake.requests for e in sent_events(r) if e["insert_id"] == "msg-noisy-device-9") == 0
    assert len(held) == 6 and all(e["state"] == "pending" for e in held)
    throttled = [e for e in held if e["attempts"] == 1]
    assert len(throttled) == 5 and all("throttled" in e["last_error"] for e in throttled)
    assert all(e["next_attempt_ms"] - e["received_ms"] >= 25_000 for e in throttled)  # ~30 s pause on /2/httpapi
    [deferred] = [e for e in held if e["attempts"] == 0]
    assert deferred["next_attempt_ms"] == throttled[0]["next_attempt_ms"]  # held until the same pause ends
    assert stats["depth"] == 6 and rig.count("httpapi", "throttled") == 1


async def test_timeout_is_retried(fake_amplitude: FakeAmplitude, tmp_path: Path) -> None:
    fake_amplitude.set_delay(2.0)
    async with Rig(tmp_path, make_settings(fake_amplitude.base_url, tmp_path, request_timeout=0.2)) as rig:
        await rig.spool.append([event(0)])
        await rig.worker.start()
        await until(lambda: len(fake_amplitude.requests) == 1, "the first request")
        fake_amplitude.set_delay(0)
        await rig.settled(delivered=1)
        responses = await rig.spool.recent_responses()
    assert responses[-1]["status"] is None and "timeout" in responses[-1]["body"]
    assert responses[0]["status"] == 200
    assert len(posts(fake_amplitude)) >= 2 and len(fake_amplitude.events) == 1


async def test_dropped_connection_is_retried(fake_amplitude: FakeAmplitude, tmp_path: Path) -> None:
    fake_amplitude.drop_next()
    async with Rig(tmp_path, make_settings(fake_amplitude.base_url, tmp_path)) as rig:
        await rig.spool.append([event(0)])
        await rig.worker.start()
        await rig.settled(delivered=1)
        responses = await rig.spool.recent_responses()
    assert responses[-1]["status"] is None and "connection" in responses[-1]["body"]


async def test_html_502_body_is_retried_and_logged(fake_amplitude: FakeAmplitude, tmp_path: Path) -> None:
    html = "<html><head><title>502 Bad Gateway</title></head><body>nginx</body></html>"
    fake_amplitude.fail_next(502, body=html, content_type="text/html")
    async with Rig(tmp_path, make_settings(fake_amplitude.base_url, tmp_path)) as rig:
        await rig.spool.append([event(0)])
        await rig.worker.start()
        await rig.settled(delivered=1)
        responses = await rig.spool.recent_responses()
    assert responses[-1]["status"] == 502 and responses[-1]["body"] == html
    assert len(fake_amplitude.events) == 1


async def test_no_api_key_delivers_to_the_local_sink(tmp_path: Path) -> None:
    settings = make_settings("", tmp_path, api_key="")
    async with Rig(tmp_path, settings) as rig:
        await rig.spool.append([event(i) for i in range(3)])
        await rig.worker.start()
        await rig.settled(delivered=3)
        assert await rig.spool.recent_responses() == []
    assert rig.worker.sink_mode
    [body] = list(rig.worker.sink)
    assert [e["insert_id"] for e in body["events"]] == [f"msg-device-0001-{i}" for i in range(3)]
    assert rig.count("httpapi", "sink") == 1


async def test_wake_sends_a_full_batch_without_waiting_the_interval(fake_amplitude: FakeAmplitude, tmp_path: Path) -> None:
    settings = make_settings(fake_amplitude.base_url, tmp_path, batch_size=5, flush_interval=3600.0)
    async with Rig(tmp_path, settings) as rig:
        await rig.worker.start()
        await asyncio.sleep(0.05)  # the worker has found nothing and sleeps (up to an hour)
        await rig.spool.append([event(i) for i in range(5)])
        rig.worker.wake()
        await rig.settled(delivered=5)


async def test_stop_flushes_what_is_waiting_for_the_interval(fake_amplitude: FakeAmplitude, tmp_path: Path) -> None:
    settings = make_settings(fake_amplitude.base_url, tmp_path, flush_interval=3600.0)
    async with Rig(tmp_path, settings) as rig:
        await rig.worker.start()
        await rig.spool.append([event(i) for i in range(3)])
        await rig.worker.stop(grace=10.0)
        stats = await rig.stats()
    assert stats["delivered"] == 3 and len(fake_amplitude.events) == 3


async def test_stop_after_grace_leaves_the_rest_pending_for_the_next_start(fake_amplitude: FakeAmplitude, tmp_path: Path) -> None:
    fake_amplitude.set_delay(30.0)  # Amplitude hangs; the grace period runs out mid-request
    settings = make_settings(fake_amplitude.base_url, tmp_path, request_timeout=60.0)
    async with Rig(tmp_path, settings) as rig:
        await rig.spool.append([event(i) for i in range(4)])
        await rig.worker.start()
        await until(lambda: len(fake_amplitude.requests) == 1, "the hanging request")
        await rig.worker.stop(grace=0.1)
        stats = await rig.stats()
        assert (stats["depth"], stats["in_flight"], stats["delivered"]) == (4, 0, 0)
        fake_amplitude.set_delay(0)
        rig.worker = DeliveryWorker(rig.spool, settings, rig.metrics)
        await rig.worker.start()
        await rig.settled(delivered=4)


async def test_stop_leaves_backed_off_items_pending(fake_amplitude: FakeAmplitude, tmp_path: Path) -> None:
    fake_amplitude.fail_next(503, times=10)
    settings = make_settings(fake_amplitude.base_url, tmp_path, retry_base=3600.0, retry_max=3600.0)
    async with Rig(tmp_path, settings) as rig:
        await rig.spool.append([event(i) for i in range(2)])
        await rig.worker.start()
        await until(lambda: rig.count("httpapi", "retry") == 1, "the 503")
        await rig.worker.stop(grace=10.0)
        stats = await rig.stats()
    assert (stats["depth"], stats["retrying"], stats["in_flight"]) == (2, 2, 0)
    assert len(fake_amplitude.requests) == 1


async def test_rate_limit_spaces_requests(fake_amplitude: FakeAmplitude, tmp_path: Path) -> None:
    settings = make_settings(fake_amplitude.base_url, tmp_path, batch_size=10, rate_limit=10.0)
    async with Rig(tmp_path, settings) as rig:
        await rig.spool.append([event(i) for i in range(30)])
        await rig.worker.start()
        await rig.settled(delivered=30)
        reserved_until = rig.worker.targets[("amplitude", "default")].limiter._next_free
    # Three batches of 10 at 10 events/s occupy three seconds of allowance.
    assert len(posts(fake_amplitude)) == 3
    assert reserved_until >= 3.0


async def test_spool_depth_gauge_follows(fake_amplitude: FakeAmplitude, tmp_path: Path) -> None:
    fake_amplitude.fail_next(503, times=10)
    settings = make_settings(fake_amplitude.base_url, tmp_path, retry_base=3600.0, retry_max=3600.0)
    async with Rig(tmp_path, settings) as rig:
        await rig.spool.append([event(i) for i in range(7)])
        await rig.worker.start()
        await until(lambda: rig.metrics.registry.get_sample_value("edgeproxy_spool_depth") == 7, "depth gauge")


async def test_requests_stay_under_one_megabyte(fake_amplitude: FakeAmplitude, tmp_path: Path) -> None:
    props = {f"p{k}": "x" * 1000 for k in range(4)}  # ~4 KB per event, each string within Amplitude's 1,024
    async with Rig(tmp_path, make_settings(fake_amplitude.base_url, tmp_path)) as rig:
        await rig.spool.append([event(i, event_properties=props) for i in range(300)])  # ~1.2 MB in all
        await rig.worker.start()
        await rig.settled(delivered=300)
    sent = posts(fake_amplitude)
    assert len(sent) == 2 and all(len(r.raw) < 1_000_000 for r in sent)
    assert all(r.status == 200 for r in sent) and len(fake_amplitude.events) == 300


async def test_plain_text_429_pauses_the_batch_devices(fake_amplitude: FakeAmplitude, tmp_path: Path) -> None:
    fake_amplitude.fail_next(429, body="Too Many Requests", content_type="text/plain")
    async with Rig(tmp_path, make_settings(fake_amplitude.base_url, tmp_path)) as rig:
        await rig.spool.append([event(0, device="device-aaaa")])
        await rig.worker.start()
        await until(lambda: rig.count("httpapi", "throttled") == 1, "the 429")
        await rig.spool.append([event(1, device="device-aaaa"), event(1, device="device-bbbb")])
        rig.worker.wake()
        await until(lambda: len(fake_amplitude.events) == 1, "the other device's event")
        await until(lambda: rig.count("httpapi", "ok") == 1, "its settlement")
        held = await rig.spool.events_for_session("device-aaaa")
    assert fake_amplitude.events[0]["device_id"] == "device-bbbb"
    assert [e["state"] for e in held] == ["pending", "pending"]
