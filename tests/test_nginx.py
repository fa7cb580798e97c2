"""nginx/edgeproxy.conf through a real nginx terminating TLS, in front of edgeproxy processes
that share one real Redis (sessions and the delivery queue).

What a production user relies on: TLS with the site's certificate (here a self-signed one the
test makes); the site goes straight to the origin; the real client IP (not nginx's, not a
spoofed header) becomes the event's ip; a device's concurrent events make one session whichever
process takes them; a process killed with kill -9 under load loses no acknowledged event.
"""

from __future__ import annotations

import asyncio
import base64
import re
import shutil
import ssl
import subprocess
import time
from collections import defaultdict
from pathlib import Path

import aiohttp
import orjson
import pytest
from aiohttp import web
from redis_server import redis_server
from test_e2e import WRITE_KEY, Proxy, ajs_event, free_port, wait_for

ROOT = Path(__file__).resolve().parent.parent
NGINX = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
OPENSSL = shutil.which("openssl")

pytestmark = [
    pytest.mark.skipif(NGINX is None, reason="nginx is not installed (make test installs it)"),
    pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server is not installed (make test installs it)"),
    pytest.mark.skipif(OPENSSL is None, reason="openssl is not installed: cannot make the test certificate"),
]

AUTH = {"Authorization": "Basic " + base64.b64encode(f"{WRITE_KEY}:".encode()).decode()}
CLIENT_IP = "127.0.0.2"  # the "visitor" connects from here; nginx itself is 127.0.0.1


@pytest.fixture
def redis_url(tmp_path):
    with redis_server(tmp_path) as url:
        yield url


def self_signed_certificate(tmp_path: Path) -> tuple[Path, Path]:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run([OPENSSL, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-keyout", str(key),
                    "-out", str(cert), "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
                   check=True, capture_output=True, timeout=60)
    return cert, key


def nginx_conf(tmp_path: Path, port: int, backends: list[int], origin_port: int, cert: Path, key: Path) -> Path:
    """nginx/edgeproxy.conf with its marked lines adjusted, inside a minimal top-level config."""
    site = (ROOT / "nginx" / "edgeproxy.conf").read_text()
    servers = "".join(f"    server 127.0.0.1:{p};\n" for p in backends)
    site, n1 = re.subn(r"(upstream edgeproxy(?:_debug)? \{\n(?:    hash .*\n)?)(?:    server .*\n)+",
                       lambda m: m.group(1) + servers, site)
    site, n2 = re.subn(r"server 127\.0\.0\.1:3000;", f"server 127.0.0.1:{origin_port};", site)
    site, n3 = re.subn(r"listen 443 ssl", f"listen 127.0.0.1:{port} ssl", site)
    site, n4 = re.subn(r"ssl_certificate +\S+;", f"ssl_certificate {cert};", site)
    site, n5 = re.subn(r"ssl_certificate_key +\S+;", f"ssl_certificate_key {key};", site)
    site, n6 = re.subn(r"include /etc/nginx/edgeproxy-locations\.conf;",
                       f"include {ROOT / 'nginx' / 'edgeproxy-locations.conf'};", site)
    assert (n1, n2, n3, n4, n5, n6) == (2, 1, 1, 1, 1, 1), "nginx/edgeproxy.conf no longer has the marked lines"
    conf = tmp_path / "nginx.conf"
    conf.write_text(f"""
worker_processes 1;
pid {tmp_path}/nginx.pid;
error_log {tmp_path}/nginx-error.log;
daemon off;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {tmp_path}/body;
    proxy_temp_path {tmp_path}/proxy;
    fastcgi_temp_path {tmp_path}/fastcgi;
    uwsgi_temp_path {tmp_path}/uwsgi;
    scgi_temp_path {tmp_path}/scgi;
{site}
}}
""")
    return conf


class Cluster:
    """An origin, N edgeproxy processes sharing Redis, and nginx with TLS in front of them."""

    def __init__(self, tmp_path: Path, amp_url: str, redis_url: str, processes: int, **extra: str):
        self.tmp_path = tmp_path
        common = dict(server__trusted_proxies='["127.0.0.1"]', server__debug_path='"/_e/debug"',
                      sessions__store=f'"{redis_url}"', sessions__signing_keys='["nginx-test-signing-key-0123456789"]',
                      delivery__queue=f'"{redis_url}"', delivery__claim_idle='"1s"', **extra)
        self.procs = []
        for i in range(processes):
            d = tmp_path / f"edgeproxy-{i}"
            d.mkdir()
            self.procs.append(Proxy(d, amp_url, **common))
        self.cert, self.key = self_signed_certificate(tmp_path)
        self.port = free_port()
        self.base = f"https://127.0.0.1:{self.port}"
        self.tls = ssl.create_default_context(cafile=str(self.cert))
        self.origin_hits: list[str] = []
        self.nginx: subprocess.Popen | None = None
        self.origin: web.AppRunner | None = None

    async def __aenter__(self) -> "Cluster":
        async def page(request: web.Request) -> web.Response:
            self.origin_hits.append(request.path)
            return web.Response(text="origin page\n")

        app = web.Application()
        app.router.add_get("/{tail:.*}", page)
        self.origin = web.AppRunner(app)
        await self.origin.setup()
        origin_port = free_port()
        await web.TCPSite(self.origin, "127.0.0.1", origin_port).start()
        await asyncio.gather(*(p.start() for p in self.procs))
        conf = nginx_conf(self.tmp_path, self.port, [p.port for p in self.procs], origin_port, self.cert, self.key)
        self.nginx = subprocess.Popen([NGINX, "-c", str(conf), "-p", str(self.tmp_path)], stderr=subprocess.PIPE)
        async with aiohttp.ClientSession() as probe:
            for _ in range(200):  # bounded: ~10 s
                try:
                    async with probe.get(self.base + "/", ssl=self.tls) as r:
                        if r.status == 200:
                            return self
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.05)
        raise AssertionError(f"nginx did not start: {(self.tmp_path / 'nginx-error.log').read_text()}")

    async def __aexit__(self, *exc) -> None:
        if self.nginx is not None:
            self.nginx.terminate()
            self.nginx.wait(timeout=10)
        for p in self.procs:
            if p.proc is not None and p.proc.poll() is None:
                p.kill(15)
        if self.origin is not None:
            await self.origin.cleanup()

    def visitor(self, **kwargs) -> aiohttp.ClientSession:
        """A client connecting from CLIENT_IP, verifying nginx's certificate."""
        connector = aiohttp.TCPConnector(local_addr=(CLIENT_IP, 0), ssl=self.tls, limit=64, **kwargs)
        return aiohttp.ClientSession(connector=connector, cookie_jar=aiohttp.CookieJar(unsafe=True))


async def test_tls_at_nginx_origin_direct_real_ip_one_session(tmp_path, amp, redis_url):
    async with Cluster(tmp_path, amp.base_url, redis_url, 2) as cluster:
        async with aiohttp.ClientSession() as untrusting:  # the system trust store does not know the test CA
            with pytest.raises(aiohttp.ClientConnectorCertificateError):
                await untrusting.get(cluster.base + "/")
        # A spoofed header from the client must not become the event's IP.
        headers = {**AUTH, "X-Forwarded-For": "6.6.6.6"}
        async with cluster.visitor(force_close=True) as browser:
            for n in range(6):  # round-robin: both processes answer
                body = ajs_event("track", n, "nginx-anon-0001", event=f"Step {n}")
                r = await browser.post(cluster.base + "/_e/v1/t", data=orjson.dumps(body), headers=headers)
                assert r.status == 200, await r.text()
            site = await browser.get(cluster.base + "/shop/cart")
            assert await site.text() == "origin page\n"
            assert "Set-Cookie" not in site.headers  # straight from the origin, not through edgeproxy
        assert cluster.origin_hits[-1] == "/shop/cart"
        await wait_for(lambda: len(amp.ingested("httpapi")) == 6, timeout=30)
        events = amp.ingested("httpapi")
        assert {e["ip"] for e in events} == {CLIENT_IP}
        assert {e["device_id"] for e in events} == {"nginx-anon-0001"}
        assert len({e["session_id"] for e in events}) == 1, "one session across both processes"

        async with aiohttp.ClientSession() as operator:
            # Through nginx the operator's address is forwarded: 127.0.0.1 is loopback, so the
            # token-less view answers.
            r = await operator.get(cluster.base + "/_e/debug?format=json", ssl=cluster.tls)
            assert r.status == 200
            data = await r.json()
            assert [s["device_id"] for s in data["sessions"]] == ["nginx-anon-0001"]
            assert data["sessions"][0]["event_count"] == 6
            assert data["spool"]["delivered"] == 6  # the shared queue, whichever process answered


async def test_concurrent_bursts_one_session_each_and_kill_9_loses_no_acknowledged_event(tmp_path, amp, redis_url):
    timeout_s = 3.0
    devices = [f"burst-device-{i:03d}" for i in range(30)]
    per_burst = 8  # events per device per burst, all sent at once
    async with Cluster(tmp_path, amp.base_url, redis_url, 3, sessions__timeout=f'"{timeout_s}s"') as cluster:
        acked: list[str] = []
        refused = 0

        async def send(browser: aiohttp.ClientSession, device: str, name: str) -> None:
            nonlocal refused
            body = ajs_event("track", 0, device, event=name, messageId=f"{device}-{name}")
            try:
                async with browser.post(cluster.base + "/_e/v1/t", data=orjson.dumps(body), headers=AUTH) as r:
                    if r.status == 200:
                        acked.append(body["messageId"])
                    else:
                        refused += 1
            except aiohttp.ClientError:
                refused += 1

        # Two bursts, a session timeout apart: each device's burst must be one session, its own.
        async with cluster.visitor() as browser:  # no cookies are sent: the store alone decides
            browser.cookie_jar.clear()
            for burst in range(2):
                if burst:
                    await asyncio.sleep(timeout_s + 1.0)
                await asyncio.gather(*(send(browser, d, f"b{burst}-e{k}") for d in devices for k in range(per_burst)))
                browser.cookie_jar.clear()
        sent = 2 * len(devices) * per_burst
        assert len(acked) == sent and refused == 0
        await wait_for(lambda: len(amp.ingested("httpapi")) >= sent, timeout=60)
        events = amp.ingested("httpapi")
        per_device_burst: dict[tuple[str, str], set[int]] = defaultdict(set)
        for e in events:
            per_device_burst[(e["device_id"], e["event_type"][:2])].add(e["session_id"])
        observed = {(e["device_id"], e["session_id"]) for e in events}
        print(f"\nsession consistency: {len(cluster.procs)} processes behind nginx, {len(devices)} devices, "
              f"{sent} events in 2 bursts of {per_burst} concurrent events per device; "
              f"sessions expected {2 * len(devices)}, observed {len(observed)}; "
              f"(device, burst) pairs with more than one session id: "
              f"{sum(1 for ids in per_device_burst.values() if len(ids) > 1)}")
        assert all(len(ids) == 1 for ids in per_device_burst.values())
        assert len(observed) == 2 * len(devices)
        assert {e["ip"] for e in events} == {CLIENT_IP}

        # Load from many clients; one process is killed with kill -9 in the middle of it.
        acked.clear()
        refused = 0
        stop_at = time.monotonic() + 20  # bounded in time as well as in count

        async def client(c: int) -> None:
            async with cluster.visitor(force_close=True) as browser:
                for n in range(150):
                    if time.monotonic() > stop_at:
                        return
                    await send(browser, f"load-device-{c:02d}", f"load-{n}")

        load = asyncio.gather(*(client(c) for c in range(16)))
        await wait_for(lambda: len(acked) >= 600, timeout=30)
        victim = cluster.procs[0]
        victim.kill()  # SIGKILL, with requests and deliveries in flight
        acked_at_kill = len(acked)
        await load
        expected = set(acked)
        assert len(expected) == len(acked) > acked_at_kill
        await wait_for(lambda: expected <= {e["insert_id"] for e in amp.ingested("httpapi")}, timeout=60)
        delivered = {e["insert_id"] for e in amp.ingested("httpapi")} & expected
        print(f"kill -9: {len(acked)} events acknowledged (200), {acked_at_kill} before the kill, {refused} refused "
              f"or failed (not acknowledged); acknowledged and delivered to Amplitude: {len(delivered)}; "
              f"lost: {len(expected - delivered)}")
        assert delivered == expected


async def sse_messages(response: aiohttp.ClientResponse, deadline: float):
    """The `data:` messages of a Server-Sent Events response as they arrive, until ``deadline``."""
    data: list[bytes] = []
    while time.monotonic() < deadline:
        line = await asyncio.wait_for(response.content.readline(), max(0.1, deadline - time.monotonic()))
        if not line:
            return
        if line.startswith(b"data: "):
            data.append(line[6:].rstrip(b"\n"))
        elif line == b"\n" and data:
            yield orjson.loads(b"\n".join(data))
            data = []


async def test_the_cockpit_behind_nginx_one_process_per_operator_and_a_live_stream(tmp_path, amp, redis_url):
    token = "nginx-operator-token-0123456789"
    async with Cluster(tmp_path, amp.base_url, redis_url, 2, debug__token=f'"{token}"') as cluster:
        bearer = {"Authorization": f"Bearer {token}"}
        async with cluster.visitor() as operator, cluster.visitor(force_close=True) as browser:
            r = await operator.get(cluster.base + "/_e/debug/stream", allow_redirects=False)
            assert r.status in (302, 303) and r.headers["Location"].endswith("/_e/debug/login"), \
                "without the token the stream, like every /debug page, sends a person to the login"
            # The operator always reaches the same process (its trail and charts are per process).
            pids = set()
            for _ in range(6):
                r = await operator.get(cluster.base + "/_e/debug?format=json", headers=bearer)
                assert r.status == 200
                pids.add((await r.json())["process"]["pid"])
            assert len(pids) == 1, f"the operator's pages came from several processes: {pids}"

            stream = await operator.get(cluster.base + "/_e/debug/stream", headers=bearer,
                                        timeout=aiohttp.ClientTimeout(total=60))
            assert stream.status == 200 and stream.headers["Content-Type"].startswith("text/event-stream")
            sent = {f"nginx-live-{n}" for n in range(8)}
            seen: set[str] = set()
            messages = 0
            async for message in sse_messages(stream, time.monotonic() + 30):
                messages += 1
                if messages == 1:  # the first message sets the cursor; now the visitor's events
                    for n, mid in enumerate(sorted(sent)):  # round-robin: both processes take some
                        body = ajs_event("track", n, "nginx-live-device", event="Live", messageId=mid)
                        r = await browser.post(cluster.base + "/_e/v1/t", data=orjson.dumps(body), headers=AUTH)
                        assert r.status == 200
                    continue
                assert message["live"], "an overview stream carries the live numbers"
                seen |= {mid for mid in sent if f"/events/{mid}" in message["rows"]}
                if seen and messages > 4:  # a few periods after the events: all of this process's are in
                    break
            stream.close()
            assert seen, "no event reached the operator through nginx's stream while it was open"
            r = await operator.get(cluster.base + "/_e/debug?format=json", headers=bearer)
            trail = {row["message_id"] for row in (await r.json())["trail"]} & sent
            print(f"\ncockpit behind nginx: 2 processes, the operator's one took {len(trail)} of {len(sent)} "
                  f"events; the live stream showed {len(seen)} in {messages} messages")
            assert seen == trail, "the stream and the pages of one operator are one process's view"
            assert len(trail) < len(sent), "round-robin should have sent some events to the other process"
