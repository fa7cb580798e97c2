"""`edgeproxy serve --workers N`: several processes on one port sharing Redis, one supervisor.

Real subprocesses, a real redis-server and the Amplitude stand-in: the port is shared (both
workers answer), a device's concurrent events make one session whichever worker takes them,
a worker that dies is replaced, and SIGTERM to the parent stops every worker gracefully.
"""

from __future__ import annotations

import asyncio
import base64
import os
import signal
import subprocess
import time
from pathlib import Path

import aiohttp
import orjson
from redis_server import redis_server
from test_e2e import API_KEY, WRITE_KEY, ajs_event, edgeproxy_command, free_port, wait_for

from edgeproxy.config import Settings
from edgeproxy.supervisor import STARTUP_WINDOW_S, check_workers


def test_check_workers_requires_redis_for_more_than_one() -> None:
    s = Settings()
    assert check_workers(s, 1) == []
    problems = check_workers(s, 2)
    assert [p.split(":")[0] for p in problems] == ["delivery.queue", "sessions.store"]
    s.delivery.queue = s.sessions.store = "redis://127.0.0.1:6379/0"
    assert check_workers(s, 4) == []
    assert check_workers(s, 0) == ["--workers: must be at least 1, got 0"]


def test_serve_workers_without_redis_says_what_to_configure(tmp_path: Path) -> None:
    result = subprocess.run([*edgeproxy_command(), "serve", "--workers", "2", "--port", str(free_port())],
                            cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "delivery.queue" in result.stderr and "sessions.store" in result.stderr
    assert "Traceback" not in result.stderr


async def _pids(base: str, tries: int = 60) -> set[int]:
    """Which processes answer: one fresh connection per request, so SO_REUSEPORT spreads them."""
    seen: set[int] = set()
    for _ in range(tries):
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as s:
            try:
                async with s.get(base + "/healthz") as r:
                    seen.add((await r.json())["pid"])
            except aiohttp.ClientError:
                await asyncio.sleep(0.05)
    return seen


async def test_workers_share_a_port_and_sigterm_stops_them_all(tmp_path: Path, amp) -> None:
    with redis_server(tmp_path) as url:
        port = free_port()
        config = tmp_path / "edgeproxy.toml"
        config.write_text(f"""
[server]
port = {port}
shutdown_grace = "3s"
[segment]
write_keys = ["{WRITE_KEY}"]
[sessions]
secure_cookies = false
store = "{url}"
signing_keys = ["scaleout-test-signing-key-0123456789"]
[delivery]
data_dir = "{tmp_path / 'data'}"
queue = "{url}"
flush_interval = "100ms"
claim_idle = "1s"
[amplitude]
api_key = "{API_KEY}"
secret_key = "s"
endpoint_url = "{amp.base_url}"
""")
        log = tmp_path / "serve.log"
        parent = subprocess.Popen([*edgeproxy_command(), "serve", "--config", str(config), "--workers", "2"],
                                  stdout=log.open("ab"), stderr=subprocess.STDOUT)
        base = f"http://127.0.0.1:{port}"
        started = time.monotonic()
        try:
            deadline = time.monotonic() + 30
            workers: set[int] = set()
            while len(workers) < 2 and time.monotonic() < deadline:
                assert parent.poll() is None, log.read_text()
                workers |= await _pids(base, tries=10)
            assert len(workers) == 2 and parent.pid not in workers, f"workers seen: {workers}\n{log.read_text()}"

            auth = {"Authorization": "Basic " + base64.b64encode(f"{WRITE_KEY}:".encode()).decode()}

            async def send(n: int) -> int:
                body = ajs_event("track", n, "scaleout-anon-1", event=f"E{n}")
                async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as s:
                    async with s.post(base + "/_e/v1/t", data=orjson.dumps(body), headers=auth) as r:
                        return r.status

            assert await asyncio.gather(*(send(n) for n in range(40))) == [200] * 40
            await wait_for(lambda: len(amp.events) == 40, timeout=30)
            assert len({e["session_id"] for e in amp.events}) == 1, "one session across both workers"

            # A worker that dies (after it was up) is replaced; the port keeps answering meanwhile.
            await asyncio.sleep(max(0.0, STARTUP_WINDOW_S + 0.5 - (time.monotonic() - started)))
            victim = min(workers)
            os.kill(victim, signal.SIGKILL)
            replaced: set[int] = set()
            deadline = time.monotonic() + 30
            while len(replaced - workers) < 1 and time.monotonic() < deadline:
                replaced |= await _pids(base, tries=10)
            assert victim not in replaced and len(replaced - workers) == 1, log.read_text()

            parent.send_signal(signal.SIGTERM)
            assert parent.wait(timeout=30) == 0, log.read_text()
            for pid in replaced | workers:
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    continue
                raise AssertionError(f"worker {pid} outlived its supervisor")
            assert "replaced" in log.read_text() or "in its place" in log.read_text()
        finally:
            if parent.poll() is None:
                parent.kill()
                parent.wait(timeout=10)
