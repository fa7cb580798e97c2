"""When edgeproxy cannot keep an event it says so: 503 + Retry-After, never a 200 it cannot honour.

Two cases here: the spool has reached ``delivery.max_spool_size``, and shutdown has begun.
"""

from __future__ import annotations

import orjson
from test_ingest import make_settings, track

from edgeproxy.app import SPOOL, create_app


def big_batch(start: int, n: int = 12) -> bytes:
    """About 360 KB: a batch within Segment's 500 KB, each message within its 32 KB."""
    return orjson.dumps({"writeKey": "wk", "batch": [
        track(messageId=f"big-{start + i}", properties={"blob": "x" * 30_000}) for i in range(n)]})


async def test_full_spool_answers_503_with_retry_after_and_keeps_what_it_took(tmp_path, aiohttp_client):
    # An API key and an hour's flush interval: nothing leaves the spool during the test.
    settings = make_settings(tmp_path, delivery__max_spool_size=1024**2, delivery__flush_interval=3600.0,
                             delivery__batch_size=2000, amplitude__api_key="k", amplitude__endpoint_url="http://127.0.0.1:9")
    app = create_app(settings)
    client = await aiohttp_client(app)
    acknowledged = 0
    for k in range(10):  # bounded: 10 x 360 KB is well over the 1 MB budget
        resp = await client.post("/_e/v1/batch", data=big_batch(k * 100))
        if resp.status != 200:
            break
        acknowledged += 12
    assert resp.status == 503, await resp.text()
    assert int(resp.headers["Retry-After"]) > 0
    assert (await resp.json())["code"] == "unavailable"
    assert 0 < acknowledged < 120
    stats = await app[SPOOL].stats()
    assert stats["depth"] == acknowledged  # every 200 is in the spool; the refused batch is not
    # A small event is refused as well: the budget is a limit, not a suggestion.
    small = await client.post("/_e/v1/t", data=orjson.dumps(track(messageId="small-1")))
    assert small.status == 503


async def test_ingest_answers_503_once_shutdown_has_begun(tmp_path, aiohttp_client):
    app = create_app(make_settings(tmp_path))
    client = await aiohttp_client(app)
    before = await client.post("/_e/v1/t", data=orjson.dumps(track(messageId="before-1")))
    assert before.status == 200
    await app.shutdown()  # what SIGTERM triggers (on_shutdown), before the worker's flush in on_cleanup
    for path, body in (("/_e/v1/t", track(messageId="after-1")),
                       ("/_e/v1/batch", {"writeKey": "wk", "batch": [track(messageId="after-2")]})):
        resp = await client.post(path, data=orjson.dumps(body))
        assert resp.status == 503, await resp.text()
        assert int(resp.headers["Retry-After"]) > 0
        assert (await resp.json())["message"] == "shutting down; retry"
        assert resp.headers.get("Connection", "").lower() == "close"
    ids = {e["message_id"] for e in await app[SPOOL].events_for_session("anon-0001-aaaa")}
    assert ids == {"before-1"}
