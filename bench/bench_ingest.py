"""Tracking-call throughput of `edgeproxy serve`, as ratios to nginx and to a bare aiohttp handler.

All three servers answer the same analytics.js-shaped POST in the same run, driven by wrk
(Debian package `wrk`) with one connection pool each, for a bounded time. edgeproxy runs with
its embedded defaults (memory sessions, SQLite spool with group commit, local sink), so the
figure includes identity, mapping, the durable append and delivery to the sink.

Usage: python bench/bench_ingest.py [--seconds 5] [--connections 32]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

BODY = {
    "type": "track", "event": "Bench Event", "anonymousId": "bench-anon-0001", "writeKey": "bench",
    "properties": {"plan": "team", "seats": 5},
    "context": {"library": {"name": "analytics.js", "version": "next-1.84.3"}, "locale": "en-US",
                "page": {"path": "/", "url": "https://shop.test/", "referrer": ""},
                "userAgent": "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36"},
    "timestamp": "2026-03-14T15:09:26.535Z", "sentAt": "2026-03-14T15:09:26.600Z",
}

BARE = """
import sys
from aiohttp import web
async def h(request):
    await request.read()
    return web.json_response({"success": True})
app = web.Application()
app.router.add_post("/_e/v1/t", h)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None, access_log=None)
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"server on port {port} did not start")


def wrk(port: int, seconds: int, connections: int, script: Path) -> float:
    out = subprocess.run(["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "-s", str(script),
                          f"http://127.0.0.1:{port}/_e/v1/t"], capture_output=True, text=True, check=True).stdout
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if non2xx:
        raise SystemExit(f"port {port}: {non2xx.group(1)} error responses\n{out}")
    return float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--connections", type=int, default=32)
    args = parser.parse_args()
    for tool in ("wrk", "nginx"):
        if not (shutil.which(tool) or Path(f"/usr/sbin/{tool}").exists()):
            raise SystemExit(f"{tool} is needed: apt-get install -y {tool}")
    nginx_bin = shutil.which("nginx") or "/usr/sbin/nginx"

    with tempfile.TemporaryDirectory() as tmp:
        tmpd = Path(tmp)
        script = tmpd / "post.lua"
        script.write_text('wrk.method = "POST"\nwrk.headers["Content-Type"] = "text/plain"\n'
                          f"wrk.body = [[{json.dumps(BODY)}]]\n")
        procs: list[subprocess.Popen] = []
        try:
            ports = {name: free_port() for name in ("edgeproxy", "bare", "nginx")}
            env = dict(os.environ, EDGEPROXY_SERVER__PORT=str(ports["edgeproxy"]),
                       EDGEPROXY_DELIVERY__DATA_DIR=str(tmpd / "data"), EDGEPROXY_SERVER__LOG_FORMAT="json",
                       EDGEPROXY_SERVER__IP_RATE_LIMIT="0")  # one load generator = one address
            edge = subprocess.Popen([sys.executable, "-m", "edgeproxy", "serve"], env=env,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            procs.append(edge)
            procs.append(subprocess.Popen([sys.executable, "-c", BARE, str(ports["bare"])]))
            conf = tmpd / "nginx.conf"
            conf.write_text(f"""worker_processes 1; pid {tmpd}/nginx.pid; error_log {tmpd}/err.log; daemon off;
events {{ worker_connections 1024; }}
http {{ access_log off; client_body_temp_path {tmpd}/body;
  server {{ listen 127.0.0.1:{ports['nginx']};
    location /_e/v1/t {{ client_body_buffer_size 64k; default_type application/json; return 200 '{{"success":true}}'; }} }} }}
""")
            procs.append(subprocess.Popen([nginx_bin, "-c", str(conf), "-p", str(tmpd)]))
            for port in ports.values():
                wait_port(port)
            rps = {name: wrk(port, args.seconds, args.connections, script) for name, port in ports.items()}
            memory = rss_mb(edge.pid)
        finally:
            for p in procs:
                p.terminate()
            for p in procs:
                p.wait(timeout=30)

    print(f"requests/s: edgeproxy {rps['edgeproxy']:.0f}, bare aiohttp {rps['bare']:.0f}, nginx {rps['nginx']:.0f}")
    print(f"edgeproxy / bare aiohttp handler: {rps['edgeproxy'] / rps['bare']:.2f}")
    print(f"edgeproxy / nginx: {rps['edgeproxy'] / rps['nginx']:.3f}")
    print(f"edgeproxy RSS after the run: {memory:.0f} MB")


if __name__ == "__main__":
    main()
