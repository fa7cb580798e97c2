"""The tracking handler called in-process, without sockets: its CPU per call, steadier than HTTP.

Why: the HTTP rows put the handler behind wrk, the kernel and aiohttp's protocol, and move
±15 % between rounds on this machine, so a change of a few per cent in the handler cannot
be told from noise there (the compiled build's effect on a whole call is one). Here the real
handler (``_handler_only``'s wiring: parse, cookies, session, mapping, trail; the queue keeps
nothing) is awaited directly with ``calls`` distinct prepared requests from 1,000 returning
visitors, so each call's objects are new and cold as in a server, not one message's over and
over. Requests are aiohttp's ``make_mocked_request`` with a real ``StreamReader`` holding the
body; every answer must be a 200 (a refused call would measure nothing).
"""

from __future__ import annotations

import asyncio
import tempfile
import time
import uuid
from typing import Any

VISITORS = 1_000


class _Protocol:
    """What a StreamReader asks of its protocol (a body within its limit never pauses it)."""

    _reading_paused = False

    def pause_reading(self, *args: Any, **kwargs: Any) -> None:
        pass

    def resume_reading(self, *args: Any, **kwargs: Any) -> None:
        pass


class _Transport:
    """What the handler asks of a connection: the peer's address."""

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 40000) if name == "peername" else default

    def is_closing(self) -> bool:
        return False


def cookie_header(response: Any) -> str:
    """The ``Cookie`` header a browser sends after ``response``: every ``Set-Cookie`` it carried
    (edgeproxy writes its own headers, which ``response.cookies`` does not list)."""
    return "; ".join(value.split(";", 1)[0].strip() for value in response.headers.getall("Set-Cookie", ()))


async def handler_calls(calls: int, batch: bool) -> dict[str, Any]:
    """µs of CPU per call and per event through the handler (``batch``: ``/v1/b`` of 20)."""
    from aiohttp import streams
    from aiohttp.test_utils import make_mocked_request

    import _handler_only
    import _wrk as wrk
    from edgeproxy import compiled
    from edgeproxy.config import load_settings

    settings = load_settings(env={})  # the defaults, as the HTTP rows' edgeproxy runs them
    settings.server.ip_rate_limit = 0  # every call comes from one address, as in the HTTP benchmark
    data = tempfile.TemporaryDirectory(prefix="edgeproxy-bench-calls-")  # the signing key's file
    settings.delivery.data_dir = data.name
    queue = _handler_only.CountingQueue()
    handlers = _handler_only.build_handlers(settings, queue)
    loop = asyncio.get_running_loop()
    path = f"{settings.server.prefix}/v1/{'b' if batch else 't'}"
    per_call = wrk.BATCH_SIZE if batch else 1
    now = time.time()

    def request(body: bytes, cookie: str | None) -> Any:
        payload = streams.StreamReader(_Protocol(), 2**16, loop=loop)  # type: ignore[arg-type]
        payload.feed_data(body)
        payload.feed_eof()
        headers = {"Content-Type": "text/plain", "User-Agent": wrk.USER_AGENT, "Content-Length": str(len(body))}
        if cookie:
            headers["Cookie"] = cookie
        return make_mocked_request("POST", path, headers=headers, payload=payload, transport=_Transport())

    async def call(req: Any) -> Any:
        resp = await (handlers.batch(req) if batch else handlers.single("track", req))
        if resp.status != 200:
            raise SystemExit(f"handler-calls: the handler answered {resp.status}: {resp.text}")
        return resp

    n_visitors = min(VISITORS, calls)
    visitors = [str(uuid.UUID(int=i)) for i in range(n_visitors)]
    bodies = [(wrk.batch_body(now, anonymous_id=visitors[i % n_visitors]) if batch else
               wrk.single_body(now, anonymous_id=visitors[i % n_visitors], message_id=f"ajs-next-{i}")).encode()
              for i in range(calls)]
    cookies = []
    for i in range(n_visitors):  # each visitor's first call: what its cookies are from then on
        resp = await call(request(bodies[i], None))
        cookies.append(cookie_header(resp))
    prepared = [request(body, cookies[i % n_visitors]) for i, body in enumerate(bodies)]
    queued = queue.items
    cpu0 = time.process_time()
    answers = [await call(req) for req in prepared]
    cpu = time.process_time() - cpu0
    data.cleanup()
    device_cookie = settings.sessions.device_cookie
    return {"status": compiled.status(), "calls": calls, "events_per_call": per_call,
            "items_queued": queue.items - queued,  # what the timed calls mapped (one Amplitude item an event)
            # A returning visitor's device cookie is re-signed once a day, not per call: any here
            # means the timed calls' cookies were not read, and the figure is a new visitor's.
            "device_cookies_set": sum(any(v.startswith(f"{device_cookie}=") for v in a.headers.getall("Set-Cookie", ()))
                                      for a in answers),
            "us_per_call": cpu / calls * 1e6, "us_per_event": cpu / (calls * per_call) * 1e6}
