"""The processes a benchmark run needs, started on loopback and always stopped.

Why a module of its own: the ingest benchmark starts up to seven servers (two nginx, a bare
aiohttp app, two edgeproxy processes, Redis) and each must be pinned to a core, logged to a
file one can read when it fails, and terminated in a ``finally`` even when a measurement
raises. ``Processes`` owns that; the functions below only say how each server is configured.

Core layout (2 cores): the servers under test (edgeproxy, the references, the website origin)
run on ``SUT_CORE``; the load generator and what stands for the rest of the world (the
Amplitude responder, Redis) run on ``LOAD_CORE``.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

ROOT = Path(__file__).resolve().parent.parent
START = time.monotonic()  # when the bench's process started: ``log`` says how long ago
SUT_CORE = 0
LOAD_CORE = 1

# Amplitude's answer to an accepted /2/httpapi or /batch request (the shape the worker parses).
AMPLITUDE_OK = '{"code":200,"events_ingested":1,"payload_size_bytes":1,"server_upload_time":1700000000000}'


def log(message: str) -> None:
    """Progress on stderr (the results table goes to stdout)."""
    print(f"[{time.monotonic() - START:6.1f}s] {message}", file=sys.stderr, flush=True)


class BenchError(SystemExit):
    """A run that cannot give a meaningful figure (a server failed, errors under load): stop loudly."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def find_tool(name: str) -> str:
    """The path of a Debian-packaged tool (nginx lives in /usr/sbin, often not on a user's PATH)."""
    path = shutil.which(name) or next((p for p in (f"/usr/sbin/{name}", f"/usr/bin/{name}") if Path(p).exists()), None)
    if path is None:
        raise BenchError(f"bench: {name} is needed (`make bench` installs it; or apt-get install -y {name})")
    return path


def pinned(argv: Sequence[str], core: int | None) -> list[str]:
    """``argv`` run on one core with taskset, so the server under test and the load never share one."""
    if core is None or shutil.which("taskset") is None or (os.cpu_count() or 1) < 2:
        return list(argv)
    return ["taskset", "-c", str(core), *argv]


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) a process used so far, all its threads included."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Server:
    """One started process and where its output goes (read back when it fails)."""

    name: str
    proc: subprocess.Popen[bytes]
    port: int
    log: Path

    def url(self, path: str = "") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            raise BenchError(f"bench: {self.name} exited with code {self.proc.returncode}:\n{self.tail()}")


@dataclass
class Processes:
    """Every process of a run; ``close`` (called from ``finally``) terminates them all."""

    workdir: Path
    servers: list[Server] = field(default_factory=list)

    def spawn(self, name: str, argv: Sequence[str], port: int, *, core: int | None,
              env: Mapping[str, str] | None = None) -> Server:
        log = self.workdir / f"{name}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(pinned(argv, core), stdout=out, stderr=subprocess.STDOUT, env=dict(env or os.environ),
                                    cwd=self.workdir)
        server = Server(name, proc, port, log)
        self.servers.append(server)
        wait_port(server)
        return server

    def close(self) -> None:
        self.stop(list(self.servers))

    def stop(self, servers: Sequence[Server]) -> None:
        """Terminate ``servers`` (SIGTERM, then SIGKILL after 15 s) and forget them."""
        for s in servers:
            if s.proc.poll() is None:
                s.proc.terminate()
        for s in servers:
            try:
                s.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                s.proc.kill()
                s.proc.wait(timeout=5)
        self.servers = [s for s in self.servers if s not in servers]


def wait_port(server: Server, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        server.check_alive()
        try:
            socket.create_connection(("127.0.0.1", server.port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise BenchError(f"bench: {server.name} did not listen on port {server.port} within {timeout:g} s:\n{server.tail()}")


# ---------------------------------------------------------------------------- nginx

_NGINX_HEAD = """worker_processes 1;
daemon off;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {dir}/body; proxy_temp_path {dir}/proxy; fastcgi_temp_path {dir}/fcgi;
  uwsgi_temp_path {dir}/uwsgi; scgi_temp_path {dir}/scgi;
  keepalive_requests 100000000;
  keepalive_timeout 300s;
  client_max_body_size 20m;
  client_body_buffer_size 1m;
  sendfile on;
"""


def _nginx(procs: Processes, name: str, servers: str, port: int, core: int) -> Server:
    conf_dir = procs.workdir / name
    conf_dir.mkdir()
    conf = conf_dir / "nginx.conf"
    conf.write_text(_NGINX_HEAD.format(dir=conf_dir) + servers + "}\n")
    return procs.spawn(name, [find_tool("nginx"), "-c", str(conf), "-p", str(conf_dir), "-e", str(conf_dir / "error.log")],
                       port, core=core)


def start_nginx_reference(procs: Processes, site_dir: Path) -> tuple[Server, Server]:
    """The physical reference (204 to the tracking POSTs) and the website origin (static files).

    One nginx worker on the server core serves both, on two ports: the reference and the
    origin are never measured at the same time.
    """
    ref_port, origin_port = free_port(), free_port()
    servers = f"""
  server {{ listen 127.0.0.1:{ref_port} backlog=4096;
    location / {{ return 204; }} }}
  server {{ listen 127.0.0.1:{origin_port} backlog=4096;
    root {site_dir};
    location / {{ }} }}
"""
    ref = _nginx(procs, "nginx-reference", servers, ref_port, SUT_CORE)
    origin = Server("origin", ref.proc, origin_port, ref.log)
    wait_port(origin)
    return ref, origin


def start_amplitude_responder(procs: Processes) -> Server:
    """A local stand-in for Amplitude's HTTP API v2: 200 and an 'ingested' body to every POST."""
    port = free_port()
    servers = f"""
  server {{ listen 127.0.0.1:{port} backlog=4096;
    location / {{ default_type application/json; return 200 '{AMPLITUDE_OK}'; }} }}
"""
    return _nginx(procs, "amplitude-responder", servers, port, LOAD_CORE)


# ---------------------------------------------------------------------------- redis, aiohttp, edgeproxy

def start_redis(procs: Processes, name: str = "redis") -> Server:
    """A throwaway Redis without persistence (nothing of it outlives the run)."""
    port = free_port()
    argv = [find_tool("redis-server"), "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no",
            "--daemonize", "no", "--dir", str(procs.workdir), "--logfile", ""]
    return procs.spawn(name, argv, port, core=LOAD_CORE)


BARE_AIOHTTP = """
import sys
import uvloop
from aiohttp import web

async def ingest(request):
    await request.read()
    return web.Response(body=b'{"success":true}', content_type="application/json")

uvloop.install()  # as `edgeproxy serve` does (edgeproxy/cli.py)
app = web.Application()
app.router.add_post("/{tail:.*}", ingest)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None, access_log=None)
"""


BARE_AIOHTTP_PROXY = """
import sys
import aiohttp
import uvloop
from aiohttp import web

ORIGIN = sys.argv[2]

async def session(app):
    app["client"] = aiohttp.ClientSession(auto_decompress=False, connector=aiohttp.TCPConnector(limit=0))
    yield
    await app["client"].close()

async def relay(request):
    async with request.app["client"].get(ORIGIN + request.raw_path) as upstream:
        response = web.StreamResponse(status=upstream.status)
        response.content_type = upstream.content_type
        response.content_length = upstream.content_length
        await response.prepare(request)
        async for chunk in upstream.content.iter_chunked(64 * 1024):
            await response.write(chunk)
        await response.write_eof()
        return response

uvloop.install()
app = web.Application()
app.cleanup_ctx.append(session)
app.router.add_get("/{tail:.*}", relay)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None, access_log=None)
"""


def start_bare_aiohttp_proxy(procs: Processes, origin_url: str) -> Server:
    """The framework reference for the website: aiohttp on uvloop streaming GETs from the origin
    through one ClientSession, relaying status, type and length and nothing else (no headers
    filtered or added, no cookie): the least a streaming reverse proxy in aiohttp does."""
    port = free_port()
    argv = [sys.executable, "-c", BARE_AIOHTTP_PROXY, str(port), origin_url.rstrip("/")]
    return procs.spawn("bare-aiohttp-proxy", argv, port, core=SUT_CORE)


def start_bare_aiohttp(procs: Processes) -> Server:
    """The framework reference: aiohttp on uvloop, a handler that only reads the body."""
    port = free_port()
    return procs.spawn("bare-aiohttp", [sys.executable, "-c", BARE_AIOHTTP, str(port)], port, core=SUT_CORE)


def edgeproxy_env(port: int, data_dir: Path, amplitude_url: str, origin_url: str, session_store: str,
                  durability: str = "power_loss") -> dict[str, str]:
    """The whole configuration of the edgeproxy under test, from the environment.

    Inherited ``EDGEPROXY_*`` variables are dropped so a developer's shell cannot change what
    is measured. The per-IP flood guard is off: all load comes from one address.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGEPROXY_")}
    env.update({
        "EDGEPROXY_SERVER__HOST": "127.0.0.1",
        "EDGEPROXY_SERVER__PORT": str(port),
        "EDGEPROXY_SERVER__IP_RATE_LIMIT": "0",
        "EDGEPROXY_SERVER__LOG_FORMAT": "json",
        "EDGEPROXY_DELIVERY__DATA_DIR": str(data_dir),
        "EDGEPROXY_AMPLITUDE__API_KEY": "bench-dummy-api-key",
        "EDGEPROXY_AMPLITUDE__ENDPOINT_URL": amplitude_url,
        "EDGEPROXY_ORIGIN__URL": origin_url,
        "EDGEPROXY_SESSIONS__SECURE_COOKIES": "false",
        "EDGEPROXY_SESSIONS__STORE": session_store,
        "EDGEPROXY_DELIVERY__DURABILITY": durability,
        "PYTHONPATH": str(ROOT),
    })
    return env


def start_edgeproxy(procs: Processes, name: str, *, amplitude_url: str, origin_url: str,
                    session_store: str = "memory", durability: str = "power_loss", trail_size: int | None = None) -> Server:
    """``edgeproxy serve`` with its SQLite spool and delivery on, in a fresh data_dir
    (``trail_size``: the cockpit's event trail, None for the default)."""
    port = free_port()
    data_dir = procs.workdir / f"{name}-data"
    env = edgeproxy_env(port, data_dir, amplitude_url, origin_url, session_store, durability)
    if trail_size is not None:
        env["EDGEPROXY_DEBUG__TRAIL_SIZE"] = str(trail_size)
    return procs.spawn(name, [sys.executable, "-m", "edgeproxy", "serve"], port, core=SUT_CORE, env=env)


def start_handler_only(procs: Processes, name: str, *, origin_url: str, trail_size: int | None = None,
                       pure: bool = False) -> Server:
    """edgeproxy's tracking handler with a queue that keeps nothing (``_handler_only.py``), configured
    like ``start_edgeproxy``: the parse-cookie-session-map reference (``trail_size``: the
    cockpit's event trail, None for the default; ``pure``: the hot path's source, not its mypyc build)."""
    port = free_port()
    env = edgeproxy_env(port, procs.workdir / f"{name}-data", "http://127.0.0.1:9/unused", origin_url, "memory")
    if trail_size is not None:
        env["EDGEPROXY_DEBUG__TRAIL_SIZE"] = str(trail_size)
    env.pop("EDGEPROXY_PURE_PYTHON", None)
    if pure:
        env["EDGEPROXY_PURE_PYTHON"] = "1"
    return procs.spawn(name, [sys.executable, str(ROOT / "bench" / "_handler_only.py")], port, core=SUT_CORE, env=env)


def metrics(server: Server) -> dict[str, float]:
    """edgeproxy's Prometheus counters, summed over their labels (``name{…}`` → ``name``)."""
    with urllib.request.urlopen(server.url("/metrics"), timeout=10) as resp:
        text = resp.read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        key, _, value = line.rpartition(" ")
        name = key.split("{", 1)[0]
        try:
            out[name] = out.get(name, 0.0) + float(value)
        except ValueError:
            continue
        if "{" in key:
            out[key] = float(value)
    return out
