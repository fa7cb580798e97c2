"""The whole loop with `edgeproxy serve` as a real subprocess and the test Amplitude server.

Events are sent the way analytics.js (text/plain, Basic auth + body key, cookies kept by the
browser) and a mobile library (gzip JSON batch to /v1/b) send them; they must arrive at the
Amplitude stand-in with the right device and session ids. Also: kill -9 under load loses no
acknowledged event, and SIGTERM drains gracefully.
"""

from __future__ import annotations

import asyncio
import base64
import gzip
import math
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import pytest
import orjson
from fake_amplitude import TEST_API_KEY

API_KEY = TEST_API_KEY
WRITE_KEY = "e2e-write-key"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def edgeproxy_command() -> list[str]:
    script = Path(sys.executable).parent / "edgeproxy"
    return [str(script)] if script.exists() else [sys.executable, "-m", "edgeproxy"]


class Proxy:
    """An `edgeproxy serve` subprocess with its own config and data directory."""

    def __init__(self, tmp_path: Path, amp_url: str, **extra: str):
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.config = tmp_path / "edgeproxy.toml"
        self.log = tmp_path / "edgeproxy.log"
        sections = {
            "server": {"host": '"127.0.0.1"', "port": str(self.port), "shutdown_grace": '"5s"'},
            "segment": {"write_keys": f'["{WRITE_KEY}"]'},
            "sessions": {"secure_cookies": "false"},
            "delivery": {"data_dir": f'"{tmp_path / "data"}"', "flush_interval": '"100ms"', "retry_base": '"100ms"'},
            "amplitude": {"api_key": f'"{API_KEY}"', "secret_key": '"s"', "endpoint_url": f'"{amp_url}"'},
        }
        for dotted, value in extra.items():
            section, key = dotted.split("__")
            sections.setdefault(section, {})[key] = value
        self.config.write_text("".join(f"[{name}]\n" + "".join(f"{k} = {v}\n" for k, v in keys.items())
                                       for name, keys in sections.items()))
        self.proc: subprocess.Popen | None = None

    async def start(self) -> None:
        self.proc = subprocess.Popen([*edgeproxy_command(), "serve", "--config", str(self.config)],
                                     stdout=self.log.open("ab"), stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        async with aiohttp.ClientSession() as s:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise AssertionError(f"edgeproxy exited: {self.log.read_text()}")
                try:
                    async with s.get(self.base + "/healthz") as r:
                        if r.status == 200:
                            return
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.1)
        raise AssertionError(f"edgeproxy did not start: {self.log.read_text()}")

    def kill(self, sig: int = signal.SIGKILL) -> int:
        assert self.proc is not None
        self.proc.send_signal(sig)
        return self.proc.wait(timeout=30)

    async def terminate(self) -> int:
        """SIGTERM, waiting without blocking this loop: stand-ins on it must answer the shutdown flush."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return await asyncio.to_thread(self.proc.wait, 30)




async def wait_for(predicate, timeout=20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("condition not met in time")


def delivery_figures(name: str, acknowledged: set[str], amp, record_property) -> dict[str, int]:
    """acknowledged / delivered / lost / duplicates, printed (visible with -s) and kept as test properties.

    ``duplicates``: events sent again after Amplitude had ingested them (dropped by its
    insert_id dedupe, so never double counted); ``extra``: delivered events whose client
    never saw the 200 (the answer was cut by the crash), which the client will also resend.
    """
    delivered = {e["insert_id"] for e in amp.ingested("httpapi")}
    figures = {
        "acknowledged": len(acknowledged),
        "delivered": len(acknowledged & delivered),
        "lost": len(acknowledged - delivered),
        "duplicates": amp.duplicates,
        "extra": len(delivered - acknowledged),
    }
    print(f"\n{name}: " + ", ".join(f"{k}={v}" for k, v in figures.items()))
    for key, value in figures.items():
        record_property(f"{name}_{key}", value)
    return figures


async def steady_load(proxy: Proxy, acknowledged: set[str], prefix: str, *, workers: int = 4, batches: int = 60,
                      pause: float = 0.0) -> int:
    """Bounded load: ``workers`` clients each send ``batches`` batches of 5 events; records every 200."""
    refused = 0

    async def sender(session: aiohttp.ClientSession, worker: int) -> None:
        nonlocal refused
        for n in range(batches):
            ids = [f"{prefix}-{worker}-{n}-{i}" for i in range(5)]
            body = {"writeKey": WRITE_KEY, "batch": [
                {"type": "track", "event": "Load", "anonymousId": f"dev-{worker}-0000", "messageId": mid,
                 "context": {"library": {"name": "analytics-kotlin"}, "device": {"id": f"dev-{worker}-0000"}}}
                for mid in ids]}
            try:
                async with session.post(proxy.base + "/_e/v1/b", data=orjson.dumps(body)) as r:
                    if r.status == 200:
                        acknowledged.update(ids)
                    else:
                        refused += 1
            except aiohttp.ClientError:
                return
            if pause:
                await asyncio.sleep(pause)

    async with aiohttp.ClientSession() as session:
        await asyncio.gather(*(sender(session, w) for w in range(workers)))
    return refused


def ajs_event(mtype: str, n: int, anonymous_id: str, **extra):
    now = time.time()
    iso = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + ".000Z"
    body = {
        "type": mtype, "anonymousId": anonymous_id, "messageId": f"ajs-next-{n}-e2e",
        "timestamp": iso, "sentAt": iso, "writeKey": WRITE_KEY,
        "context": {"library": {"name": "analytics.js", "version": "next-1.84.3"},
                    "page": {"path": "/", "url": "http://shop.test/", "referrer": ""},
                    "userAgent": "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 Safari/605.1.15",
                    "locale": "en-US"},
        "properties": {"n": n},
        "integrations": {},
        "_metadata": {"bundled": ["Segment.io"], "unbundled": [], "bundledIds": []},
    }
    body.update(extra)
    return body


async def test_analytics_js_and_mobile_reach_amplitude(tmp_path, amp):
    proxy = Proxy(tmp_path, amp.base_url)
    await proxy.start()
    try:
        auth = {"Authorization": "Basic " + base64.b64encode(f"{WRITE_KEY}:".encode()).decode(),
                "Content-Type": "text/plain"}
        # A browser: cookies kept between calls (the jar must accept cookies from an IP host).
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as browser:
            page = ajs_event("page", 1, "browser-anon-0001", name="Home")
            r1 = await browser.post(proxy.base + "/_e/v1/p", data=orjson.dumps(page), headers=auth)
            assert r1.status == 200, await r1.text()
            # A week later Safari has wiped ajs_anonymous_id: the client invents a new one.
            tr = ajs_event("track", 2, "browser-anon-NEW", event="Added To Cart")
            r2 = await browser.post(proxy.base + "/_e/v1/t", data=orjson.dumps(tr), headers=auth)
            assert r2.status == 200
            session_cookie = {c.key: c.value for c in browser.cookie_jar}["analytics_session_id"]
        # A mobile library: gzip JSON batch with its own device id and 5-minute plugin session.
        batch = {"writeKey": WRITE_KEY, "sentAt": "2026-03-14T15:10:00.000Z", "batch": [
            {"type": "screen", "name": "Checkout", "anonymousId": "ios-anon-1", "messageId": "ios-1",
             "timestamp": "2026-03-14T15:09:59.000Z",
             "context": {"library": {"name": "analytics-swift", "version": "1.5"},
                         "device": {"id": "IDFV-0000-1111", "type": "ios"}, "os": {"name": "iOS", "version": "17.4"}},
             "integrations": {"Actions Amplitude": {"session_id": 1710428000000}}}]}
        async with aiohttp.ClientSession() as phone:
            r3 = await phone.post(proxy.base + "/_e/v1/b", data=gzip.compress(orjson.dumps(batch)),
                                  headers={"Content-Encoding": "gzip", "Content-Type": "application/json; charset=utf-8"})
            assert r3.status == 200
            unknown = await phone.post(proxy.base + "/_e/v1/t", data=orjson.dumps(ajs_event("track", 9, "x", event="e", writeKey="nope")))
            assert unknown.status == 401

        await wait_for(lambda: len(amp.ingested("httpapi")) == 3)
        by_id = {e["insert_id"]: e for e in amp.ingested("httpapi")}
        web_page, web_track, mobile = by_id["ajs-next-1-e2e"], by_id["ajs-next-2-e2e"], by_id["ios-1"]
        assert web_page["event_type"] == "Viewed Home"
        assert web_page["device_id"] == web_track["device_id"] == "browser-anon-0001"
        assert web_page["session_id"] == web_track["session_id"] == int(session_cookie)
        assert web_page["platform"] == "Web"
        assert mobile["device_id"] == "IDFV-0000-1111" and mobile["session_id"] == 1710428000000
        assert mobile["event_type"] == "Viewed Checkout" and mobile["platform"] == "iOS"
    finally:
        assert proxy.kill(signal.SIGTERM) == 0, proxy.log.read_text()


@pytest.mark.parametrize("durability", ["power_loss", "process_crash"])
async def test_kill_9_under_load_loses_no_acknowledged_event(tmp_path, amp, record_property, durability):
    """Both durability settings keep every acknowledged event through kill -9 (they differ on power loss)."""
    proxy = Proxy(tmp_path, amp.base_url, delivery__durability=f'"{durability}"')
    await proxy.start()
    acknowledged: set[str] = set()
    amp.set_delay(0.2)  # slow Amplitude: events pile up in the spool when the process dies

    async def killer() -> None:
        await wait_for(lambda: len(acknowledged) >= 300, timeout=60)
        proxy.kill(signal.SIGKILL)

    # Bounded: 4 clients x 60 batches x 5 events; the kill comes in the middle.
    await asyncio.gather(killer(), steady_load(proxy, acknowledged, "crash"))
    assert len(acknowledged) >= 300
    amp.set_delay(0)
    await proxy.start()  # same data directory: the spool is recovered
    try:
        try:
            await wait_for(lambda: acknowledged <= {e["insert_id"] for e in amp.ingested("httpapi")}, timeout=60)
        finally:
            figures = delivery_figures("kill_9", acknowledged, amp, record_property)
        delivered = [e["insert_id"] for e in amp.ingested("httpapi")]
        assert len(delivered) == len(set(delivered)), "the stand-in dedupes on insert_id like Amplitude"
        assert figures["lost"] == 0 and figures["delivered"] == figures["acknowledged"]
    finally:
        proxy.kill(signal.SIGTERM)


async def test_an_amplitude_outage_loses_nothing_and_is_not_hammered(tmp_path, amp, record_property):
    """Amplitude answers 503 for 4 s under steady load, then recovers: every 200 arrives, once,
    and the outage saw a number of requests bounded by the backoff, not one per flush."""
    outage_s, retry_base = 4.0, 0.1  # retry_base matches the Proxy's "100ms"
    proxy = Proxy(tmp_path, amp.base_url)
    await proxy.start()
    acknowledged: set[str] = set()
    try:
        amp.fail_for(outage_s, status=503)
        # Bounded: 4 clients x 40 batches x 5 events, one batch per client every 50 ms (~3 s).
        refused = await steady_load(proxy, acknowledged, "outage", batches=40, pause=0.05)
        assert refused == 0 and len(acknowledged) == 800  # the outage is Amplitude's, not the clients'
        await wait_for(lambda: acknowledged <= {e["insert_id"] for e in amp.ingested("httpapi")}, timeout=60)
    finally:
        figures = delivery_figures("outage", acknowledged, amp, record_property)
        proxy.kill(signal.SIGTERM)
    assert figures["lost"] == 0 and figures["duplicates"] == 0  # 503: nothing was ingested, nothing resent twice
    failed = [r for r in amp.requests if r.status == 503]
    # Retry k waits at least retry_base * 2^(k-1) / 2 (equal jitter), so an outage of D seconds
    # holds at most 1 + log2(2D / retry_base + 1) requests. One per flush (100 ms) would be ~40.
    bound = 1 + math.floor(math.log2(2 * outage_s / retry_base + 1))
    print(f"outage: {len(failed)} requests answered 503 in {outage_s:g} s (bound {bound})")
    record_property("outage_requests_during", len(failed))
    assert 1 <= len(failed) <= bound, [(r.status, r.at) for r in amp.requests]


async def test_sigterm_flushes_what_is_waiting_and_says_so(tmp_path, amp):
    # A long flush interval: the 10 events wait for it, so only the shutdown flush sends them.
    proxy = Proxy(tmp_path, amp.base_url, delivery__flush_interval='"60s"', server__shutdown_grace='"10s"')
    await proxy.start()
    async with aiohttp.ClientSession() as s:
        body = {"writeKey": WRITE_KEY, "batch": [ajs_event("track", i, "flush", event="Waiting") for i in range(10)]}
        assert (await s.post(proxy.base + "/_e/v1/b", data=orjson.dumps(body))).status == 200
    await asyncio.sleep(0.3)
    assert amp.ingested("httpapi") == []
    assert await proxy.terminate() == 0
    assert len(amp.ingested("httpapi")) == 10
    said = proxy.log.read_text()
    assert ("edgeproxy stopped: delivered 10 items while stopping; the spool keeps 0 undelivered (0 of them "
            "retrying) and 0 dead letters for the next start; the memory session store is not kept (1 live "
            "sessions; visitors continue them from their cookies)") in said, said


async def test_sigterm_keeps_undelivered_events_for_the_next_start(tmp_path, amp):
    proxy = Proxy(tmp_path, amp.base_url, server__shutdown_grace='"1s"')
    await proxy.start()
    amp.fail_next(503, times=1000)  # Amplitude is down: nothing can be flushed
    async with aiohttp.ClientSession() as s:
        body = {"writeKey": WRITE_KEY, "batch": [
            {"type": "track", "event": "Held", "userId": "user-00001", "messageId": f"held-{i}",
             "context": {"library": {"name": "analytics-node"}}} for i in range(10)]}
        assert (await s.post(proxy.base + "/_e/v1/b", data=orjson.dumps(body))).status == 200
    assert proxy.kill(signal.SIGTERM) == 0
    assert amp.ingested("httpapi") == []
    said = proxy.log.read_text()
    assert "edgeproxy stopping: tracking calls get 503 from now" in said, said
    assert re.search(r"edgeproxy stopped: delivered 0 items while stopping; the spool keeps 10 undelivered "
                     r"\(\d+ of them retrying\) and 0 dead letters for the next start; the memory session store "
                     r"is not kept \(0 live sessions; visitors continue them from their cookies\)", said), said
    amp.reset()  # Amplitude is healthy again (nothing was ingested, so no record is lost)
    report = subprocess.run([*edgeproxy_command(), "spool", "--config", str(proxy.config)],
                            capture_output=True, text=True, timeout=60)
    assert report.returncode == 0, report.stderr
    assert orjson.loads(report.stdout)["depth"] == 10
    await proxy.start()
    try:
        await wait_for(lambda: len(amp.ingested("httpapi")) == 10, timeout=30)
    finally:
        proxy.kill(signal.SIGTERM)
