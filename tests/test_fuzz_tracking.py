"""Property-based fuzzing of the tracking endpoints through a real server (a thread with its
own loop, so Hypothesis drives plain HTTP): hostile values in every field of every message,
single calls and batches. Properties: never a 5xx; a valid message is never refused because
of another in its batch; every message answered as accepted is in the spool."""

from __future__ import annotations

import asyncio
import http.client
import sqlite3
import threading
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from test_ingest import make_settings
from spool_disk import stored

from edgeproxy.app import create_app

WRITE_KEY = "fuzz-key"
TYPES = ["track", "page", "screen", "identify", "group", "alias"]


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Any:
    """edgeproxy on a free port in a thread; a relay to a closed port keeps every accepted
    message in the spool (group and alias map to nothing for Amplitude's presets)."""
    tmp = tmp_path_factory.mktemp("fuzz")
    s = make_settings(tmp, segment__relay_url="http://127.0.0.1:9")
    s.server.ip_rate_limit = 0
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    state: dict[str, Any] = {}

    async def start() -> None:
        from aiohttp import web

        runner = web.AppRunner(create_app(s), access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        state.update(runner=runner, port=site._server.sockets[0].getsockname()[1])  # noqa: SLF001
        ready.set()

    thread = threading.Thread(target=lambda: (loop.run_until_complete(start()), loop.run_forever()), daemon=True)
    thread.start()
    assert ready.wait(30)
    yield state["port"], Path(s.delivery.data_dir) / "spool.sqlite3"
    asyncio.run_coroutine_threadsafe(state["runner"].cleanup(), loop).result(30)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)


def post(port: int, path: str, body: bytes) -> tuple[int, dict[str, Any]]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("POST", path, body=body, headers={"Content-Type": "text/plain"})
        resp = conn.getresponse()
        data = resp.read()
        return resp.status, orjson.loads(data) if data else {}
    finally:
        conn.close()


scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=False),
                    st.text(max_size=40), st.sampled_from(["", " ", "\u0000", "9999-12-31T23:59:59-05:00",
                                                           "0001-01-01T00:00:00+01:00", "x" * 2000, "-1"]))
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                       st.dictionaries(st.text(max_size=10), inner, max_size=4)),
                      max_leaves=12)
HOSTILE = st.fixed_dictionaries({}, optional={
    "type": st.one_of(st.sampled_from(TYPES), values), "userId": values, "anonymousId": values,
    "event": values, "name": values, "timestamp": values, "sentAt": values, "messageId": values,
    "previousId": values, "groupId": values, "properties": values, "traits": values,
    "integrations": st.one_of(values, st.just({"Actions Amplitude": {"session_id": "x"}})),
    "context": st.one_of(values, st.fixed_dictionaries({}, optional={
        "device": values, "library": values, "userAgent": values, "ip": values, "consent": values,
        "page": values, "traits": values})),
})


def valid(i: int, mid: str) -> dict[str, Any]:
    return {"type": "track", "event": "Valid", "anonymousId": f"fuzz-anon-{i}", "messageId": mid,
            "context": {"library": {"name": "analytics.js"}}}


def spooled(path: Path, ids: set[str]) -> set[str]:
    conn = sqlite3.connect(path)
    try:
        found = {r[0] for r in stored(conn, where=f"message_id IN ({','.join('?' * len(ids))})", params=tuple(ids))}
    finally:
        conn.close()
    return found


COUNTER = iter(range(10**9))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow])
@given(hostile=st.lists(HOSTILE, min_size=1, max_size=4), envelope=st.dictionaries(
    st.sampled_from(["sentAt", "context", "integrations"]), values, max_size=2), where=st.integers(0, 4))
def test_batches_of_hostile_messages(server, hostile, envelope, where) -> None:
    port, spool = server
    n = next(COUNTER)
    mids = [f"valid-{n}-a", f"valid-{n}-b"]
    batch: list[Any] = list(hostile)
    batch.insert(min(where, len(batch)), valid(n, mids[0]))
    batch.append(valid(n, mids[1]))
    valid_at = [i for i, m in enumerate(batch) if isinstance(m, dict) and m.get("messageId") in mids]
    body = {"batch": batch, "writeKey": WRITE_KEY, **{k: v for k, v in envelope.items() if k != "sentAt"}}
    try:
        raw = orjson.dumps(body)
    except (TypeError, orjson.JSONEncodeError):
        return
    status, answer = post(port, "/_e/v1/batch", raw)
    assert status < 500, answer
    if status == 200:
        rejected = {r["index"] for r in answer.get("rejected", [])}
        assert not rejected & set(valid_at), answer  # never refused because of another message
        accepted_ids = {m["messageId"] for i, m in enumerate(batch) if i not in rejected and isinstance(m, dict)
                        and isinstance(m.get("messageId"), str) and m["messageId"]}
        assert spooled(spool, accepted_ids) == accepted_ids  # every accepted message is stored
    else:  # the batch as a whole was refused: only for the envelope (context/integrations are ignored if bad)
        assert status == 400 and answer.get("success") is False


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(message=HOSTILE, path=st.sampled_from(["t", "p", "i", "g", "a", "s", "track", "identify"]))
def test_single_hostile_messages(server, message, path) -> None:
    port, spool = server
    mid = f"single-{next(COUNTER)}"
    body = {**message, "writeKey": WRITE_KEY}
    body.setdefault("messageId", mid)
    try:
        raw = orjson.dumps(body)
    except (TypeError, orjson.JSONEncodeError):
        return
    status, answer = post(port, f"/_e/v1/{path}", raw)
    assert status in (200, 400), (status, answer)
    if status == 200 and isinstance(body["messageId"], str) and body["messageId"]:
        assert spooled(spool, {body["messageId"]}) == {body["messageId"]}
