"""Forgetting a person: ``POST /debug/forget`` and ``edgeproxy forget`` remove session state,
spool / Redis queue rows in every state and the /debug history, and queue a deletion request
that reaches Amplitude's User Privacy API (the stand-in) durably, retried like any delivery."""

from __future__ import annotations

import asyncio
import base64
import re
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import orjson
from fake_amplitude import TEST_API_KEY, FakeAmplitude
from spool_disk import stored
from redis_server import redis_server
from test_ingest import make_settings, track
from test_sources import until

from edgeproxy.app import create_app
from edgeproxy.delivery.spool import DeadLetter, Spool, SpoolItem

CHROME = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36"


def settings_for(tmp_path: Path, amp: FakeAmplitude, **overrides):
    return make_settings(tmp_path, amplitude__api_key=TEST_API_KEY, amplitude__secret_key="the-secret",
                         amplitude__endpoint_url=amp.base_url, **overrides)


def ev(mid: str, anon: str, user: str | None) -> dict:
    body = track(messageId=mid, anonymousId=anon, context={"library": {"name": "analytics.js"}, "userAgent": CHROME})
    if user:
        body["userId"] = user
    return body


async def send_people(client) -> None:
    """u-1 on two browsers, u-2 on a third; each request without cookies (a fresh browser)."""
    for mid, anon, user in (("a1", "dev-a", "user-1"), ("a2", "dev-a", "user-1"), ("b1", "dev-b", "user-1"), ("c1", "dev-c", "user-2")):
        client.session.cookie_jar.clear()
        resp = await client.post("/_e/v1/t", data=orjson.dumps(ev(mid, anon, user)))
        assert resp.status == 200


async def test_debug_forget_removes_everything_and_amplitude_gets_the_deletion(tmp_path, aiohttp_client, amp) -> None:
    amp.secret_keys[TEST_API_KEY] = "the-secret"
    client = await aiohttp_client(create_app(settings_for(tmp_path, amp)))
    await send_people(client)
    await until(lambda: len(amp.events) == 4, "four events at Amplitude")

    resp = await client.post("/debug/forget", json={"user_id": "user-1"})
    assert resp.status == 200
    report = await resp.json()
    assert report["device_ids"] == ["dev-a", "dev-b"] and report["user_ids"] == ["user-1"]
    assert report["sessions"] == 2 and report["rows"] == {"delivered": 3} and report["amplitude_deletions"] == ["default"]

    await until(lambda: amp.deletions, "the deletion request")
    assert amp.deletions == [{"user_ids": ["user-1"], "requester": "edgeproxy forget", "ignore_invalid_id": "True"}]
    [request] = [r for r in amp.requests if r.endpoint == "deletions"]
    assert request.headers["Authorization"] == "Basic " + base64.b64encode(f"{TEST_API_KEY}:the-secret".encode()).decode()
    debug = await (await client.get("/debug?format=json")).json()
    assert [s["device_id"] for s in debug["sessions"]] == ["dev-c"]
    for device in ("dev-a", "dev-b"):
        view = await (await client.get(f"/debug/sessions/{device}?format=json")).json()
        assert view["session"] is None and view["events"] == []
    assert [e["message_id"] for e in (await (await client.get("/debug/sessions/dev-c?format=json")).json())["events"]] == ["c1"]
    metrics = await (await client.get("/metrics")).text()
    assert 'edgeproxy_delivered_items_total{endpoint="deletions",source="default",target="deletions"} 1.0' in metrics


async def test_a_device_is_forgotten_with_the_user_ids_it_carried(tmp_path, aiohttp_client, amp) -> None:
    client = await aiohttp_client(create_app(settings_for(tmp_path, amp)))
    await send_people(client)
    await until(lambda: len(amp.events) == 4, "four events")
    # The overview's form carries a CSRF token; a form posted without it (another site's) is refused.
    refused = await client.post("/debug/forget", data={"device_id": "dev-c"})
    assert refused.status == 403 and "CSRF token" in await refused.text()
    csrf = re.search(r'name="csrf" value="([0-9a-f]+)"', await (await client.get("/debug")).text()).group(1)
    report = await (await client.post("/debug/forget", data={"device_id": "dev-c", "csrf": csrf},
                                      headers={"Accept": "application/json"})).json()
    assert report["device_ids"] == ["dev-c"] and report["user_ids"] == ["user-2"] and report["sessions"] == 1
    await until(lambda: amp.deletions, "the deletion")
    assert amp.deletions[0]["user_ids"] == ["user-2"]
    page = await client.post("/debug/forget", data={"device_id": "dev-never-seen", "csrf": csrf})
    text = await page.text()
    assert "no user id is known for this device" in text and "User Look-Up" in text


async def test_the_deletion_is_retried_until_amplitude_takes_it(tmp_path, aiohttp_client, amp) -> None:
    client = await aiohttp_client(create_app(settings_for(tmp_path, amp)))
    amp.fail_next(503, endpoint="deletions", times=2)
    amp.drop_next(endpoint="deletions")
    assert (await client.post("/debug/forget", json={"user_id": "user-9"})).status == 200
    await until(lambda: amp.deletions, "the deletion after two 503s and a reset", timeout=30)
    assert len([r for r in amp.requests if r.endpoint == "deletions"]) == 4 and len(amp.deletions) == 1


async def test_a_wrong_secret_key_is_a_configuration_problem_not_a_lost_request(tmp_path, aiohttp_client, amp) -> None:
    amp.secret_keys[TEST_API_KEY] = "another-secret"
    client = await aiohttp_client(create_app(settings_for(tmp_path, amp)))
    assert (await client.post("/debug/forget", json={"user_id": "user-9"})).status == 200
    await until(lambda: [r for r in amp.requests if r.endpoint == "deletions"], "an attempt")
    await asyncio.sleep(0.2)
    debug = await (await client.get("/debug?format=json")).json()
    assert amp.deletions == [] and debug["dead_letters"] == []
    pending = {(r["target"], r["pending"]) for r in debug["by_target"]}
    assert ("deletions", 1) in pending  # kept, retried once the key is fixed


async def test_forget_needs_someone(tmp_path, aiohttp_client, amp) -> None:
    client = await aiohttp_client(create_app(settings_for(tmp_path, amp)))
    resp = await client.post("/debug/forget", json={})
    assert resp.status == 400 and "user_id or device_id" in (await resp.json())["error"]


def _item(mid: str, device: str, user: str | None) -> SpoolItem:
    return SpoolItem(mid, "httpapi", {"event_type": "x", "device_id": device, "user_id": user, "insert_id": mid},
                     None, device, user, 1_700_000_000_000, int(time.time() * 1000))


def test_the_cli_forgets_in_the_sqlite_spool_and_queues_the_deletion(tmp_path) -> None:
    data = tmp_path / "data"
    config = tmp_path / "edgeproxy.toml"
    config.write_text(f'[delivery]\ndata_dir = "{data}"\n[amplitude]\napi_key = "k"\nsecret_key = "s"\n'
                      f'[sessions]\nsigning_keys = ["{"k" * 32}"]\n')

    async def fill() -> None:
        spool = Spool(data / "spool.sqlite3")
        await spool.open()
        await spool.append([_item("p1", "dev-a", "user-1"), _item("p2", "dev-a", None), _item("q1", "dev-z", "user-2")],
                           [DeadLetter("d1", {"userId": "user-1"}, "refused", "dev-a", None, int(time.time() * 1000))])
        await spool.close()

    asyncio.run(fill())
    run = subprocess.run([sys.executable, "-m", "edgeproxy", "forget", "--config", str(config), "--user-id", "user-1"],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert "devices: dev-a" in run.stdout and "spool rows deleted: 1 dead, 2 pending" in run.stdout
    assert "Amplitude deletion queued for 1 user id(s) in: default" in run.stdout
    assert 'sessions.store is "memory"' in run.stdout
    conn = sqlite3.connect(data / "spool.sqlite3")
    rows = stored(conn, "message_id, target, item")
    assert [r[0] for r in rows][0] == "q1" and rows[1][1] == "deletions" and orjson.loads(rows[1][2]) == {"user_id": "user-1"}
    usage = subprocess.run([sys.executable, "-m", "edgeproxy", "forget", "--config", str(config)],
                           capture_output=True, text=True, timeout=60)
    assert usage.returncode == 2 and "--user-id" in usage.stderr


async def test_forget_on_redis_sessions_and_queue(tmp_path, aiohttp_client, amp) -> None:
    """Amplitude is down, so the events wait in the queue for their retry when the person is
    forgotten; once it recovers only the other person's event and the deletion arrive."""
    with redis_server(tmp_path) as url:
        amp.fail_for(4.0, 503, endpoint="httpapi")
        app = create_app(settings_for(tmp_path, amp, sessions__store=url, delivery__queue=url, delivery__retry_base=3.0))
        client = await aiohttp_client(app)
        await send_people(client)
        await until(lambda: len([r for r in amp.requests if r.endpoint == "httpapi"]) >= 1, "a refused delivery")
        report = await (await client.post("/debug/forget", json={"user_id": "user-1"})).json()
        assert report["device_ids"] == ["dev-a", "dev-b"] and report["sessions"] == 2
        assert sum(report["rows"].values()) == 3, report
        await until(lambda: amp.deletions and amp.events, "the deletion and, after the outage, c1", timeout=30)
        await asyncio.sleep(0.5)
        assert [e["insert_id"] for e in amp.events] == ["c1"]
        debug = await (await client.get("/debug?format=json")).json()
        assert [s["device_id"] for s in debug["sessions"]] == ["dev-c"]
