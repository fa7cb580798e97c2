"""The reverse proxy and the demo site (SPEC section 7), against a real local origin server."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import io
import os
import socket
from typing import Any, AsyncIterator

import aiohttp
import pytest
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from edgeproxy.config import Settings
from edgeproxy.edge.demo import render_snippet
from edgeproxy.edge.inject import INJECT_MAX_BYTES, inject_html, rewrite_body
from edgeproxy.edge.origin import hop_by_hop, setup_origin, upstream_url

WAIT = 5.0  # upper bound for any event wait in these tests (never expected to be reached)

STATE = web.AppKey("state", dict)

PAGE = b"<!doctype html><html><head><title>t</title></head><body><p>hello</p></body></html>"
PAGE_NO_HEAD = b'<!doctype html><html><body class="x"><p>hello</p></body></html>'
FRAGMENT = b"<p>just a fragment</p>"


# ---------------------------------------------------------------- the origin


async def _echo(request: web.Request) -> web.Response:
    digest = hashlib.sha256()
    size = 0
    async for chunk in request.content.iter_any():
        digest.update(chunk)
        size += len(chunk)
    return web.json_response(
        {
            "method": request.method,
            "raw_path": request.raw_path,
            "headers": [[k, v] for k, v in request.headers.items()],
            "sha256": digest.hexdigest(),
            "size": size,
        }
    )


async def _status(request: web.Request) -> web.Response:
    code = int(request.match_info["code"])
    headers = {}
    if 300 <= code < 400:
        headers["Location"] = request.query.get("to", "/elsewhere?x=1")
    return web.Response(status=code, text=f"status {code}", headers=headers)


async def _cookies(request: web.Request) -> web.Response:
    response = web.Response(text="cookies")
    response.headers.add("Set-Cookie", "a=1; Path=/")
    response.headers.add("Set-Cookie", "b=2; Path=/; HttpOnly")
    return response


async def _hop(request: web.Request) -> web.Response:
    return web.Response(
        text="hop",
        headers={
            "Connection": "keep-alive, X-Hop",
            "X-Hop": "secret",
            "Keep-Alive": "timeout=5",
            "Proxy-Authenticate": "Basic",
            "X-Kept": "yes",
        },
    )


def _html(body: bytes, **headers: str) -> web.Response:
    return web.Response(body=body, content_type="text/html", charset="utf-8", headers={"ETag": '"v1"', **headers})


async def _page(request: web.Request) -> web.Response:
    return _html(PAGE)


async def _page_no_head(request: web.Request) -> web.Response:
    return _html(PAGE_NO_HEAD)


async def _fragment(request: web.Request) -> web.Response:
    return _html(FRAGMENT)


async def _gzip_page(request: web.Request) -> web.Response:
    return web.Response(
        body=gzip.compress(PAGE),
        headers={"Content-Type": "text/html; charset=utf-8", "Content-Encoding": "gzip", "ETag": '"gz"'},
    )


async def _br_page(request: web.Request) -> web.Response:
    return web.Response(
        body=b"\x0bnot-really-brotli</head>",
        headers={"Content-Type": "text/html", "Content-Encoding": "br"},
    )


async def _big_page(request: web.Request) -> web.StreamResponse:
    """Bigger than the injection cap, streamed without Content-Length."""
    response = web.StreamResponse(headers={"Content-Type": "text/html"})
    response.enable_chunked_encoding()
    await response.prepare(request)
    await response.write(b"<html><head></head><body>")
    for _ in range(INJECT_MAX_BYTES // 65536 + 2):
        await response.write(b"x" * 65536)
    await response.write(b"</body></html>")
    await response.write_eof()
    return response


async def _json(request: web.Request) -> web.Response:
    return web.json_response({"html": "</head>"})


async def _image(request: web.Request) -> web.Response:
    return web.Response(body=b"\x89PNG\r\n\x1a\n</head>", content_type="image/png")


async def _slow(request: web.Request) -> web.Response:
    await asyncio.sleep(WAIT)
    return web.Response(text="too late")


async def _stream_up(request: web.Request) -> web.Response:
    """Signals as soon as the first request bytes arrive, before the client sent the rest."""
    first = await request.content.readany()
    request.app[STATE]["first_chunk_in"].set()
    rest = await request.content.read()
    return web.json_response({"size": len(first) + len(rest)})


async def _stream_down(request: web.Request) -> web.StreamResponse:
    """Sends one chunk, then waits until the client has it before sending the rest."""
    response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
    await response.prepare(request)
    await response.write(b"first-chunk;")
    await asyncio.wait_for(request.app[STATE]["client_got_first"].wait(), WAIT)
    await response.write(b"second-chunk")
    await response.write_eof()
    return response


async def _broken(request: web.Request) -> web.StreamResponse:
    """Promises 100000 bytes, sends 10, then drops the connection."""
    response = web.StreamResponse(headers={"Content-Length": "100000", "Content-Type": "text/plain"})
    await response.prepare(request)
    await response.write(b"0123456789")
    assert request.transport is not None
    request.transport.close()
    return response


async def _ws(request: web.Request) -> web.WebSocketResponse:
    ws = web.WebSocketResponse(protocols=("chat.v2", "chat.v1"))
    await ws.prepare(request)
    request.app[STATE]["ws_headers"] = dict(request.headers)
    async for msg in ws:
        if msg.type == aiohttp.WSMsgType.TEXT:
            if msg.data == "bye":
                await ws.close(code=4001, message=b"bye")
                break
            await ws.send_str("echo:" + msg.data)
        elif msg.type == aiohttp.WSMsgType.BINARY:
            await ws.send_bytes(b"echo:" + msg.data)
    return ws


def origin_app() -> web.Application:
    app = web.Application()
    app[STATE] = {"first_chunk_in": asyncio.Event(), "client_got_first": asyncio.Event()}
    r = app.router
    r.add_route("*", "/echo", _echo)
    r.add_route("*", "/base/echo", _echo)
    r.add_get("/status/{code}", _status)
    r.add_get("/cookies", _cookies)
    r.add_get("/hop", _hop)
    r.add_route("*", "/page", _page)
    r.add_get("/page-no-head", _page_no_head)
    r.add_get("/fragment", _fragment)
    r.add_get("/gzip-page", _gzip_page)
    r.add_get("/br-page", _br_page)
    r.add_get("/big-page", _big_page)
    r.add_get("/json", _json)
    r.add_get("/image", _image)
    r.add_get("/slow", _slow)
    r.add_post("/stream-up", _stream_up)
    r.add_get("/stream-down", _stream_down)
    r.add_get("/broken", _broken)
    r.add_get("/ws", _ws)
    return app


# ---------------------------------------------------------------- fixtures


@pytest.fixture
async def origin(aiohttp_server: Any) -> Any:
    return await aiohttp_server(origin_app())


class Recorder:
    """An on_html callback that records calls and sets a cookie, as the lead's device cookie does."""

    def __init__(self) -> None:
        self.paths: list[str] = []

    def __call__(self, request: web.Request, response: web.StreamResponse) -> None:
        self.paths.append(request.path)
        response.set_cookie("_ep_did", "device-1", httponly=True)


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
def make_proxy(aiohttp_client: Any, recorder: Recorder) -> Any:
    async def make(origin_url: str, client_kwargs: dict[str, Any] | None = None, **origin: Any) -> Any:
        settings = Settings()
        settings.origin.url = origin_url
        settings.origin.timeout = origin.pop("timeout", 5.0)
        settings.server.trusted_proxies = origin.pop("trusted_proxies", [])
        settings.segment.write_keys = origin.pop("write_keys", [])
        settings.server.body_timeout = origin.pop("body_timeout", 30.0)
        for key, value in origin.items():
            setattr(settings.origin, key, value)
        app = web.Application()
        setup_origin(app, settings, on_html=recorder)
        return await aiohttp_client(app, **(client_kwargs or {}))

    return make


def _url(server: Any) -> str:
    return str(server.make_url(""))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _headers(echo: dict[str, Any]) -> CIMultiDict[str]:
    return CIMultiDict((k, v) for k, v in echo["headers"])


# ---------------------------------------------------------------- methods, bodies, status, headers


async def test_get_keeps_raw_path_and_query(origin: Any, make_proxy: Any) -> None:
    client = await make_proxy(_url(origin))
    raw = URL(f"http://{client.host}:{client.port}/echo?a=1&b=%20x%2F&a=2", encoded=True)
    resp = await client.session.get(raw, headers={"X-Custom": "kept"})
    assert resp.status == 200
    echo = await resp.json()
    assert echo["method"] == "GET"
    assert echo["raw_path"] == "/echo?a=1&b=%20x%2F&a=2"
    assert _headers(echo)["X-Custom"] == "kept"


@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH", "DELETE", "OPTIONS"])
async def test_methods_and_small_bodies_pass(origin: Any, make_proxy: Any, method: str) -> None:
    client = await make_proxy(_url(origin))
    body = b'{"k": "v"}'
    resp = await client.request(method, "/echo", data=body, headers={"Content-Type": "application/json"})
    echo = await resp.json()
    assert echo["method"] == method
    assert echo["size"] == len(body)
    assert echo["sha256"] == hashlib.sha256(body).hexdigest()
    assert _headers(echo)["Content-Type"] == "application/json"


async def test_head_passes_without_body(origin: Any, make_proxy: Any) -> None:
    client = await make_proxy(_url(origin))
    resp = await client.head("/page")
    assert resp.status == 200
    assert await resp.read() == b""
    assert resp.headers["Content-Length"] == str(len(PAGE))


async def test_large_streamed_post_arrives_intact(origin: Any, make_proxy: Any) -> None:
    client = await make_proxy(_url(origin))
    blocks = [os.urandom(256 * 1024) for _ in range(24)]  # 6 MiB, chunked upload
    expected = hashlib.sha256(b"".join(blocks)).hexdigest()

    async def body() -> AsyncIterator[bytes]:
        for block in blocks:
            yield block

    resp = await client.post("/echo", data=body())
    echo = await resp.json()
    assert echo["size"] == sum(map(len, blocks))
    assert echo["sha256"] == expected


async def test_large_post_with_content_length_arrives_intact(origin: Any, make_proxy: Any) -> None:
    client = await make_proxy(_url(origin))
    payload = os.urandom(3 * 1024 * 1024 + 7)
    resp = await client.put("/echo", data=io.BytesIO(payload))
    echo = await resp.json()
    assert _headers(echo)["Content-Length"] == str(len(payload))
    assert echo["sha256"] == hashlib.sha256(payload).hexdigest()


async def test_request_body_is_streamed_not_buffered(origin: Any, make_proxy: Any) -> None:
    """The origin must see the first chunk before the client has sent the second one."""
    client = await make_proxy(_url(origin))
    state = origin.app[STATE]

    async def body() -> AsyncIterator[bytes]:
        yield b"a" * 1000
        await asyncio.wait_for(state["first_chunk_in"].wait(), WAIT)  # a buffering proxy deadlocks here
        yield b"b" * 1000

    resp = await client.post("/stream-up", data=body())
    assert (await resp.json())["size"] == 2000


async def test_response_body_is_streamed_not_buffered(origin: Any, make_proxy: Any) -> None:
    """The client must get the first chunk before the origin sends the second one."""
    client = await make_proxy(_url(origin))
    resp = await client.get("/stream-down")
    first = await asyncio.wait_for(resp.content.readexactly(len(b"first-chunk;")), WAIT)
    assert first == b"first-chunk;"
    origin.app[STATE]["client_got_first"].set()
    assert await resp.read() == b"second-chunk"


@pytest.mark.parametrize("code", [404, 500, 503, 418])
async def test_status_codes_and_bodies_pass(origin: Any, make_proxy: Any, code: int) -> None:
    client = await make_proxy(_url(origin))
    resp = await client.get(f"/status/{code}")
    assert resp.status == code
    assert await resp.text() == f"status {code}"


@pytest.mark.parametrize("location", ["/elsewhere?x=1", "http://other.example/path?q=%20"])
async def test_redirects_are_passed_not_followed(origin: Any, make_proxy: Any, location: str) -> None:
    client = await make_proxy(_url(origin))
    resp = await client.get("/status/302", params={"to": location}, allow_redirects=False)
    assert resp.status == 302
    assert resp.headers["Location"] == location


async def test_multiple_set_cookie_headers_are_kept(origin: Any, make_proxy: Any) -> None:
    client = await make_proxy(_url(origin))
    resp = await client.get("/cookies")
    assert resp.headers.getall("Set-Cookie") == ["a=1; Path=/", "b=2; Path=/; HttpOnly"]


async def test_hop_by_hop_request_headers_are_stripped(origin: Any, make_proxy: Any) -> None:
    client = await make_proxy(_url(origin))
    resp = await client.get(
        "/echo",
        headers={
            "Connection": "keep-alive, X-Private-Hop",
            "X-Private-Hop": "drop me",
            "Keep-Alive": "timeout=5",
            "TE": "trailers",
            "Proxy-Authorization": "Basic Zm9vOmJhcg==",
            "X-End-To-End": "keep me",
        },
    )
    sent = _headers(await resp.json())
    for name in ("X-Private-Hop", "Keep-Alive", "TE", "Proxy-Authorization"):
        assert name not in sent, name
    assert "X-Private-Hop" not in sent.get("Connection", "")
    assert sent["X-End-To-End"] == "keep me"


async def test_hop_by_hop_response_headers_are_stripped(origin: Any, make_proxy: Any) -> None:
    client = await make_proxy(_url(origin))
    resp = await client.get("/hop")
    for name in ("X-Hop", "Keep-Alive", "Proxy-Authenticate"):
        assert name not in resp.headers, name
    assert "X-Hop" not in resp.headers.get("Connection", "")
    assert resp.headers["X-Kept"] == "yes"


async def test_forwarded_headers_and_origin_host(origin: Any, make_proxy: Any) -> None:
    client = await make_proxy(_url(origin))
    resp = await client.get("/echo", headers={"X-Forwarded-For": "203.0.113.7", "X-Forwarded-Host": "evil"})
    sent = _headers(await resp.json())
    # The client is not a trusted proxy: its own X-Forwarded-For is not believed.
    assert sent.getall("X-Forwarded-For") == ["127.0.0.1"]
    assert sent["X-Forwarded-Proto"] == "http"
    assert sent.getall("X-Forwarded-Host") == [f"{client.host}:{client.port}"]
    assert sent["Host"] == f"{origin.host}:{origin.port}"


async def test_forwarded_for_keeps_the_chain_from_a_trusted_proxy(origin: Any, make_proxy: Any) -> None:
    client = await make_proxy(_url(origin), trusted_proxies=["127.0.0.0/8"])
    resp = await client.get("/echo", headers={"X-Forwarded-For": "203.0.113.7"})
    sent = _headers(await resp.json())
    assert sent["X-Forwarded-For"] == "203.0.113.7, 127.0.0.1"


async def test_origin_url_with_a_base_path(origin: Any, make_proxy: Any) -> None:
    client = await make_proxy(_url(origin).rstrip("/") + "/base/")
    echo = await (await client.get("/echo?q=1")).json()
    assert echo["raw_path"] == "/base/echo?q=1"


# ---------------------------------------------------------------- WebSockets


async def test_websocket_echo_round_trip(origin: Any, make_proxy: Any) -> None:
    client = await make_proxy(_url(origin))
    async with client.ws_connect("/ws", protocols=("chat.v1",), headers={"X-Auth": "t"}) as ws:
        assert ws.protocol == "chat.v1"
        await ws.send_str("hello")
        assert (await ws.receive(timeout=WAIT)).data == "echo:hello"
        await ws.send_bytes(b"\x00\x01")
        assert (await ws.receive(timeout=WAIT)).data == b"echo:\x00\x01"
    assert origin.app[STATE]["ws_headers"]["X-Auth"] == "t"


async def test_websocket_close_from_origin_reaches_client(origin: Any, make_proxy: Any) -> None:
    client = await make_proxy(_url(origin))
    async with client.ws_connect("/ws") as ws:
        await ws.send_str("bye")
        msg = await ws.receive(timeout=WAIT)
        assert msg.type == aiohttp.WSMsgType.CLOSE
        assert ws.close_code == 4001


async def test_websocket_stays_open_longer_than_the_origin_timeout(origin: Any, make_proxy: Any) -> None:
    client = await make_proxy(_url(origin), timeout=0.1)
    async with client.ws_connect("/ws") as ws:
        await asyncio.sleep(0.4)  # idle for longer than the HTTP read timeout
        await ws.send_str("still there")
        assert (await ws.receive(timeout=WAIT)).data == "echo:still there"


async def test_websocket_to_a_down_origin_is_502(make_proxy: Any) -> None:
    client = await make_proxy(f"http://127.0.0.1:{_free_port()}")
    resp = await client.get("/ws", headers={"Upgrade": "websocket", "Connection": "Upgrade",
                                            "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
                                            "Sec-WebSocket-Version": "13"})
    assert resp.status == 502


# ---------------------------------------------------------------- origin failures


async def test_origin_down_is_502_page(make_proxy: Any) -> None:
    client = await make_proxy(f"http://127.0.0.1:{_free_port()}")
    resp = await client.get("/anything")
    assert resp.status == 502
    assert resp.content_type == "text/html"
    text = await resp.text()
    assert "502 Bad Gateway" in text and "Traceback" not in text


async def test_slow_origin_is_504_page(origin: Any, make_proxy: Any) -> None:
    client = await make_proxy(_url(origin), timeout=0.2)
    resp = await client.get("/slow")
    assert resp.status == 504
    text = await resp.text()
    assert "504 Gateway Timeout" in text and "Traceback" not in text


async def test_origin_dying_mid_body_truncates_the_response(origin: Any, make_proxy: Any) -> None:
    client = await make_proxy(_url(origin))
    resp = await client.get("/broken")
    assert resp.status == 200
    with pytest.raises(aiohttp.ClientPayloadError):
        await resp.read()


# ---------------------------------------------------------------- on_html and the snippet


async def test_on_html_runs_for_get_html_before_headers(origin: Any, make_proxy: Any, recorder: Recorder) -> None:
    client = await make_proxy(_url(origin))
    resp = await client.get("/page")
    assert await resp.read() == PAGE  # injection is off by default
    assert recorder.paths == ["/page"]
    assert "_ep_did=device-1" in resp.headers["Set-Cookie"]
    assert resp.headers["ETag"] == '"v1"'


@pytest.mark.parametrize("path", ["/json", "/image", "/cookies"])
async def test_on_html_not_called_for_other_types(origin: Any, make_proxy: Any, recorder: Recorder, path: str) -> None:
    client = await make_proxy(_url(origin))
    resp = await client.get(path)
    assert resp.status == 200
    assert recorder.paths == []
    assert "_ep_did" not in " ".join(resp.headers.getall("Set-Cookie", []))


async def test_on_html_not_called_for_post(origin: Any, make_proxy: Any, recorder: Recorder) -> None:
    client = await make_proxy(_url(origin))
    await (await client.post("/page", data=b"x")).read()
    assert recorder.paths == []


async def test_snippet_injected_before_head_close(origin: Any, make_proxy: Any, recorder: Recorder) -> None:
    client = await make_proxy(_url(origin), inject_snippet=True, write_keys=["wk_live"])
    resp = await client.get("/page")
    body = await resp.read()
    assert body.count(b'data-edgeproxy="snippet"') == 1
    assert body.index(b'data-edgeproxy="snippet"') < body.index(b"</head>")
    assert b'analytics.load("wk_live")' in body
    assert b'location.host+"/_e"' in body and b'"/analytics.js/v1/"' in body
    assert int(resp.headers["Content-Length"]) == len(body)
    assert "ETag" not in resp.headers
    assert recorder.paths == ["/page"]


async def test_snippet_injected_at_body_start_without_head(origin: Any, make_proxy: Any) -> None:
    client = await make_proxy(_url(origin), inject_snippet=True)
    resp = await client.get("/page-no-head")
    body = await resp.read()
    assert body.startswith(b'<!doctype html><html><body class="x"><script data-edgeproxy="snippet">')
    assert b'analytics.load("edgeproxy")' in body  # no write keys configured: the snippet_write_key default
    assert int(resp.headers["Content-Length"]) == len(body)


async def test_fragment_without_head_or_body_is_untouched(origin: Any, make_proxy: Any) -> None:
    client = await make_proxy(_url(origin), inject_snippet=True)
    resp = await client.get("/fragment")
    assert await resp.read() == FRAGMENT
    assert resp.headers["ETag"] == '"v1"'


async def test_snippet_injected_into_gzip_html(origin: Any, make_proxy: Any) -> None:
    client = await make_proxy(_url(origin), {"auto_decompress": False}, inject_snippet=True)
    resp = await client.get("/gzip-page")
    raw = await resp.read()
    assert resp.headers["Content-Encoding"] == "gzip"
    assert int(resp.headers["Content-Length"]) == len(raw)
    html = gzip.decompress(raw)
    assert b'data-edgeproxy="snippet"' in html and html.endswith(b"</head><body><p>hello</p></body></html>")
    assert "ETag" not in resp.headers


@pytest.mark.parametrize("path", ["/json", "/image", "/br-page"])
async def test_no_injection_for_non_html_or_other_encodings(origin: Any, make_proxy: Any, path: str) -> None:
    client = await make_proxy(_url(origin), {"auto_decompress": False}, inject_snippet=True)
    resp = await client.get(path)
    body = await resp.read()
    assert b"data-edgeproxy" not in body and b"</head>" in body


async def test_html_over_the_cap_streams_through_untouched(origin: Any, make_proxy: Any, recorder: Recorder) -> None:
    client = await make_proxy(_url(origin), inject_snippet=True)
    resp = await client.get("/big-page")
    body = await resp.read()
    assert b"data-edgeproxy" not in body
    assert body.startswith(b"<html><head></head><body>xxx") and body.endswith(b"</body></html>")
    assert len(body) == 25 + (INJECT_MAX_BYTES // 65536 + 2) * 65536 + 14
    assert recorder.paths == ["/big-page"]  # still a page view: the cookie is set


# ---------------------------------------------------------------- pure rules


def test_hop_by_hop_includes_connection_tokens() -> None:
    names = hop_by_hop(CIMultiDict([("Connection", "close, X-A"), ("Connection", " x-b ")]))
    assert {"x-a", "x-b", "transfer-encoding", "upgrade", "te", "keep-alive"} <= names


def test_upstream_url_keeps_raw_encoding() -> None:
    assert str(upstream_url("http://o:81/app/", "/a%2Fb?x=%20&y")) == "http://o:81/app/a%2Fb?x=%20&y"


def test_snippet_escapes_hostile_values() -> None:
    snippet = render_snippet("/_e", 'k"</script><img src=x>')
    assert "</script><img" not in snippet
    assert snippet.count("</script>") == 1


def test_inject_html_prefers_head_and_is_case_insensitive() -> None:
    assert inject_html(b"<HEAD></HEAD ><BODY>", b"S") == b"<HEAD>S</HEAD ><BODY>"
    assert inject_html(b"<body onload='f()'>x", b"S") == b"<body onload='f()'>Sx"
    assert inject_html(b"<div>", b"S") is None


def test_rewrite_body_refuses_gzip_that_inflates_past_the_cap() -> None:
    bomb = gzip.compress(b"<head></head>" + b" " * 10_000)
    assert rewrite_body(bomb, "gzip", b"S", cap=5_000) is None
    assert gzip.decompress(rewrite_body(bomb, "gzip", b"S", cap=20_000) or b"").startswith(b"<head>S</head>")
    assert rewrite_body(b"not gzip", "gzip", b"S") is None


# ---------------------------------------------------------------- the demo site


@pytest.fixture
def make_demo(aiohttp_client: Any, recorder: Recorder) -> Any:
    async def make(**server: Any) -> Any:
        settings = Settings()
        for key, value in server.items():
            setattr(settings.server, key, value)
        app = web.Application()
        setup_origin(app, settings, on_html=recorder)
        return await aiohttp_client(app)

    return make


async def test_demo_home_loads_analytics_from_the_proxy(make_demo: Any, recorder: Recorder) -> None:
    client = await make_demo()
    resp = await client.get("/")
    assert resp.status == 200 and resp.content_type == "text/html"
    html = await resp.text()
    assert html.index('data-edgeproxy="snippet"') < html.index("</head>")
    assert 'analytics._cdn=location.protocol+"//"+location.host+"/_e"' in html
    assert 'analytics.load("edgeproxy")' in html and "analytics.page();" in html
    assert "/_e/analytics.js/v1/edgeproxy/analytics.min.js" in html
    assert 'analytics.track("Demo Button Clicked"' in html and "analytics.identify(" in html
    assert 'href="/debug/me"' in html and 'href="/debug"' in html
    assert "{{" not in html
    assert recorder.paths == ["/"]
    assert "_ep_did=device-1" in resp.headers["Set-Cookie"]


async def test_demo_follows_configured_paths(make_demo: Any) -> None:
    client = await make_demo(prefix="/t", debug_path="/ops")
    html = await (await client.get("/shop")).text()
    assert 'location.host+"/t"' in html and 'href="/ops/me"' in html
    assert 'analytics.track("Order Completed"' in html


async def test_demo_other_pages_assets_and_errors(make_demo: Any, recorder: Recorder) -> None:
    client = await make_demo()
    assert (await client.get("/about")).status == 200
    css = await client.get("/demo.css")
    assert css.status == 200 and css.content_type == "text/css"
    js = await client.get("/demo.js")
    assert js.status == 200 and "analytics.on(" in await js.text()
    assert recorder.paths == ["/about"]  # assets are not page views
    assert (await client.get("/no-such-page")).status == 404
    assert (await client.post("/", data=b"x")).status == 405


async def test_every_end_to_end_header_reaches_the_origin_with_connection_tokens(origin: Any, make_proxy: Any) -> None:
    """RFC 9110 7.6.1: only the fixed hop-by-hop set and the headers named in Connection go;
    everything else, Proxy-* extension headers and repeats included, reaches the origin."""
    client = await make_proxy(_url(origin))
    end_to_end = [("X-End-To-End", "keep me"), ("Proxy-Request-Id", "abc"), ("X-Repeated", "1"), ("X-Repeated", "2"),
                  ("Accept-Language", "fr"), ("Forwarded", "for=198.51.100.1"), ("Cache-Control", "no-cache"),
                  ("X-Keep-Alive-Id", "k"), ("Upgrade-Insecure-Requests", "1"), ("Via", "1.1 cdn")]
    headers = CIMultiDict([("Connection", "keep-alive, X-Private-Hop"), ("Connection", "x-second-hop"),
                           ("X-Private-Hop", "drop"), ("X-Second-Hop", "drop"), ("Proxy", "http://evil:1"),
                           *end_to_end])
    resp = await client.get("/echo", headers=headers)
    sent = _headers(await resp.json())
    for name, _ in end_to_end:
        assert sent.getall(name) == [v for n, v in end_to_end if n == name], name
    for name in ("X-Private-Hop", "X-Second-Hop", "Proxy"):
        assert name not in sent, name
    assert sent["X-Forwarded-Host"] == resp.url.host + (f":{resp.url.port}" if resp.url.port else "")


async def test_a_trickled_upload_gets_408_at_body_timeout(origin: Any, make_proxy: Any) -> None:
    """A client that stops sending its body holds no connection here or at the origin."""
    import socket
    import time

    client = await make_proxy(_url(origin), body_timeout=1.0)

    def trickle() -> tuple[float, bytes]:
        sock = socket.create_connection(("127.0.0.1", client.server.port), timeout=10)
        sock.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nabc")
        start, data = time.monotonic(), b""
        while b"\r\n\r\n" not in data and (chunk := sock.recv(65536)):
            data += chunk
        return time.monotonic() - start, data

    took, answer = await asyncio.get_running_loop().run_in_executor(None, trickle)
    assert answer.startswith(b"HTTP/1.1 408") and 0.9 <= took < 4, (took, answer[:60])
