"""The nginx/ configuration through a real nginx, in front of two edgeproxy processes sharing Redis.

What a production user relies on: the real client IP (not nginx's, not a spoofed header) becomes
the event's ip; the prefix reaches edgeproxy; a browser's session is one session whichever
process answers; the operator view is reachable under the prefix.
"""

from __future__ import annotations

import asyncio
import base64
import shutil
import subprocess
from pathlib import Path

import aiohttp
import orjson
import pytest
from test_e2e import WRITE_KEY, Proxy, ajs_event, free_port, wait_for

ROOT = Path(__file__).resolve().parent.parent
NGINX = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
REDIS = shutil.which("redis-server")

pytestmark = [
    pytest.mark.skipif(NGINX is None, reason="nginx is not installed (make test installs it)"),
    pytest.mark.skipif(REDIS is None, reason="redis-server is not installed (make test installs it)"),
]




@pytest.fixture
def redis_url(tmp_path):
    port = free_port()
    proc = subprocess.Popen([REDIS, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                             "--dir", str(tmp_path)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        import socket
        import time

        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def nginx_conf(tmp_path: Path, port: int, backends: list[int], origin_port: int) -> Path:
    servers = "".join(f"        server 127.0.0.1:{p};\n" for p in backends)
    conf = tmp_path / "nginx.conf"
    conf.write_text(f"""
worker_processes 1;
pid {tmp_path}/nginx.pid;
error_log {tmp_path}/nginx-error.log;
daemon off;
events {{ worker_connections 256; }}
http {{
    access_log off;
    client_body_temp_path {tmp_path}/body;
    proxy_temp_path {tmp_path}/proxy;
    fastcgi_temp_path {tmp_path}/fastcgi;
    uwsgi_temp_path {tmp_path}/uwsgi;
    scgi_temp_path {tmp_path}/scgi;
    upstream edgeproxy {{
{servers}        keepalive 8;
    }}
    server {{
        listen 127.0.0.1:{port};
        include {ROOT / "nginx" / "edgeproxy-locations.conf"};
        location / {{ return 200 "origin page\\n"; }}
    }}
}}
""")
    return conf


async def test_nginx_in_front_of_two_processes_sharing_redis(tmp_path, amp, redis_url):
    keys = '["nginx-test-signing-key-0123456789"]'
    common = dict(server__trusted_proxies='["127.0.0.1"]', server__debug_path='"/_e/debug"',
                  sessions__store=f'"{redis_url}"', sessions__signing_keys=keys)
    procs = []
    for name in ("a", "b"):
        d = tmp_path / name
        d.mkdir()
        procs.append(Proxy(d, amp.base_url, **common))
    for p in procs:
        await p.start()
    port = free_port()
    conf = nginx_conf(tmp_path, port, [p.port for p in procs], 0)
    nginx = subprocess.Popen([NGINX, "-c", str(conf), "-p", str(tmp_path)], stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as probe:
            async def up() -> bool:
                try:
                    async with probe.get(base + "/") as r:
                        return r.status == 200
                except aiohttp.ClientError:
                    return False
            for _ in range(100):
                if await up():
                    break
                await asyncio.sleep(0.05)

        auth = {"Authorization": "Basic " + base64.b64encode(f"{WRITE_KEY}:".encode()).decode(),
                # A spoofed header from the client must not become the event's IP.
                "X-Forwarded-For": "6.6.6.6"}
        # The "visitor" connects from 127.0.0.2 so its address differs from nginx's (127.0.0.1).
        connector = aiohttp.TCPConnector(local_addr=("127.0.0.2", 0), force_close=True)
        async with aiohttp.ClientSession(connector=connector, cookie_jar=aiohttp.CookieJar(unsafe=True)) as browser:
            for n in range(6):  # round-robin: both processes answer
                body = ajs_event("track", n, "nginx-anon-0001", event=f"Step {n}")
                r = await browser.post(base + "/_e/v1/t", data=orjson.dumps(body), headers=auth)
                assert r.status == 200, await r.text()
            site = await browser.get(base + "/")
            assert await site.text() == "origin page\n"
        await wait_for(lambda: len(amp.ingested("httpapi")) == 6, timeout=30)
        events = amp.ingested("httpapi")
        assert {e["ip"] for e in events} == {"127.0.0.2"}
        assert {e["device_id"] for e in events} == {"nginx-anon-0001"}
        assert len({e["session_id"] for e in events}) == 1, "one session across both processes"

        async with aiohttp.ClientSession() as operator:
            # Through nginx the operator is remote (127.0.0.1 is nginx, the client IP is forwarded):
            # without a token the view is loopback-only, and 127.0.0.1 is loopback, so it answers.
            r = await operator.get(base + "/_e/debug?format=json")
            assert r.status == 200
            sessions = (await r.json())["sessions"]
            assert [s["device_id"] for s in sessions] == ["nginx-anon-0001"]
            assert sessions[0]["event_count"] == 6
    finally:
        nginx.terminate()
        nginx.wait(timeout=10)
        for p in procs:
            p.kill(15)
