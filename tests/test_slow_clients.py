"""Slow and greedy clients against a real `edgeproxy serve`, with real sockets: a trickled
request head, a trickled body, an idle connection, too many connections from one address;
and client mistakes logged as one warning line, never a traceback."""

from __future__ import annotations

import asyncio
import gzip
import json
import socket
import time

import pytest
from test_e2e import Proxy

HEAD = b"POST /_e/v1/t HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\n"


@pytest.fixture
async def proxy(tmp_path, amp):
    p = Proxy(tmp_path, amp.base_url, server__header_timeout='"1s"', server__idle_timeout='"2s"',
              server__body_timeout='"1s"', server__max_connections_per_ip="8", server__log_format='"json"')
    await p.start()
    yield p
    p.kill(15)


def connect(proxy) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", proxy.port), timeout=10)
    return sock


def closed_within(sock: socket.socket, seconds: float) -> tuple[float, bytes]:
    """Seconds until the server closed ``sock``, and what it answered before."""
    start = time.monotonic()
    sock.settimeout(seconds)
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except (ConnectionResetError, BrokenPipeError):
        pass
    except socket.timeout:
        raise AssertionError(f"still open after {seconds} s") from None
    return time.monotonic() - start, data


async def in_thread(fn, *args):
    return await asyncio.get_running_loop().run_in_executor(None, fn, *args)


def trickle_head(proxy) -> float:
    sock = connect(proxy)
    start = time.monotonic()
    try:
        for byte in HEAD:  # one byte every 0.1 s: the head would take ~6 s
            sock.sendall(bytes([byte]))
            time.sleep(0.1)
    except (BrokenPipeError, ConnectionResetError):
        return time.monotonic() - start
    raise AssertionError("the trickled head was never cut off")


async def test_a_trickled_request_head_is_cut_off_at_header_timeout(proxy) -> None:
    took = await in_thread(trickle_head, proxy)
    assert 0.9 <= took < 3.5, took


async def test_an_idle_connection_is_closed_at_idle_timeout(proxy) -> None:
    sock = connect(proxy)
    took, _ = await in_thread(closed_within, sock, 6.0)
    assert took < 3.5, took
    # A kept-alive connection is closed the same way after its response.
    sock = connect(proxy)
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    took, answer = await in_thread(closed_within, sock, 6.0)
    assert b"200 OK" in answer and 1.5 <= took < 3.5, took


async def test_a_trickled_body_gets_408_at_body_timeout(proxy) -> None:
    sock = connect(proxy)
    sock.sendall(HEAD + b"Content-Length: 500\r\n\r\n{\"type\":")
    took, answer = await in_thread(closed_within, sock, 6.0)
    assert answer.startswith(b"HTTP/1.1 408") and b"server.body_timeout" in answer
    assert took < 3.0, took


async def test_one_address_cannot_hold_more_than_its_share_of_connections(proxy) -> None:
    held = [connect(proxy) for _ in range(8)]
    await asyncio.sleep(0.2)
    extra = connect(proxy)
    took, answer = await in_thread(closed_within, extra, 3.0)
    assert took < 1.0 and answer == b""  # refused at once
    held.pop().close()
    await asyncio.sleep(0.2)
    sock = connect(proxy)
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    _, answer = await in_thread(closed_within, sock, 3.0)
    assert b"200 OK" in answer
    for s in held:
        s.close()


async def test_client_mistakes_are_one_warning_line_never_a_traceback(proxy) -> None:
    sock = connect(proxy)
    sock.sendall(HEAD + b"Content-Length: 1000\r\n\r\n{\"type\":")
    sock.close()  # gone mid-body
    sock = connect(proxy)
    sock.sendall(HEAD + b"Content-Encoding: gzip\r\nContent-Length: 10\r\n\r\n0123456789")
    _, answer = await in_thread(closed_within, sock, 3.0)
    assert answer.startswith(b"HTTP/1.1 400")
    good = gzip.compress(b'{"type":"track","event":"x","anonymousId":"anon-12345","writeKey":"e2e-write-key"}')
    sock = connect(proxy)
    sock.sendall(HEAD + b"Content-Encoding: gzip\r\nConnection: close\r\n" + f"Content-Length: {len(good)}\r\n\r\n".encode() + good)
    _, answer = await in_thread(closed_within, sock, 3.0)
    assert answer.startswith(b"HTTP/1.1 200"), answer
    await asyncio.sleep(0.5)
    lines = [json.loads(line) for line in proxy.log.read_text().splitlines() if line.startswith("{")]
    assert not [entry for entry in lines if "exception" in entry], [e["message"] for e in lines if "exception" in e]
    reasons = {entry.get("reason") for entry in lines if entry["level"] == "warning"}
    assert {"connection_lost", "bad_encoding"} <= reasons
    assert all(e.get("client") == "127.0.0.1" for e in lines if e.get("reason") in ("connection_lost", "bad_encoding"))
