"""bench/_handler_only.py, the ingest benchmark's "handler alone" reference, still runs edgeproxy's handler.

The reference is only meaningful while it does the work the real server does before the
spool: if the handler's wiring changed and the reference answered without parsing, touching
the session or mapping, the benchmark would report a ceiling that means nothing.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

from test_ingest import make_settings, track

BENCH = Path(__file__).resolve().parent.parent / "bench"


def load_reference() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_handler_only", BENCH / "_handler_only.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


async def test_the_reference_parses_sets_session_cookies_and_maps(tmp_path, aiohttp_client):
    ref = load_reference()
    queue = ref.CountingQueue()
    client = await aiohttp_client(ref.build_app(make_settings(tmp_path, amplitude__api_key="bench-dummy-api-key"), queue))

    resp = await client.post("/_e/v1/t", json=track())
    assert resp.status == 200, await resp.text()
    assert {"_ep_did", "_ep_sess", "analytics_session_id"} <= set(resp.cookies)
    assert queue.items == 1  # one mapped Amplitude item handed to the queue

    resp = await client.post("/_e/v1/t", json=track(type="nonsense"))
    assert resp.status == 400  # the real validation, not a blanket 200
    assert queue.items == 1


async def test_the_in_process_calls_go_through_the_handler_and_map_every_event(monkeypatch):
    """bench/_handler_calls.py times the real handler: each timed call answered 200 and
    mapped its events (a handler that refused them, or mapped nothing, must not read as fast),
    with the cookies of each visitor's first call (a new visitor's calls sign more)."""
    monkeypatch.syspath_prepend(str(BENCH))
    calls = importlib.import_module("_handler_calls")
    for batch, per_call in ((False, 1), (True, 20)):
        result = await calls.handler_calls(12, batch)
        assert result["calls"] == 12 and result["events_per_call"] == per_call
        assert result["items_queued"] == 12 * per_call
        assert result["device_cookies_set"] == 0  # the calls are a returning visitor's: its cookies were read
        assert result["us_per_event"] > 0
