"""The relay end to end: `edgeproxy serve` as a subprocess between a real Segment library and
the stand-ins of Segment's tracking API and Amplitude.

Every message a client got a 200 for must reach Segment once per messageId, as the client
sent it, with the session id that Amplitude (direct) got for the same message; kill -9 under
load and a refusing Segment lose nothing. Each test prints sent / relayed / duplicates / lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal

import pytest
from fake_amplitude import FakeAmplitude
from fake_segment import FakeSegment
from segment.analytics import Client
from test_e2e import WRITE_KEY, Proxy, steady_load, wait_for

SESSION_KEY = "Actions Amplitude"


def relay_figures(name: str, sent: set[str], seg: FakeSegment, record_property) -> dict[str, int]:
    """sent (acknowledged) / relayed / duplicates / lost, printed (-s) and kept as test properties.

    ``duplicates``: messages Segment received again after storing them (its messageId dedupe
    drops them); ``extra``: relayed messages whose client never saw the 200 (cut by a crash).
    """
    relayed = {m["messageId"] for m in seg.messages()}
    figures = {"sent": len(sent), "relayed": len(sent & relayed), "duplicates": len(seg.duplicates()),
               "lost": len(sent - relayed), "extra": len(relayed - sent)}
    print(f"\n{name}: " + ", ".join(f"{k}={v}" for k, v in figures.items()))
    for key, value in figures.items():
        record_property(f"{name}_{key}", value)
    return figures


def relay_proxy(tmp_path, amp: FakeAmplitude, seg: FakeSegment, **extra: str) -> Proxy:
    return Proxy(tmp_path, amp.base_url, segment__relay_url=f'"{seg.base_url}"', **extra)


def send_with_analytics_python(host: str, n: int) -> list[str]:
    """Send ``n`` messages of every type with Segment's own Python library; their messageIds."""
    errors: list[Exception] = []
    client = Client(WRITE_KEY, host=host, gzip=True, max_retries=3, upload_size=50,
                    on_error=lambda exc, batch: errors.append(exc))
    ids: list[str] = []
    for i in range(n):
        mid = f"py-{i:04d}"
        user, anon = f"user-{i % 7}", f"anon-{i % 7:04d}"
        kind = i % 6
        if kind in (0, 1):
            client.track(user_id=user, anonymous_id=anon, event="Order Completed" if kind else "Signed Up",
                         properties={"i": i, "revenue": 9.5}, message_id=mid)
        elif kind == 2:
            client.identify(user_id=user, anonymous_id=anon, traits={"plan": "team", "i": i}, message_id=mid)
        elif kind == 3:
            client.page(user_id=user, anonymous_id=anon, name="Pricing", properties={"i": i}, message_id=mid)
        elif kind == 4:
            client.group(user_id=user, anonymous_id=anon, group_id="acme", traits={"i": i}, message_id=mid)
        else:
            client.screen(user_id=user, anonymous_id=anon, name="Cart", properties={"i": i}, message_id=mid)
        ids.append(mid)
    client.shutdown()  # flushes and joins the consumer thread
    assert not errors, errors
    return ids


async def test_analytics_python_messages_reach_segment_once_with_amplitudes_session(
        tmp_path, amp: FakeAmplitude, fake_segment: FakeSegment, record_property) -> None:
    proxy = relay_proxy(tmp_path, amp, fake_segment, sessions__stamp_non_web="true")
    await proxy.start()
    try:
        sent = await asyncio.to_thread(send_with_analytics_python, proxy.base + "/_e", 120)
        await wait_for(lambda: set(sent) <= {m["messageId"] for m in fake_segment.messages()}, timeout=30)
        await wait_for(lambda: len({e["insert_id"] for e in amp.ingested("httpapi")}) >= 80, timeout=30)
        amplitude_events = {e["insert_id"]: e for e in amp.ingested("httpapi")}
    finally:
        proxy.kill(signal.SIGTERM)
    figures = relay_figures("relay_python", set(sent), fake_segment, record_property)
    assert figures["lost"] == 0 and figures["duplicates"] == 0 and figures["extra"] == 0
    relayed = {m["messageId"]: m for m in fake_segment.messages(WRITE_KEY)}
    assert {r.headers["Authorization"] for r in fake_segment.requests} == {"Basic ZTJlLXdyaXRlLWtleTo="}
    compared = 0
    for mid in sent:
        msg = relayed[mid]
        assert msg["context"]["library"]["name"] == "analytics-python" and "ip" not in msg["context"]
        assert msg["userId"].startswith("user-") and msg["anonymousId"].startswith("anon-")
        event = amplitude_events.get(mid)
        if event is not None:  # track, page and screen: Amplitude's events (identify and group go elsewhere)
            assert msg["integrations"][SESSION_KEY]["session_id"] == event["session_id"] > 0, mid
            compared += 1
    assert compared == 80  # 4 of every 6 messages are events with a session


@pytest.mark.parametrize("queue", ["sqlite", "redis"])
async def test_kill_9_under_load_loses_nothing_for_the_relay(tmp_path, amp: FakeAmplitude, fake_segment: FakeSegment,
                                                            record_property, queue) -> None:
    with contextlib.ExitStack() as stack:
        extra = {}
        if queue == "redis":
            from redis_server import redis_server

            extra["delivery__queue"] = f'"{stack.enter_context(redis_server(tmp_path))}"'
            # The killed process's claimed items are taken over after claim_idle (60 s by default).
            extra["delivery__claim_idle"] = '"3s"'
        await kill_9_scenario(relay_proxy(tmp_path, amp, fake_segment, **extra), amp, fake_segment, record_property,
                              f"relay_kill_9_{queue}")


async def kill_9_scenario(proxy: Proxy, amp: FakeAmplitude, fake_segment: FakeSegment, record_property,
                          name: str) -> None:
    await proxy.start()
    acknowledged: set[str] = set()
    fake_segment.set_delay(0.2)  # a slow Segment: relay items pile up when the process dies

    async def killer() -> None:
        await wait_for(lambda: len(acknowledged) >= 300, timeout=60)
        proxy.kill(signal.SIGKILL)

    await asyncio.gather(killer(), steady_load(proxy, acknowledged, name))
    assert len(acknowledged) >= 300
    fake_segment.set_delay(0)
    await proxy.start()  # same spool (or Redis): recovered and delivered
    try:
        try:
            await wait_for(lambda: acknowledged <= {m["messageId"] for m in fake_segment.messages()}, timeout=60)
            await wait_for(lambda: acknowledged <= {e["insert_id"] for e in amp.ingested("httpapi")}, timeout=60)
        finally:
            figures = relay_figures(name, acknowledged, fake_segment, record_property)
    finally:
        proxy.kill(signal.SIGTERM)
    assert figures["lost"] == 0 and figures["relayed"] == figures["sent"]
    sessions = {m["messageId"]: m.get("integrations", {}) for m in fake_segment.unique_messages()}
    assert all(SESSION_KEY not in sessions[mid] for mid in acknowledged)  # mobile without a session: none made up


async def test_a_refusing_segment_delays_the_relay_but_never_amplitude(
        tmp_path, amp: FakeAmplitude, fake_segment: FakeSegment, record_property) -> None:
    """Segment answers 503 for 3 s and then 429 with Retry-After: Amplitude keeps receiving
    meanwhile, and afterwards every message reaches Segment once."""
    fake_segment.fail_for(3.0, status=503)
    fake_segment.fail_next(429, {"message": "Too many requests"}, headers={"Retry-After": "1"})  # after the outage
    proxy = relay_proxy(tmp_path, amp, fake_segment)
    await proxy.start()
    acknowledged: set[str] = set()
    try:
        await steady_load(proxy, acknowledged, "refused", workers=2, batches=20)
        await wait_for(lambda: acknowledged <= {e["insert_id"] for e in amp.ingested("httpapi")}, timeout=30)
        await wait_for(lambda: acknowledged <= {m["messageId"] for m in fake_segment.messages()}, timeout=60)
    finally:
        proxy.kill(signal.SIGTERM)
    figures = relay_figures("relay_refused", acknowledged, fake_segment, record_property)
    assert figures["lost"] == 0 and figures["duplicates"] == 0
    statuses = [r.status for r in fake_segment.requests]
    assert 503 in statuses and 429 in statuses and statuses[-1] == 200
