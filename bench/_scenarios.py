"""The bench's HTTP scenarios: which servers a run starts and what each is measured with.

Apart from ``bench_ingest.py`` (the rounds, their summary and the run's order): starting
the references and the edgeproxy processes, the request bodies and cookies each target
posts, and the website's page, are the scenarios' set-up, not the measurement.
"""

from __future__ import annotations

import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import _servers as srv
import _wrk as wrk
from _servers import BenchError, Processes, Server

BROWSER_BATCH = 10  # analytics.js's default batch size (`[cdn] browser_batch_size`)
PAGE_BYTES = 100 * 1024


@dataclass
class Target:
    """One server and the request it is measured with (a row of raw figures)."""

    key: str
    label: str
    url: str
    saturation: Path
    moderate: Path | None
    events_per_request: int = 1
    edge: Server | None = None  # an edgeproxy: wait for its delivery to catch up after each round
    mod_connections: int = wrk.MODERATE_CONNECTIONS  # calibrated so the achieved rate is ~1,000 req/s
    cpu_busy: list[float] = field(default_factory=list)  # edgeproxy's CPU use per run, share of one core
    cpu_to_drained: list[float] = field(default_factory=list)  # edgeproxy's CPU-s per run, delivery included
    events: list[int] = field(default_factory=list)  # events acknowledged per run
    sat: list[wrk.WrkResult] = field(default_factory=list)
    mod: list[wrk.WrkResult] = field(default_factory=list)


def returning_cookie(edge: Server, body: str) -> str:
    """The Cookie header of a returning visitor: what edgeproxy set on a first tracking call."""
    req = urllib.request.Request(edge.url("/_e/v1/t"), data=body.encode(), method="POST",
                                 headers={"Content-Type": "text/plain", "User-Agent": wrk.USER_AGENT})
    with urllib.request.urlopen(req, timeout=10) as resp:
        if resp.status != 200:
            raise BenchError(f"bench: {edge.name} answered {resp.status} to the first tracking call")
        pairs = [c.split(";", 1)[0].strip() for c in resp.headers.get_all("Set-Cookie") or []]
    if not pairs:
        raise BenchError(f"bench: {edge.name} set no cookie on the first tracking call")
    return "; ".join(pairs)


def write_site(site_dir: Path) -> str:
    """A 100 KB HTML page for the origin to serve as a static file."""
    site_dir.mkdir()
    row = '<p class="copy">Merino Wool Runner: breathable, light and machine washable. <a href="/p/1">More</a></p>\n'
    head = "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>Shop</title></head><body>\n"
    tail = "</body></html>\n"
    html = head + row * ((PAGE_BYTES - len(head) - len(tail)) // len(row))
    html += " " * (PAGE_BYTES - len(html) - len(tail)) + tail
    (site_dir / "page.html").write_text(html)
    return "/page.html"


def build_targets(procs: Processes, only: set[str], tmp: Path, responder: Server | None) -> list[Target]:
    """Start the servers the chosen scenarios need and describe each measured (server, request)."""
    now = time.time()
    single, batch = wrk.single_body(now), wrk.batch_body(now)
    page = write_site(tmp / "site")
    nginx, origin = srv.start_nginx_reference(procs, tmp / "site")
    targets: list[Target] = []

    def scripted(name: str, **kw: Any) -> tuple[Path, Path]:
        return (wrk.script(tmp / f"{name}.lua", **kw), wrk.script(tmp / f"{name}-moderate.lua", moderate=True, **kw))

    if only & {"ingest", "new", "batch", "redis", "crash"}:
        bare = srv.start_bare_aiohttp(procs)
        targets.append(Target("nginx", "nginx 204 (reference)", nginx.url("/_e/v1/t"), *scripted("ref", body=single)))
        targets.append(Target("bare", "bare aiohttp (reference)", bare.url("/_e/v1/t"), *scripted("ref", body=single)))
    assert responder is not None
    amp_url = responder.url()
    if only & {"ingest", "compiled"}:
        handler = srv.start_handler_only(procs, "handler-only", origin_url=origin.url())
        targets.append(Target("handler", "edgeproxy handler, no spool (reference)", handler.url("/_e/v1/t"),
                              *scripted("handler", body=single, cookie=returning_cookie(handler, single))))
    if "compiled" in only:
        pure = srv.start_handler_only(procs, "handler-pure", origin_url=origin.url(), pure=True)
        targets.append(Target("pure", "edgeproxy handler, no spool, pure Python", pure.url("/_e/v1/t"),
                              *scripted("pure", body=single, cookie=returning_cookie(pure, single))))
    if only & {"ingest", "new", "batch", "website", "browser", "trail"}:
        edge = srv.start_edgeproxy(procs, "edgeproxy", amplitude_url=amp_url, origin_url=origin.url())
        cookie = returning_cookie(edge, single)
        if "trail" in only:
            # Two processes of their own that serve nothing else, so the two sides are equals (the
            # shared one also takes the new-visitors rounds and ends up holding far more sessions).
            full = srv.start_edgeproxy(procs, "edgeproxy-trail", amplitude_url=amp_url, origin_url=origin.url(),
                                       trail_size=1000)
            targets.append(Target("trail", "edgeproxy /v1/t, trail_size 1,000 (the default)", full.url("/_e/v1/t"),
                                  *scripted("trail", body=single, cookie=returning_cookie(full, single)), edge=full))
            quiet = srv.start_edgeproxy(procs, "edgeproxy-no-trail", amplitude_url=amp_url, origin_url=origin.url(),
                                        trail_size=0)
            targets.append(Target("notrail", "edgeproxy /v1/t, trail_size 0", quiet.url("/_e/v1/t"),
                                  *scripted("notrail", body=single, cookie=returning_cookie(quiet, single)), edge=quiet))
        if "browser" in only:
            targets.append(Target("browser1", "browser-shaped, one /v1/t per event", edge.url("/_e/v1/t"),
                                  scripted("browser1", body=single, cookie=cookie)[0], None, edge=edge))
            batched = wrk.batch_body(now, size=BROWSER_BATCH)
            targets.append(Target("browser10", f"browser-shaped, /v1/b of {BROWSER_BATCH}", edge.url("/_e/v1/b"),
                                  scripted("browser10", body=batched, cookie=cookie)[0], None,
                                  events_per_request=BROWSER_BATCH, edge=edge))
        if "ingest" in only:
            targets.append(Target("ingest", "edgeproxy /v1/t returning visitor", edge.url("/_e/v1/t"),
                                  *scripted("ingest", body=single, cookie=cookie), edge=edge))
        if "new" in only:
            body = wrk.single_body(now, anonymous_id=wrk.ANON_MARK, message_id=wrk.MSG_MARK)
            targets.append(Target("new", "edgeproxy /v1/t new visitors", edge.url("/_e/v1/t"),
                                  *scripted("new", body=body, new_visitors=True), edge=edge))
        if "batch" in only:
            sat, _ = scripted("batch", body=batch, cookie=cookie)
            targets.append(Target("batch", "edgeproxy /v1/b, 20 events", edge.url("/_e/v1/b"), sat, None,
                                  events_per_request=wrk.BATCH_SIZE, edge=edge))
        if "website" in only:
            targets.append(Target("origin", "origin direct (nginx static)", origin.url(page), *scripted("get")))
            bare_proxy = srv.start_bare_aiohttp_proxy(procs, origin.url())
            targets.append(Target("bareproxy", "bare aiohttp proxy (reference)", bare_proxy.url(page), *scripted("get")))
            targets.append(Target("website", "edgeproxy website pass-through", edge.url(page),
                                  *scripted("get-cookie", cookie=cookie), edge=edge))
    if "crash" in only:
        edge_c = srv.start_edgeproxy(procs, "edgeproxy-crash", amplitude_url=amp_url, origin_url=origin.url(),
                                     durability="process_crash")
        cookie_c = returning_cookie(edge_c, single)
        targets.append(Target("crash", "edgeproxy /v1/t process_crash", edge_c.url("/_e/v1/t"),
                              *scripted("crash", body=single, cookie=cookie_c), edge=edge_c))
    if "redis" in only:
        redis = srv.start_redis(procs)
        edge_r = srv.start_edgeproxy(procs, "edgeproxy-redis", amplitude_url=amp_url, origin_url=origin.url(),
                                     session_store=f"redis://127.0.0.1:{redis.port}/0")
        cookie_r = returning_cookie(edge_r, single)
        targets.append(Target("redis", "edgeproxy /v1/t Redis sessions", edge_r.url("/_e/v1/t"),
                              *scripted("redis", body=single, cookie=cookie_r), edge=edge_r))
    return targets
