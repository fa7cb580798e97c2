"""``[server] access_log``: one structured line per request from `edgeproxy serve`, off by default,
never carrying cookies, tokens or the query string."""

from __future__ import annotations

import base64
import signal
from pathlib import Path

import aiohttp
import orjson
from test_e2e import WRITE_KEY, Proxy, ajs_event

SECRET_BITS = ("cookie-secret-value", "token-secret-value", "query-secret-value", "basic-secret")


async def visit(proxy: Proxy) -> None:
    """A tracking call with a cookie and Basic auth, a debug page with a bearer token and a
    query, and a page that is not there."""
    basic = base64.b64encode(f"{WRITE_KEY}:basic-secret".encode()).decode()
    async with aiohttp.ClientSession() as s:
        body = ajs_event("track", 1, "access-anon", event="Logged")
        r = await s.post(proxy.base + "/_e/v1/t", data=orjson.dumps(body),
                         headers={"Cookie": "other=cookie-secret-value", "Authorization": f"Basic {basic}"})
        assert r.status == 200
        r = await s.get(proxy.base + "/debug/me?format=json&q=query-secret-value",
                        headers={"Authorization": "Bearer token-secret-value"})
        assert r.status in (200, 401, 403)
        assert (await s.get(proxy.base + "/no-such-page")).status == 404


def access_lines(proxy: Proxy) -> list[dict]:
    lines = [orjson.loads(line) for line in proxy.log.read_text().splitlines() if line.startswith("{")]
    return [line for line in lines if line["logger"] == "edgeproxy.access"]


async def test_access_log_is_one_structured_line_per_request_without_secrets(tmp_path: Path, amp) -> None:
    proxy = Proxy(tmp_path, amp.base_url, server__access_log="true")
    await proxy.start()
    try:
        await visit(proxy)
    finally:
        assert proxy.kill(signal.SIGTERM) == 0
    lines = [line for line in access_lines(proxy) if line["path"] != "/healthz"]
    assert [(line["method"], line["path"], line["status"]) for line in lines] == [
        ("POST", "/_e/v1/t", 200), ("GET", "/debug/me", lines[1]["status"]), ("GET", "/no-such-page", 404)]
    track, debug, missing = lines
    assert track["route"] == "/_e/v1/t" and track["client"] == "127.0.0.1"  # one route per tracking path
    assert track["bytes"] > 0 and track["duration_ms"] >= 0 and track["level"] == "info"
    assert debug["route"] == "/debug/me" and missing["route"] == "/{tail}"
    text = proxy.log.read_text()
    for secret in SECRET_BITS:
        assert secret not in text, secret


async def test_access_log_is_off_by_default(tmp_path: Path, amp) -> None:
    proxy = Proxy(tmp_path, amp.base_url)
    await proxy.start()
    try:
        await visit(proxy)
    finally:
        assert proxy.kill(signal.SIGTERM) == 0
    assert access_lines(proxy) == []
    assert "edgeproxy ready" in proxy.log.read_text()
