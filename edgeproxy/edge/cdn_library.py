"""Where analytics.js comes from: a local ``dist/umd`` directory (npm's build), or an
upstream CDN fetched once per file and kept in a bounded LRU.

Apart from the CDN handlers (``cdn``) because this is the one part of them that does I/O of
its own: it reads files and calls the upstream, shares one fetch among concurrent requests
for a file, and bounds what an upstream may send. Every local name comes from the directory
listing taken at startup (``SAFE_NAME``, ``SERVABLE_SUFFIXES``), never from request text.
"""

from __future__ import annotations

import asyncio
import re
from collections import OrderedDict
from pathlib import Path

import aiohttp

SAFE_NAME = re.compile(r"^[A-Za-z0-9._-]+\Z")
SERVABLE_SUFFIXES = {".js": "application/javascript", ".map": "application/json"}
MAX_UPSTREAM_FILES = 256
MAX_UPSTREAM_BYTES = 8 * 1024 * 1024  # analytics.min.js is ~112 KB; refuse anything absurd


class UpstreamError(Exception):
    """The analytics.js upstream could not give a file (unreachable, 5xx, bad answer)."""


class LibrarySource:
    """Where analytics.js comes from: a local dist/umd directory, or an upstream CDN once."""

    def __init__(self, local_dir: str, upstream: str, timeout: float = 10.0) -> None:
        self._upstream = upstream.rstrip("/")
        self._timeout = timeout
        self._local: dict[str, Path] = {}
        self.is_local = bool(local_dir)
        if local_dir:
            # The table of servable files, taken once: requests never touch the filesystem
            # with their own text.
            for path in Path(local_dir).iterdir():
                if path.is_file() and SAFE_NAME.match(path.name) and path.suffix in SERVABLE_SUFFIXES:
                    self._local[path.name] = path
        self._cache: OrderedDict[str, bytes] = OrderedDict()
        self._inflight: dict[str, asyncio.Future[bytes | None]] = {}
        self._session: aiohttp.ClientSession | None = None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def standalone(self, write_key: str) -> bytes | None:
        """analytics.min.js for a write key (local: standalone.js, the same for every key)."""
        if self.is_local:
            return self._read_local("standalone.js")
        return await self._fetch(f"/analytics.js/v1/{write_key}/analytics.min.js")

    async def bundle(self, name: str) -> bytes | None:
        """A lazily loaded chunk from analytics-next/bundles/; None when there is none."""
        if self.is_local:
            return self._read_local(name) if name != "standalone.js" else None
        return await self._fetch(f"/analytics-next/bundles/{name}")

    def precompressed(self, name: str) -> bytes | None:
        """npm's dist/umd ships ``<name>.gz`` beside each file: use it rather than recompress."""
        path = self._local.get(name)
        gz = path.with_name(path.name + ".gz") if path else None
        return gz.read_bytes() if gz is not None and gz.is_file() else None

    def _read_local(self, name: str) -> bytes | None:
        path = self._local.get(name)
        return path.read_bytes() if path is not None else None

    async def _fetch(self, path: str) -> bytes | None:
        """Fetch once; concurrent requests for one file share one upstream request.

        Why not aiocache's ``SimpleMemoryCache``: it has no size bound (this cache is an LRU
        of at most ``MAX_UPSTREAM_FILES`` bodies, and with no write-key list any key names a
        new file), and its stampede guard polls a lease, where here every concurrent request
        awaits the one future, which also hands all of them the same upstream error, uncached.
        """
        if path in self._cache:
            self._cache.move_to_end(path)
            return self._cache[path]
        if path in self._inflight:
            return await asyncio.shield(self._inflight[path])
        future: asyncio.Future[bytes | None] = asyncio.get_running_loop().create_future()
        self._inflight[path] = future
        try:
            body = await self._get(path)
            if body is not None:
                self._cache[path] = body
                while len(self._cache) > MAX_UPSTREAM_FILES:
                    self._cache.popitem(last=False)
            future.set_result(body)
            return body
        except asyncio.CancelledError:
            future.cancel()
            raise
        except Exception as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: waiters re-raise it, nobody else must
            raise
        finally:
            del self._inflight[path]

    async def _get(self, path: str) -> bytes | None:
        url = self._upstream + path
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self._timeout))
        try:
            async with self._session.get(url, headers={"Accept-Encoding": "gzip"}) as resp:
                if resp.status == 404:
                    return None
                if resp.status != 200:
                    raise UpstreamError(f"analytics.js upstream {url} answered HTTP {resp.status}")
                body = bytearray()
                async for chunk in resp.content.iter_chunked(65536):
                    body += chunk
                    if len(body) > MAX_UPSTREAM_BYTES:
                        raise UpstreamError(f"analytics.js upstream {url} sent more than {MAX_UPSTREAM_BYTES} bytes")
                return bytes(body)
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            raise UpstreamError(f"analytics.js upstream {url} unreachable: {exc.__class__.__name__}: {exc}") from None
