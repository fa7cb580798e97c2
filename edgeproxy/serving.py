"""Running the app: aiohttp's ``run_app``, with the connection guard in front of its protocol.

``web.run_app`` builds its ``TCPSite`` itself, so it cannot take ``GuardedSite``; this is the
same loop (signals raise ``GracefulExit``, then the runner's cleanup runs the app's shutdown
with ``shutdown_grace``), with aiohttp's keep-alive timer set from ``idle_timeout`` and no
lingering read of a body the handler did not want (``lingering_time=0``: a 400 for a bad
body closes the connection instead of reading and logging the rest), and the structured
access log when ``[server] access_log`` is on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from aiohttp import web

from edgeproxy.edge.connections import GuardedSite
from edgeproxy.logs import ACCESS_LOGGER, AccessLogger


async def _serve(app: web.Application, settings: Any, reuse_port: bool) -> None:
    server = settings.server
    access_log = logging.getLogger(ACCESS_LOGGER) if server.access_log else None
    runner = web.AppRunner(app, handle_signals=True, access_log=access_log, access_log_class=AccessLogger,
                           shutdown_timeout=server.shutdown_grace, keepalive_timeout=server.idle_timeout,
                           lingering_time=0)
    await runner.setup()
    try:
        site = GuardedSite(runner, server.host, server.port, max_per_ip=server.max_connections_per_ip,
                           header_timeout=server.header_timeout, exempt=server.trusted_proxies,
                           reuse_port=reuse_port or None, shutdown_timeout=server.shutdown_grace)
        await site.start()
        while True:
            await asyncio.sleep(3600)
    finally:
        await runner.cleanup()


def run(app: web.Application, settings: Any, *, reuse_port: bool = False) -> None:
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    main = loop.create_task(_serve(app, settings, reuse_port))
    try:
        loop.run_until_complete(main)
    except (web.GracefulExit, KeyboardInterrupt):
        pass
    finally:
        try:
            if not main.done():
                main.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    loop.run_until_complete(main)
        finally:
            pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
            for task in pending:
                task.cancel()
            if pending:
                loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()
