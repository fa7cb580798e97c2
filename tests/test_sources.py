"""Many sources in one edge, and the relay through the real app: each write key reaches its own
Amplitude project and Segment relay, batches never mix, and the operator's tools (config
check, ``map``, ``spool``, ``replay``, /debug) work per source.
"""

from __future__ import annotations

import asyncio
import base64
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest
from fake_amplitude import FakeAmplitude
from fake_segment import FakeSegment
from test_ingest import track

from edgeproxy.app import create_app
from edgeproxy.config import ConfigError, load_settings
from edgeproxy.delivery.spool import Spool, SpoolItem

KEY_PROD, KEY_STAGING = "amp-key-prod", "amp-key-staging"


def config(tmp_path: Path, amp: str, seg: str, extra: str = "") -> Path:
    """Two sources: the flat sections (``default``, write key wk) and ``staging`` (wk-staging)."""
    path = tmp_path / "edgeproxy.toml"
    path.write_text(f"""
[sessions]
secure_cookies = false
signing_keys = ["{'k' * 32}"]
[delivery]
data_dir = "{tmp_path / 'data'}"
flush_interval = "50ms"
retry_base = "50ms"
[segment]
write_keys = ["wk"]
relay_url = "{seg}"
[amplitude]
api_key = "{KEY_PROD}"
secret_key = "s"
endpoint_url = "{amp}"

[[sources]]
name = "staging"
write_keys = ["wk-staging", "wk-staging-2"]
[sources.amplitude]
api_key = "{KEY_STAGING}"
secret_key = "s2"
endpoint_url = "{amp}"
[sources.segment]
relay_url = "{seg}"
relay_write_key = "wk-staging-central"
{extra}
""")
    return path


@pytest.fixture
async def amps() -> FakeAmplitude:
    fake = FakeAmplitude(api_keys={KEY_PROD, KEY_STAGING})
    await fake.start()
    yield fake
    await fake.stop()


async def until(check, what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def post(client, body: dict, status: int = 200) -> dict:
    resp = await client.post("/_e/v1/t", data=orjson.dumps(body), headers={"Content-Type": "text/plain"})
    assert resp.status == status, await resp.text()
    return await resp.json()


async def test_relay_and_amplitude_get_the_same_session_and_the_clients_message(
        tmp_path, aiohttp_client, amps: FakeAmplitude, fake_segment: FakeSegment) -> None:
    client = await aiohttp_client(create_app(load_settings(config(tmp_path, amps.base_url, fake_segment.base_url), env={})))
    sent = track(messageId="same-1", userId="user-7", integrations={"Mixpanel": False},
                 context={"library": {"name": "analytics.js", "version": "next-1.84.3"}, "page": {"path": "/pricing"}})
    await post(client, sent)
    await until(lambda: fake_segment.messages() and amps.events, "both deliveries")
    [relayed] = fake_segment.messages("wk")
    [event] = amps.events
    assert relayed["integrations"]["Actions Amplitude"]["session_id"] == event["session_id"] > 0
    assert relayed["integrations"]["Mixpanel"] is False
    assert {k: relayed[k] for k in ("messageId", "anonymousId", "userId", "event", "properties")} == \
        {k: sent[k] for k in ("messageId", "anonymousId", "userId", "event", "properties")}
    assert relayed["context"]["page"] == {"path": "/pricing"} and relayed["context"]["ip"] == "127.0.0.1"
    assert relayed["originalTimestamp"] == sent["timestamp"]
    assert event["insert_id"] == "same-1"
    [request] = fake_segment.requests
    assert request.headers["Authorization"] == "Basic " + base64.b64encode(b"wk:").decode()


async def test_each_source_reaches_its_own_project_and_relay_without_mixing(
        tmp_path, aiohttp_client, amps: FakeAmplitude, fake_segment: FakeSegment) -> None:
    app = create_app(load_settings(config(tmp_path, amps.base_url, fake_segment.base_url), env={}))
    client = await aiohttp_client(app)
    for i in range(3):
        await post(client, track(messageId=f"prod-{i}", writeKey="wk"))
        await post(client, track(messageId=f"stg-{i}", writeKey="wk-staging" if i % 2 else "wk-staging-2"))
    await until(lambda: len(amps.events) == 6 and len(fake_segment.messages()) == 6, "six of each")
    by_key: dict[str, set[str]] = {}
    for request in amps.requests:
        body = orjson.loads(request.raw)
        by_key.setdefault(body["api_key"], set()).update(e["insert_id"] for e in body["events"])
    assert by_key == {KEY_PROD: {"prod-0", "prod-1", "prod-2"}, KEY_STAGING: {"stg-0", "stg-1", "stg-2"}}
    assert {m["messageId"] for m in fake_segment.messages("wk")} == {"prod-0", "prod-1", "prod-2"}
    assert {m["messageId"] for m in fake_segment.messages("wk-staging-central")} == {"stg-0", "stg-1", "stg-2"}
    metrics = await (await client.get("/metrics")).text()
    assert 'edgeproxy_events_accepted_total{source="staging",type="track"} 3.0' in metrics
    assert 'edgeproxy_delivered_items_total{endpoint="batch",source="staging",target="segment"} 3.0' in metrics
    assert 'edgeproxy_delivered_items_total{endpoint="httpapi",source="default",target="amplitude"} 3.0' in metrics
    # The settings route serves every source's keys, and only those.
    assert (await client.get("/_e/v1/projects/wk-staging/settings")).status == 200
    assert (await client.get("/_e/v1/projects/wk-other/settings")).status == 404


async def test_a_key_of_no_source_is_refused(tmp_path, aiohttp_client, amps, fake_segment) -> None:
    client = await aiohttp_client(create_app(load_settings(config(tmp_path, amps.base_url, fake_segment.base_url), env={})))
    resp = await client.post("/_e/v1/t", data=orjson.dumps(track(writeKey="wk-nobody")))
    assert resp.status == 401 and "unknown write key" in (await resp.text())


async def test_amplitude_disabled_delivers_through_the_relay_only(
        tmp_path, aiohttp_client, amps: FakeAmplitude, fake_segment: FakeSegment) -> None:
    path = config(tmp_path, amps.base_url, fake_segment.base_url)
    path.write_text(path.read_text().replace('[amplitude]\n', '[amplitude]\nenabled = false\n', 1))
    client = await aiohttp_client(create_app(load_settings(path, env={})))
    await post(client, track(messageId="relay-only"))
    await post(client, track(messageId="staging-both", writeKey="wk-staging"))
    await until(lambda: len(fake_segment.messages()) == 2 and len(amps.events) == 1, "the relay and staging's Amplitude")
    assert [e["insert_id"] for e in amps.events] == ["staging-both"]
    assert fake_segment.messages("wk")[0]["integrations"]["Actions Amplitude"]["session_id"] > 0
    spool = await (await client.get("/debug?format=json")).json()
    assert {(r["target"], r["source"]) for r in spool["recent_responses"]} == \
        {("segment", "default"), ("segment", "staging"), ("amplitude", "staging")}


async def test_debug_shows_target_and_source_and_filters_by_source(
        tmp_path, aiohttp_client, amps: FakeAmplitude, fake_segment: FakeSegment) -> None:
    fake_segment.fail_for(600, status=503)  # everything relayed waits, so it shows as retrying
    client = await aiohttp_client(create_app(load_settings(config(tmp_path, amps.base_url, fake_segment.base_url), env={})))
    await post(client, track(messageId="d-prod"))
    await post(client, track(messageId="d-stg", writeKey="wk-staging"))
    await until(lambda: len(amps.events) == 2, "Amplitude delivery")
    deadline = time.monotonic() + 20
    while True:
        data = await (await client.get("/debug?format=json")).json()
        if len(data["retrying"]) == 2 or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.05)
    assert {(r["message_id"], r["target"], r["source"]) for r in data["retrying"]} == \
        {("d-prod", "segment", "default"), ("d-stg", "segment", "staging")}
    staging = await (await client.get("/debug?format=json&source=staging")).json()
    assert [r["message_id"] for r in staging["retrying"]] == ["d-stg"]
    assert {r["source"] for r in staging["recent_responses"]} == {"staging"}
    assert {(r["target"], r["source"]) for r in staging["by_target"]} <= {("segment", "staging"), ("amplitude", "staging")}
    page = await (await client.get("/debug?source=staging")).text()
    assert '<option value="staging" selected>' in page and "d-stg" in page and "d-prod" not in page


# ---------------------------------------------------------------------------------------------
# Configuration.


def test_sources_parse_with_their_own_sections(tmp_path) -> None:
    s = load_settings(config(tmp_path, "http://127.0.0.1:9", "http://127.0.0.1:9"), env={})
    [staging] = s.sources
    assert staging.name == "staging" and staging.write_keys == ["wk-staging", "wk-staging-2"]
    assert staging.amplitude.api_key == KEY_STAGING and staging.segment.relay_write_key == "wk-staging-central"
    from edgeproxy.sources import SourceTable

    table = SourceTable(s)
    assert table.for_write_key("wk-staging-2").name == "staging" and table.for_write_key("wk").name == "default"
    assert table.for_write_key("wk-nobody") is None


@pytest.mark.parametrize("extra, problem", [
    ('[[sources]]\nname = "prod2"\nwrite_keys = ["wk-staging"]',
     "sources[1].write_keys[0]: write key 'wk-staging' is also in sources[0].write_keys[0]"),
    ('[[sources]]\nname = "prod2"\nwrite_keys = ["wk"]', "write key 'wk' is also in segment.write_keys"),
    ('[[sources]]\nname = "staging"\nwrite_keys = ["wk-3"]', "sources[1].name: 'staging' is also the name of sources[0]"),
    ('[[sources]]\nname = "default"\nwrite_keys = ["wk-3"]', "sources[1].name: \"default\" is the flat"),
    ('[[sources]]\nname = "x y"\nwrite_keys = ["wk-3"]', "sources[1].name: must be 1-64 letters"),
    ('[[sources]]\nname = "empty"', "sources[1].write_keys: a source needs at least one write key"),
    ('[[sources]]\nname = "typo"\nwrite_key = ["wk-3"]', "sources[1].write_key: unknown key"),
    ('[[sources]]\nname = "z"\nwrite_keys = ["wk-3"]\n[sources.segment]\nrelay_url = "api.segment.io"',
     "sources[1].segment.relay_url: must be an http(s) URL"),
    ('[[sources]]\nname = "z"\nwrite_keys = ["wk-3"]\n[sources.segment]\nrelay_url = "https://api.segment.io/v1/batch"',
     "sources[1].segment.relay_url: give the API's base URL without /v1"),
    ('[[sources]]\nname = "z"\nwrite_keys = ["wk-3"]\n[sources.segment]\nwrite_keys = ["a"]',
     "sources[1].segment.write_keys: unknown key (known: relay_url, relay_write_key)"),
    ('[[sources]]\nname = "z"\nwrite_keys = ["wk-3"]\n[sources.amplitude]\nregion = "mars"', "sources[1].amplitude.region"),
])
def test_check_config_names_each_source_problem(tmp_path, extra, problem) -> None:
    with pytest.raises(ConfigError) as err:
        load_settings(config(tmp_path, "http://127.0.0.1:9", "http://127.0.0.1:9", extra), env={})
    assert any(problem in p for p in err.value.problems), err.value.problems


def test_check_config_cli_reports_an_overlap(tmp_path) -> None:
    path = config(tmp_path, "http://127.0.0.1:9", "http://127.0.0.1:9",
                  '[[sources]]\nname = "prod2"\nwrite_keys = ["wk-staging"]')
    result = run("check-config", "--config", str(path), cwd=tmp_path)
    assert result.returncode == 1 and "also in sources[0].write_keys[0]" in result.stdout


# ---------------------------------------------------------------------------------------------
# The command line per source and target.


def run(*args: str, cwd: Path, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edgeproxy", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=60, input=stdin)


def test_map_uses_the_named_sources_amplitude_settings(tmp_path) -> None:
    path = config(tmp_path, "http://127.0.0.1:9", "http://127.0.0.1:9")
    line = orjson.dumps(track(userId="user-1")).decode() + "\n"
    default = orjson.loads(run("map", "--config", str(path), cwd=tmp_path, stdin=line).stdout)
    staging = orjson.loads(run("map", "--config", str(path), "--source", "staging", cwd=tmp_path, stdin=line).stdout)
    assert default["requests"][0]["body"]["api_key"] == KEY_PROD
    assert staging["requests"][0]["body"]["api_key"] == KEY_STAGING
    unknown = run("map", "--config", str(path), "--source", "nope", cwd=tmp_path, stdin=line)
    assert unknown.returncode == 2 and "no [[sources]] entry named 'nope' (known: default, staging)" in unknown.stderr


async def dead_relay_and_amplitude_letters(tmp_path: Path, path: Path) -> None:
    """One dead letter per (target, source): the relay's and Amplitude's, default and staging."""
    spool = Spool(tmp_path / "data")
    await spool.open()
    items = [SpoolItem(f"{t}-{src}", "batch" if t == "segment" else "httpapi", {"messageId": f"{t}-{src}"},
                       {"write_key": "wk"} if t == "segment" else None, "d-1", None, None, 1, target=t, source=src)
             for t in ("segment", "amplitude") for src in ("default", "staging")]
    await spool.append(items)
    claimed = []
    for group in await spool.due_groups():
        claimed += await spool.claim(group.group_key, limit=10, max_bytes=10**6)
    await spool.dead_letter({c.row_id: ("rejected", "Segment: no") for c in claimed})
    await spool.close()


async def test_spool_shows_by_target_and_replay_selects_target_and_source(tmp_path) -> None:
    path = config(tmp_path, "http://127.0.0.1:9", "http://127.0.0.1:9")
    await dead_relay_and_amplitude_letters(tmp_path, path)
    report = orjson.loads(run("spool", "--config", str(path), cwd=tmp_path).stdout)
    assert {(r["target"], r["source"], r["dead"]) for r in report["by_target"]} == {
        ("segment", "default", 1), ("segment", "staging", 1), ("amplitude", "default", 1), ("amplitude", "staging", 1)}
    assert {d["target"] for d in report["dead_letters"]} == {"segment", "amplitude"}

    one = run("replay", "--config", str(path), "--target", "segment", "--source", "staging", "--endpoint", "batch",
              cwd=tmp_path)
    assert one.returncode == 0 and one.stdout.startswith("1 dead letter"), one.stderr
    report = orjson.loads(run("spool", "--config", str(path), cwd=tmp_path).stdout)
    assert {(r["target"], r["source"]) for r in report["by_target"] if r["pending"]} == {("segment", "staging")}
    rest = run("replay", "--config", str(path), "--target", "amplitude", cwd=tmp_path)
    assert rest.stdout.startswith("2 dead letter")

    bad = run("replay", "--config", str(path), "--source", "prod", cwd=tmp_path)
    assert bad.returncode == 2 and "--source must be one of default, staging" in bad.stderr
    bad = run("replay", "--config", str(path), "--target", "mixpanel", cwd=tmp_path)
    assert bad.returncode == 2 and "invalid choice: 'mixpanel'" in bad.stderr


def test_a_sources_secrets_can_come_from_the_environment(tmp_path) -> None:
    path = config(tmp_path, "http://127.0.0.1:9", "http://127.0.0.1:9",
                  '[[sources]]\nname = "site-b.eu"\nwrite_keys = ["wk-b"]')
    env = {"EDGEPROXY_SOURCES__STAGING__AMPLITUDE__API_KEY": "from-env",
           "EDGEPROXY_SOURCES__SITE_B_EU__SEGMENT__RELAY_WRITE_KEY": "wk-b-central",
           "EDGEPROXY_SOURCES__SITE_B_EU__SEGMENT__RELAY_URL": "https://api.segment.io"}
    staging, site_b = load_settings(path, env=env).sources
    assert staging.amplitude.api_key == "from-env"
    assert (site_b.segment.relay_url, site_b.segment.relay_write_key) == ("https://api.segment.io", "wk-b-central")


@pytest.mark.parametrize("env_key, problem", [
    ("EDGEPROXY_SOURCES__PROD__AMPLITUDE__API_KEY", "no [[sources]] entry whose name reads 'PROD' here (known: STAGING)"),
    ("EDGEPROXY_SOURCES__STAGING__SEGMENT__WRITE_KEYS", "expected EDGEPROXY_SOURCES__STAGING__AMPLITUDE__<key>"),
    ("EDGEPROXY_SOURCES__STAGING__AMPLITUDE__API_KEYS", "expected EDGEPROXY_SOURCES__STAGING__AMPLITUDE__<key>"),
])
def test_a_wrong_source_environment_variable_is_named(tmp_path, env_key, problem) -> None:
    with pytest.raises(ConfigError) as err:
        load_settings(config(tmp_path, "http://127.0.0.1:9", "http://127.0.0.1:9"), env={env_key: "x"})
    assert any(problem in p for p in err.value.problems), err.value.problems


def test_redacted_settings_hide_every_sources_secrets(tmp_path) -> None:
    from edgeproxy.config import redacted

    out = redacted(load_settings(config(tmp_path, "http://127.0.0.1:9", "http://127.0.0.1:9"), env={}))
    [staging] = out["sources"]
    assert staging["amplitude"]["api_key"] == staging["amplitude"]["secret_key"] == "***"
    assert staging["segment"]["relay_write_key"] == "***" and staging["segment"]["relay_url"] == "http://127.0.0.1:9"
    assert KEY_STAGING not in orjson.dumps(out).decode() and "wk-staging-central" not in orjson.dumps(out).decode()


async def test_mobile_and_server_messages_are_relayed_as_they_came(
        tmp_path, aiohttp_client, amps: FakeAmplitude, fake_segment: FakeSegment) -> None:
    from test_ingest import mobile_batch

    client = await aiohttp_client(create_app(load_settings(config(tmp_path, amps.base_url, fake_segment.base_url), env={})))
    resp = await client.post("/_e/v1/batch", data=orjson.dumps(mobile_batch(2)))
    assert resp.status == 200
    server = track(messageId="srv-1", userId="user-9", context={"library": {"name": "analytics-python", "version": "2.3"}})
    del server["anonymousId"]
    await post(client, server)
    await until(lambda: len(fake_segment.messages()) == 3, "three relayed")
    mobile = [m for m in fake_segment.messages() if m["messageId"].startswith("m-")]
    sent = mobile_batch(2)["batch"]
    for got, want in zip(mobile, sent):
        assert got["integrations"] == want["integrations"]  # the app's own session id, kept
        assert got["context"]["device"] == want["context"]["device"] and got["anonymousId"] == want["anonymousId"]
        assert got["originalTimestamp"] == want["timestamp"]
    [srv] = [m for m in fake_segment.messages() if m["messageId"] == "srv-1"]
    assert srv["messageId"] == "srv-1" and "ip" not in srv.get("context", {})  # a server's IP is not the user's
    assert "anonymousId" not in srv and srv["userId"] == "user-9"
