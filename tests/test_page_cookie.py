"""The device cookie on proxied HTML pages, and never on pages a shared cache may keep."""

from __future__ import annotations

import pytest
from aiohttp import web
from multidict import CIMultiDict
from test_ingest import make_settings, track

from edgeproxy.app import create_app
from edgeproxy.edge.cookies_out import shared_cacheable
from edgeproxy.identity.cookies import CookieCodec


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


async def test_a_page_view_verifies_the_device_cookie_only(site, monkeypatch: pytest.MonkeyPatch) -> None:
    """A page sets at most the device cookie: the session cookie (~10 µs to verify) is not read."""
    first = await site.post("/_e/v1/t", json=track(anonymousId="anon-page-1", messageId="m-page-1"))
    assert first.status == 200 and "_ep_sess" in first.cookies
    sessions_read: list[str] = []
    real = CookieCodec.load_session

    def load_session(self: CookieCodec, value: str | None, device_id: str | None):  # type: ignore[no-untyped-def]
        sessions_read.append(device_id or "")
        return real(self, value, device_id)

    monkeypatch.setattr(CookieCodec, "load_session", load_session)
    resp = await site.get("/", params={"cc": "private, max-age=60"})
    assert resp.status == 200 and resp.cookies.get("_ep_did") is None  # known, fresh device: nothing to renew
    assert sessions_read == []
    await site.post("/_e/v1/t", json=track(anonymousId="anon-page-1", messageId="m-page-2"))
    assert sessions_read == ["anon-page-1"]  # a tracking call still reads it
