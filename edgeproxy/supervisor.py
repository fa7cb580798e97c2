"""`edgeproxy serve --workers N`: N serving processes on one port, and a parent that minds them.

Why processes: one Python process uses one core. Each child is an ordinary `edgeproxy serve`
that binds the port with SO_REUSEPORT (aiohttp's ``reuse_port``), so the kernel spreads
connections across them; there is no socket passing and no proxying in the parent.

Why Redis is required for N > 1 (``check_workers``): the processes must share one session
truth (else a device's cookie-less events split into several sessions) and one delivery
queue (else `edgeproxy spool`, `replay` and /debug would each see a fraction of it, and a
spool file would be orphaned whenever N shrinks).

The parent forwards SIGTERM/SIGINT to every child (each drains gracefully: stop accepting,
flush within ``shutdown_grace``, keep the rest queued), waits, and only then exits. A child
that dies on its own after it had been up is restarted; one that dies at start (a bad port,
an unreachable Redis) stops the whole group with its exit code, since restarting cannot help.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from typing import Any, Callable, Sequence

STARTUP_WINDOW_S = 5.0  # a child exiting sooner than this after its start is a start-up failure
POLL_S = 0.2
KILL_MARGIN_S = 5.0  # after shutdown_grace, children still running are killed


def check_workers(settings: Any, workers: int) -> list[str]:
    """Problems that forbid running ``workers`` processes with these settings (pure)."""
    if workers < 1:
        return [f"--workers: must be at least 1, got {workers}"]
    if workers == 1:
        return []
    problems = []
    if not settings.delivery.queue:
        problems.append("delivery.queue: --workers > 1 needs the Redis queue (e.g. \"redis://127.0.0.1:6379/0\") so all "
                        "processes share one delivery queue")
    if settings.sessions.store == "memory":
        problems.append("sessions.store: --workers > 1 needs a Redis session store so all processes share one session "
                        "truth")
    return problems


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Linux: a child gets SIGTERM if the supervisor itself is killed (kill -9), not orphaned."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def supervise(child_argv: Sequence[str], workers: int, grace: float, *,
              log: Callable[[str], None] = lambda line: print(line, file=sys.stderr, flush=True)) -> int:
    """Run ``workers`` copies of ``child_argv`` until SIGTERM/SIGINT; returns the exit code."""
    stopping: list[int] = []

    def on_signal(signum: int, _frame: Any) -> None:
        stopping.append(signum)

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    children: list[tuple[subprocess.Popen[bytes], float]] = []

    def spawn() -> tuple[subprocess.Popen[bytes], float]:
        return subprocess.Popen(list(child_argv), preexec_fn=_die_with_parent), time.monotonic()

    code = 0
    try:
        children = [spawn() for _ in range(workers)]
        log(f"edgeproxy: supervising {workers} worker processes (pids {', '.join(str(p.pid) for p, _ in children)})")
        while not stopping:
            time.sleep(POLL_S)
            for i, (proc, started) in enumerate(children):
                rc = proc.poll()
                if rc is None or stopping:
                    continue
                if time.monotonic() - started < STARTUP_WINDOW_S:
                    log(f"edgeproxy: worker {proc.pid} exited with code {rc} while starting; stopping all workers")
                    stopping.append(0)
                    code = rc or 1
                    break
                children[i] = spawn()
                log(f"edgeproxy: worker {proc.pid} exited with code {rc}; started {children[i][0].pid} in its place")
    finally:
        for proc, _ in children:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace + KILL_MARGIN_S
        for proc, _ in children:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log(f"edgeproxy: worker {proc.pid} did not stop within the grace period; killing it")
                proc.kill()
                proc.wait()
        for s, handler in previous.items():
            signal.signal(s, handler)
    return code
