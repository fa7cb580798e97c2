"""A reference server for the ingest benchmark: edgeproxy's own tracking handler, no spool.

``python bench/_handler_only.py`` reads the same configuration as ``edgeproxy serve`` (the
bench passes it in ``EDGEPROXY_*`` variables) and serves ``{prefix}/v1/*`` with the real
``IngestHandlers``: body parsing, the signed cookies in and out, the session store's touch,
the mapping to Amplitude items, the cockpit's event trail (``[debug] trail_size``, as serve
wires it) and the response. Only the queue is replaced, by one that counts what it is given
and keeps nothing: no SQLite, no flush to disk, no delivery worker, no metrics middleware.

Why it is in the benchmark: it is the "parse-cookie-session-map" stand-in the speed targets
are set against, built from edgeproxy's own code, so the run itself says how much of a
tracking call is that work and how much is the durable spool and delivery around it. It is
a measurement aid only: a server that acknowledges events it does not keep is never
something to run.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout, uninstalled

from aiohttp import web  # noqa: E402

from edgeproxy.app import CLIENT_MAX_SIZE  # noqa: E402
from edgeproxy.cockpit.trail import open_trail  # noqa: E402
from edgeproxy.cli import prepare_gc  # noqa: E402
from edgeproxy.config import Settings, load_settings  # noqa: E402
from edgeproxy.delivery.records import DeadLetter, SpoolItem  # noqa: E402
from edgeproxy.edge.ingest import IngestContext, IngestHandlers  # noqa: E402
from edgeproxy.identity.service import IdentityService  # noqa: E402
from edgeproxy.mapping import Mapper  # noqa: E402
from edgeproxy.metrics import Metrics  # noqa: E402


class CountingQueue:
    """Takes an append and forgets it (the one method the ingest handlers call)."""

    def __init__(self) -> None:
        self.items = 0

    async def append(self, items: Sequence[SpoolItem], dead: Sequence[DeadLetter] = ()) -> None:
        self.items += len(items) + len(dead)


def build_handlers(settings: Settings, queue: CountingQueue) -> IngestHandlers:
    """The tracking handlers as ``edgeproxy.app.create_app`` builds them, around ``queue``."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)  # the signing key file lives there
    identity = IdentityService.from_settings(settings)
    mapper = Mapper(settings.amplitude.as_mapping_config(), strict_settings=False)
    context = IngestContext(settings, identity, mapper, queue, Metrics(), trail=open_trail(settings.debug.trail_size))  # type: ignore[arg-type]
    return IngestHandlers(context)


def build_app(settings: Settings, queue: CountingQueue) -> web.Application:
    """The tracking routes as ``edgeproxy.app.create_app`` wires them, around ``queue``."""
    handlers = build_handlers(settings, queue)
    app = web.Application(client_max_size=CLIENT_MAX_SIZE)
    app.add_routes(handlers.routes(settings.server.prefix))
    return app


def main() -> None:
    import uvloop

    settings = load_settings()
    app = build_app(settings, CountingQueue())
    uvloop.install()  # as `edgeproxy serve` does
    prepare_gc()
    web.run_app(app, host=settings.server.host, port=settings.server.port, print=None, access_log=None)


if __name__ == "__main__":
    main()
