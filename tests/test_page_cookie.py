"""The device cookie on proxied HTML pages, and never on pages a shared cache may keep."""

from __future__ import annotations

import pytest
from aiohttp import web
from multidict import CIMultiDict
from test_ingest import make_settings

from edgeproxy.app import create_app
from edgeproxy.edge.cookies_out import shared_cacheable


@pytest.mark.parametrize(
    ("headers", "cacheable"),
    [
        ({}, False),
        ({"Cache-Control": "no-cache"}, False),
        ({"Cache-Control": "private, max-age=600"}, False),
        ({"Cache-Control": "no-store"}, False),
        ({"Cache-Control": "max-age=0"}, False),
        ({"Cache-Control": "public"}, True),
        ({"Cache-Control": "public, max-age=0, must-revalidate"}, True),
        ({"Cache-Control": "s-maxage=300"}, True),
        ({"Cache-Control": "Max-Age=600"}, True),
        ({"Cache-Control": 'max-age="60"'}, True),
        ({"Expires": "Thu, 01 Dec 2030 16:00:00 GMT"}, True),
        ({"Cache-Control": "no-cache", "Expires": "Thu, 01 Dec 2030 16:00:00 GMT"}, False),
    ],
)
def test_shared_cacheable(headers: dict[str, str], cacheable: bool) -> None:
    assert shared_cacheable(CIMultiDict(headers)) is cacheable


@pytest.fixture
async def site(aiohttp_client, aiohttp_server, tmp_path):
    async def page(request: web.Request) -> web.Response:
        headers = {"Cache-Control": request.query["cc"]} if "cc" in request.query else {}
        return web.Response(body=b"<html><head></head><body>hi</body></html>", content_type="text/html",
                            headers=headers)

    origin = web.Application()
    origin.router.add_get("/", page)
    server = await aiohttp_server(origin)
    return await aiohttp_client(create_app(make_settings(tmp_path, origin__url=str(server.make_url("/")))))


async def test_a_private_page_gets_the_device_cookie(site) -> None:
    resp = await site.get("/", params={"cc": "private, max-age=60"})
    assert resp.status == 200 and "_ep_did" in resp.cookies
    assert (await site.get("/")).cookies.get("_ep_did") is None  # fresh cookie: not re-sent on the next page


async def test_a_page_a_cdn_may_cache_gets_no_cookie(site) -> None:
    resp = await site.get("/", params={"cc": "public, max-age=600"})
    assert resp.status == 200 and "hi" in await resp.text()
    assert "_ep_did" not in resp.cookies and "Set-Cookie" not in resp.headers
