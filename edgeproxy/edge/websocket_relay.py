"""A WebSocket relayed between the visitor and the origin, message by message, both ways.

The origin proxy (``origin``) makes both connections; this copies messages until either
side closes and then closes the other with the same code, so an application's WebSocket
behaves through edgeproxy as it does direct.
"""

from __future__ import annotations

import asyncio
import logging

import aiohttp
from aiohttp import web

log = logging.getLogger("edgeproxy.origin")


async def _pump(
    source: web.WebSocketResponse | aiohttp.ClientWebSocketResponse,
    sink: web.WebSocketResponse | aiohttp.ClientWebSocketResponse,
) -> None:
    """Copy messages until ``source`` closes, then close ``sink`` with the same code."""
    async for msg in source:
        if msg.type == aiohttp.WSMsgType.TEXT:
            await sink.send_str(msg.data)
        elif msg.type == aiohttp.WSMsgType.BINARY:
            await sink.send_bytes(msg.data)
        elif msg.type == aiohttp.WSMsgType.ERROR:
            break
    code = source.close_code
    await sink.close(code=code if code and code not in (1005, 1006, 1015) else 1000)


async def relay_websockets(client: web.WebSocketResponse, upstream: aiohttp.ClientWebSocketResponse) -> None:
    tasks = [asyncio.ensure_future(_pump(client, upstream)), asyncio.ensure_future(_pump(upstream, client))]
    try:
        done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        # The finished side closed the other one; give the other pump a bounded moment to see it.
        if pending:
            await asyncio.wait(pending, timeout=10.0)
    finally:
        for task in tasks:
            if not task.done():
                task.cancel()
        for task in tasks:
            if task.done() and not task.cancelled() and task.exception() is not None:
                log.info("WebSocket relay ended: %r", task.exception())
