"""The first-party CDN surfaces: settings JSON, the session plugin, analytics.js itself."""

from __future__ import annotations

import asyncio
import gzip
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp_remotes import XForwardedRelaxed
from yarl import URL

from edgeproxy.config import Settings
from edgeproxy.edge.cdn import PLUGIN_FILE, STATIC_DIR, setup_cdn

KEY = "wk_test123"
NODE_TEST = Path(__file__).parent / "js" / "session_plugin.test.mjs"
# The real analytics.js, when `npm ci` has been run in tests/js.
REAL_UMD = Path(__file__).parent / "js" / "node_modules" / "@segment" / "analytics-next" / "dist" / "umd"


def make_settings(**cdn: str) -> Settings:
    s = Settings()
    for k, v in cdn.items():
        setattr(s.cdn, k, v)
    return s


@pytest.fixture
def client_for(aiohttp_client):
    """Build a small app holding only the CDN routes (plus trusted X-Forwarded-* like the lead's app)."""

    async def make(settings: Settings | None = None, *, static_dir: Path | None = None, forwarded: bool = False):
        app = web.Application()
        if forwarded:
            await XForwardedRelaxed().setup(app)
        setup_cdn(app, settings or make_settings(upstream="http://127.0.0.1:9"), static_dir=static_dir)
        return await aiohttp_client(app)

    return make


async def get(client, path: str, **headers: str):
    """GET with the path sent exactly as written (no client-side normalisation)."""
    return await client.get(URL(path, encoded=True), headers=headers, allow_redirects=False)


async def get_settings(client, key: str = KEY, **headers: str) -> dict:
    resp = await get(client, f"/_e/v1/projects/{key}/settings", **headers)
    assert resp.status == 200, await resp.text()
    return await resp.json()


# ---------------------------------------------------------------- settings


async def test_settings_shape_points_everything_back_at_the_proxy(client_for):
    settings = make_settings(upstream="http://127.0.0.1:9")
    settings.sessions.timeout = 600.0
    client = await client_for(settings)
    resp = await get(client, f"/_e/v1/projects/{KEY}/settings", Host="shop.example.com:8443")
    assert resp.status == 200
    assert resp.headers["Cache-Control"] == "public, max-age=60"
    assert "Host" in resp.headers["Vary"]
    assert resp.headers["Access-Control-Allow-Origin"] == "*"
    body = await resp.json()
    seg = body["integrations"]["Segment.io"]
    assert seg["apiKey"] == KEY
    assert seg["apiHost"] == "shop.example.com:8443/_e/v1"
    assert seg["protocol"] == "http"
    assert body["integrations"]["Actions Amplitude"] == {"versionSettings": {"componentTypes": []}}
    assert body["metrics"]["sampleRate"] == 0
    assert body["metrics"]["host"] == "shop.example.com:8443/_e/v1"
    assert "segment.io" not in str(body) and "segment.com" not in str(body)
    [plugin] = body["remotePlugins"]
    assert plugin["creationName"] == "Actions Amplitude"
    assert plugin["name"] == "Amplitude (Actions)"
    assert plugin["url"].startswith("http://shop.example.com:8443/_e/p/") and plugin["url"].endswith(".js")
    [sub] = plugin["settings"]["subscriptions"]
    assert sub["enabled"] is True and sub["partnerAction"] == "sessionId"
    assert sub["mapping"]["sessionLength"] == 600_000

    # The plugin URL resolves to the plugin route, which serves the file defining libraryName.
    js = await get(client, URL(plugin["url"]).path)
    assert js.status == 200
    assert js.content_type == "application/javascript"
    text = await js.text()
    assert text == (STATIC_DIR / PLUGIN_FILE).read_text()
    assert f'"{plugin["libraryName"]}"' in text


async def test_settings_honour_trusted_forwarded_scheme_and_host(client_for):
    client = await client_for(forwarded=True)
    body = await get_settings(client, **{"X-Forwarded-Proto": "https", "X-Forwarded-Host": "www.example.org", "X-Forwarded-For": "203.0.113.9"})
    assert body["integrations"]["Segment.io"]["protocol"] == "https"
    assert body["integrations"]["Segment.io"]["apiHost"] == "www.example.org/_e/v1"
    assert body["remotePlugins"][0]["url"].startswith("https://www.example.org/_e/p/")


async def test_routes_follow_the_configured_prefix(client_for):
    settings = make_settings(upstream="http://127.0.0.1:9")
    settings.server.prefix = "/edge/x"
    client = await client_for(settings)
    assert (await get(client, f"/_e/v1/projects/{KEY}/settings")).status == 404
    resp = await get(client, f"/edge/x/v1/projects/{KEY}/settings", Host="h.test")
    body = await resp.json()
    assert body["integrations"]["Segment.io"]["apiHost"] == "h.test/edge/x/v1"
    assert (await get(client, URL(body["remotePlugins"][0]["url"]).path)).status == 200


async def test_write_key_list(client_for):
    settings = make_settings(upstream="http://127.0.0.1:9")
    settings.segment.write_keys = ["good1", "good2"]
    client = await client_for(settings)
    assert (await get_settings(client, "good2"))["integrations"]["Segment.io"]["apiKey"] == "good2"
    resp = await get(client, "/_e/v1/projects/nope/settings")
    assert resp.status == 404
    assert resp.content_type == "application/json"
    assert "unknown write key" in (await resp.json())["error"]
    # the library route refuses the same keys
    assert (await get(client, "/_e/analytics.js/v1/nope/analytics.min.js")).status == 404


async def test_any_key_without_a_list_but_not_any_characters(client_for):
    client = await client_for()
    assert (await get_settings(client, "whatever-Key_1x"))["integrations"]["Segment.io"]["apiKey"] == "whatever-Key_1x"
    for bad in ("bad%22key", ".", "..", "-x", "a.b", "k" * 65, "%2e"):
        for path in (f"/_e/v1/projects/{bad}/settings", f"/_e/analytics.js/v1/{bad}/analytics.min.js"):
            resp = await get(client, path)
            assert resp.status in (400, 404), (path, resp.status)
            if resp.status == 400:
                assert "write key is 1-64 letters" in (await resp.json())["error"]
    assert (await get(client, "/_e/analytics.js/v1/./analytics.min.js")).status in (400, 404)
    resp = await get(client, f"/_e/analytics.js/v1/{'k' * 65}/analytics.min.js")
    assert resp.status == 400  # never an upstream path or cache entry for it


async def test_bad_host_header_is_refused(client_for):
    client = await client_for()
    resp = await get(client, f"/_e/v1/projects/{KEY}/settings", Host='evil";alert(1)//')
    assert resp.status == 400
    assert "Host" in (await resp.json())["error"]


# ---------------------------------------------------------------- plugin


async def plugin_path(client) -> str:
    return URL((await get_settings(client))["remotePlugins"][0]["url"]).path


async def test_plugin_caching_etag_and_gzip(client_for):
    client = await client_for()
    path = await plugin_path(client)
    plain = await get(client, path, **{"Accept-Encoding": "identity"})
    assert plain.status == 200
    assert plain.headers["Cache-Control"] == "public, max-age=31536000, immutable"
    assert "Content-Encoding" not in plain.headers
    etag = plain.headers["ETag"]
    raw = await plain.read()
    assert raw == (STATIC_DIR / PLUGIN_FILE).read_bytes()

    zipped = await get(client, path, **{"Accept-Encoding": "gzip, deflate, br"})
    assert zipped.headers["Content-Encoding"] == "gzip"
    assert zipped.headers["Vary"] == "Accept-Encoding"
    assert await zipped.read() == raw  # the client decodes it; the bytes are the file's
    gz_etag = zipped.headers["ETag"]
    assert gz_etag != etag

    refused = await get(client, path, **{"Accept-Encoding": "gzip;q=0, identity"})
    assert "Content-Encoding" not in refused.headers

    for tag in (etag, gz_etag, f"W/{etag}", f'"other", {etag}'):
        resp = await get(client, path, **{"If-None-Match": tag})
        assert resp.status == 304, tag
        assert await resp.read() == b""
    assert (await get(client, path, **{"If-None-Match": '"stale"'})).status == 200


async def test_plugin_name_is_a_content_hash(client_for, tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    for d, text in ((one, "window.a=1;"), (two, "window.a=2;")):
        d.mkdir()
        (d / PLUGIN_FILE).write_text(text)
    client_one = await client_for(static_dir=one)
    client_two = await client_for(static_dir=two)
    path_one, path_two = await plugin_path(client_one), await plugin_path(client_two)
    assert path_one != path_two
    assert await (await get(client_one, path_one)).text() == "window.a=1;"
    assert (await get(client_one, path_two)).status == 404
    assert (await get(client_one, "/_e/p/0123456789abcdef0123.js")).status == 404


# ---------------------------------------------------------------- analytics.js from a local dir


@pytest.fixture
def umd(tmp_path) -> Path:
    """A fake dist/umd, with a secret file beside it that must never be served."""
    d = tmp_path / "umd"
    d.mkdir()
    (d / "standalone.js").write_text("/* standalone */ var x = 1;")
    (d / "ajs-destination.bundle.40628baed746e9904edc.js").write_text("/* chunk */")
    # npm ships precompressed siblings; the proxy serves them as they are.
    (d / "ajs-destination.bundle.40628baed746e9904edc.js.gz").write_bytes(gzip.compress(b"/* chunk */", mtime=12345))
    (d / "index.js").write_text("/* index */")
    (d / "notes.txt").write_text("not servable")
    (tmp_path / "secret.js").write_text("SECRET")
    return d


async def test_analytics_js_from_local_dir(client_for, umd):
    client = await client_for(make_settings(analytics_js_dir=str(umd)))
    resp = await get(client, f"/_e/analytics.js/v1/{KEY}/analytics.min.js", Host="site.test:8080")
    assert resp.status == 200
    assert resp.content_type == "application/javascript"
    assert resp.headers["Cache-Control"].startswith("public, max-age=")
    text = await resp.text()
    prelude, _, rest = text.partition("\n")
    assert prelude == 'window.analytics&&(window.analytics._cdn=window.analytics._cdn||"http://site.test:8080/_e");'
    assert rest == "/* standalone */ var x = 1;"
    etag = resp.headers["ETag"]
    assert (await get(client, f"/_e/analytics.js/v1/{KEY}/analytics.min.js", Host="site.test:8080", **{"If-None-Match": etag})).status == 304
    other_host = await get(client, f"/_e/analytics.js/v1/{KEY}/analytics.min.js", Host="other.test")
    assert '"http://other.test/_e"' in await other_host.text()

    chunk = await get(client, "/_e/analytics-next/bundles/ajs-destination.bundle.40628baed746e9904edc.js", **{"Accept-Encoding": "gzip"})
    assert chunk.status == 200
    assert chunk.headers["Cache-Control"] == "public, max-age=31536000, immutable"
    assert chunk.headers["Content-Encoding"] == "gzip"
    assert await chunk.read() == b"/* chunk */"
    assert (await get(client, "/_e/analytics-next/bundles/index.js")).headers["Cache-Control"] != "public, max-age=31536000, immutable"
    for missing in ("nope.js", "notes.txt", "ajs-destination.bundle.40628baed746e9904edc.js.gz"):
        assert (await get(client, f"/_e/analytics-next/bundles/{missing}")).status == 404, missing


async def test_local_copy_gets_the_write_key_substituted_like_segments_cdn(client_for, umd):
    """npm's standalone.js carries the ``__WRITE_KEY__`` placeholder; cdn.segment.com replaces it per key."""
    (umd / "standalone.js").write_text('try{window.analyticsWriteKey="__WRITE_KEY__"}catch(t){}/* __WRITE_KEY__ */')
    client = await client_for(make_settings(analytics_js_dir=str(umd)))
    for key in (KEY, "other-key"):
        text = await (await get(client, f"/_e/analytics.js/v1/{key}/analytics.min.js")).text()
        assert text.endswith(f'try{{window.analyticsWriteKey="{key}"}}catch(t){{}}/* {key} */'), text
        assert "__WRITE_KEY__" not in text


async def test_local_gzip_sibling_is_served_as_is(client_for, umd):
    client = await client_for(make_settings(analytics_js_dir=str(umd)))
    name = "ajs-destination.bundle.40628baed746e9904edc.js"
    resp = await client.get(f"/_e/analytics-next/bundles/{name}", headers={"Accept-Encoding": "gzip"}, auto_decompress=False)
    assert await resp.read() == (umd / f"{name}.gz").read_bytes()


async def test_local_dir_without_standalone_is_a_clear_404(client_for, tmp_path):
    client = await client_for(make_settings(analytics_js_dir=str(tmp_path)))
    resp = await get(client, f"/_e/analytics.js/v1/{KEY}/analytics.min.js")
    assert resp.status == 404
    assert "standalone.js" in (await resp.json())["error"]


TRAVERSALS = [
    "/_e/p/..%2F..%2Fpyproject.toml",
    "/_e/p/%2e%2e%2fsecret.js",
    "/_e/p/../secret.js",
    "/_e/analytics-next/bundles/..%2Fsecret.js",
    "/_e/analytics-next/bundles/%2e%2e%2fsecret.js",
    "/_e/analytics-next/bundles/..%5Csecret.js",
    "/_e/analytics-next/bundles/../../secret.js",
    "/_e/analytics-next/bundles/..",
    "/_e/analytics-next/bundles/%2Fetc%2Fpasswd",
    "/_e/analytics.js/v1/..%2F..%2Fsecret.js/analytics.min.js",
    "/_e/analytics.js/v1/../analytics.min.js",
]


@pytest.mark.parametrize("path", TRAVERSALS)
async def test_traversal_attempts_are_refused(client_for, umd, path):
    client = await client_for(make_settings(analytics_js_dir=str(umd)))
    resp = await get(client, path)
    body = await resp.read()
    assert resp.status in (400, 404), (path, resp.status)
    assert b"SECRET" not in body and b"[build-system]" not in body


async def test_traversal_never_reaches_the_upstream(client_for, aiohttp_server):
    seen: list[str] = []

    async def anything(request: web.Request) -> web.Response:
        seen.append(request.raw_path)
        return web.Response(text="UPSTREAM")

    upstream_app = web.Application()
    upstream_app.router.add_route("GET", "/{tail:.*}", anything)
    upstream = await aiohttp_server(upstream_app)
    client = await client_for(make_settings(upstream=str(upstream.make_url(""))))
    for path in TRAVERSALS:
        resp = await get(client, path)
        assert resp.status in (400, 404), path
    assert seen == []


# ---------------------------------------------------------------- analytics.js from an upstream


@pytest.fixture
async def fake_cdn(aiohttp_server):
    """A local stand-in for cdn.segment.com that counts hits and can be made to fail."""
    state = {"hits": [], "status": 200, "gate": None}

    async def library(request: web.Request) -> web.Response:
        state["hits"].append(request.path)
        if request.match_info["key"] == "unknownupstream":
            return web.Response(status=404, text="Not Found")
        if state["gate"] is not None:
            await state["gate"].wait()
        if state["status"] != 200:
            return web.Response(status=state["status"], text="upstream trouble")
        return web.Response(text=f"/* ajs for {request.match_info['key']} */", content_type="application/javascript")

    async def bundle(request: web.Request) -> web.Response:
        state["hits"].append(request.path)
        if request.match_info["file"] == "missing.js":
            return web.Response(status=404)
        return web.Response(text=f"/* {request.match_info['file']} */", content_type="application/javascript")

    app = web.Application()
    app.router.add_get("/analytics.js/v1/{key}/analytics.min.js", library)
    app.router.add_get("/analytics-next/bundles/{file}", bundle)
    server = await aiohttp_server(app)
    state["url"] = str(server.make_url(""))
    return state


async def test_upstream_fetched_once_then_cached(client_for, fake_cdn):
    client = await client_for(make_settings(upstream=fake_cdn["url"]))
    for host in ("a.test", "b.test", "a.test"):
        resp = await get(client, f"/_e/analytics.js/v1/{KEY}/analytics.min.js", Host=host)
        assert resp.status == 200
        text = await resp.text()
        assert text.endswith(f"/* ajs for {KEY} */")
        assert f'"http://{host}/_e"' in text
    assert fake_cdn["hits"] == [f"/analytics.js/v1/{KEY}/analytics.min.js"]
    # another write key is another upstream file
    assert (await get(client, "/_e/analytics.js/v1/other/analytics.min.js")).status == 200
    assert len(fake_cdn["hits"]) == 2

    name = "schemaFilter.bundle.a6a77355d52c20e3a83d.js"
    for _ in range(3):
        resp = await get(client, f"/_e/analytics-next/bundles/{name}")
        assert await resp.text() == f"/* {name} */"
        assert resp.headers["Cache-Control"] == "public, max-age=31536000, immutable"
    assert fake_cdn["hits"].count(f"/analytics-next/bundles/{name}") == 1
    assert (await get(client, "/_e/analytics-next/bundles/missing.js")).status == 404
    # a key the upstream does not know is a 404 here too, not a 502
    assert (await get(client, "/_e/analytics.js/v1/unknownupstream/analytics.min.js")).status == 404


async def test_concurrent_requests_share_one_upstream_fetch(client_for, fake_cdn):
    client = await client_for(make_settings(upstream=fake_cdn["url"]))
    fake_cdn["gate"] = asyncio.Event()
    tasks = [asyncio.create_task(get(client, f"/_e/analytics.js/v1/{KEY}/analytics.min.js")) for _ in range(5)]
    for _ in range(200):  # bounded: wait until the one upstream request is in flight
        if fake_cdn["hits"]:
            break
        await asyncio.sleep(0.01)
    fake_cdn["gate"].set()
    responses = await asyncio.wait_for(asyncio.gather(*tasks), 10)
    assert [r.status for r in responses] == [200] * 5
    assert len(fake_cdn["hits"]) == 1


async def test_upstream_error_is_502_and_not_cached(client_for, fake_cdn):
    client = await client_for(make_settings(upstream=fake_cdn["url"]))
    fake_cdn["status"] = 503
    resp = await get(client, f"/_e/analytics.js/v1/{KEY}/analytics.min.js")
    assert resp.status == 502
    assert "HTTP 503" in (await resp.json())["error"]
    fake_cdn["status"] = 200
    assert (await get(client, f"/_e/analytics.js/v1/{KEY}/analytics.min.js")).status == 200
    assert len(fake_cdn["hits"]) == 2


async def test_upstream_down_is_502(client_for, aiohttp_server):
    gone = await aiohttp_server(web.Application())
    url = str(gone.make_url(""))
    await gone.close()
    client = await client_for(make_settings(upstream=url))
    for path in (f"/_e/analytics.js/v1/{KEY}/analytics.min.js", "/_e/analytics-next/bundles/x.bundle.js"):
        resp = await get(client, path)
        assert resp.status == 502
        assert "unreachable" in (await resp.json())["error"]


# ---------------------------------------------------------------- the plugin in a JS engine


async def test_session_plugin_in_node(client_for, tmp_path):
    """The plugin bytes the proxy serves, under the libraryName its settings give, run in node."""
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed: the session plugin's JS tests need it")
    client = await client_for()
    plugin = (await get_settings(client))["remotePlugins"][0]
    served = tmp_path / "plugin.js"
    served.write_bytes(await (await get(client, URL(plugin["url"]).path)).read())
    env = {**os.environ, "PLUGIN_PATH": str(served), "PLUGIN_LIBRARY": plugin["libraryName"]}
    proc = await asyncio.to_thread(
        subprocess.run, [node, "--test", str(NODE_TEST)], env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    passed = re.search(r"^# pass (\d+)$", proc.stdout, re.M)
    assert "# fail 0" in proc.stdout and passed and int(passed.group(1)) > 0, proc.stdout[-2000:]


async def test_real_analytics_next_dist_is_served_with_its_chunks(client_for):
    """Against the real npm dist/umd: the file names we rely on, and the _cdn hook we prepend to."""
    if not (REAL_UMD / "standalone.js").is_file():
        pytest.skip("run `npm ci` in tests/js to test against the real @segment/analytics-next dist")
    client = await client_for(make_settings(analytics_js_dir=str(REAL_UMD)))
    resp = await get(client, f"/_e/analytics.js/v1/{KEY}/analytics.min.js", Host="site.test")
    text = await resp.text()
    assert text.startswith('window.analytics&&(window.analytics._cdn=window.analytics._cdn||"http://site.test/_e");')
    real = (REAL_UMD / "standalone.js").read_text()
    assert 'window.analyticsWriteKey="__WRITE_KEY__"' in real
    assert text.endswith(real.replace("__WRITE_KEY__", KEY))
    assert f'window.analyticsWriteKey="{KEY}"' in text
    # The bundle reads analytics._cdn and loads its chunks from <cdn>/analytics-next/bundles/.
    assert "._cdn" in real and '"/analytics-next/bundles/"' in real
    chunks = sorted(p.name for p in REAL_UMD.glob("*.bundle.*.js"))
    assert any(name.startswith("ajs-destination.bundle.") for name in chunks)
    for name in chunks:
        chunk = await get(client, f"/_e/analytics-next/bundles/{name}", **{"Accept-Encoding": "gzip"})
        assert chunk.status == 200, name
        assert await chunk.read() == (REAL_UMD / name).read_bytes()


def test_browser_batching_settings_and_their_checks(tmp_path) -> None:
    """`[cdn] browser_batching` puts analytics.js's batching strategy in the settings it serves
    (Segment's shape: integrations["Segment.io"].deliveryStrategy); the size and timeout are
    checked. The Chromium side: test_browser_batching.py."""
    from edgeproxy.config import ConfigError, load_settings, validate
    from edgeproxy.edge.cdn import build_settings

    common = dict(write_key="wk", api_host="www.example.com/_e/v1", protocol="https",
                  plugin_url="https://www.example.com/_e/p/x.js", session_length_ms=1_800_000)
    assert "deliveryStrategy" not in build_settings(**common)["integrations"]["Segment.io"]
    on = build_settings(**common, batching=(25, 2000))["integrations"]["Segment.io"]
    assert on["deliveryStrategy"] == {"strategy": "batching", "config": {"size": 25, "timeout": 2000}}
    assert on["apiHost"] == "www.example.com/_e/v1" and on["protocol"] == "https"

    config = tmp_path / "edgeproxy.toml"
    config.write_text('[cdn]\nbrowser_batching = true\nbrowser_batch_size = 20\nbrowser_batch_timeout = "500ms"\n')
    s = load_settings(config, env={})
    assert (s.cdn.browser_batching, s.cdn.browser_batch_size, s.cdn.browser_batch_timeout) == (True, 20, 0.5)
    config.write_text('[cdn]\nbrowser_batching = true\nbrowser_batch_size = 0\nbrowser_batch_timeout = "2m"\n')
    with pytest.raises(ConfigError) as refused:
        load_settings(config, env={})
    assert "cdn.browser_batch_size: must be 1-100 events, got 0" in refused.value.problems
    assert "cdn.browser_batch_timeout: must be between 50ms and 60s, got 120s" in refused.value.problems
    assert not any(p.startswith("cdn.browser") for p in validate(Settings()))
