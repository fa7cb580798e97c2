"""Command line: serve, check-config, map, spool, replay."""

from __future__ import annotations

import argparse
import gc
import sys
from typing import Sequence

from edgeproxy.config import ConfigError, Settings, load_settings

# The serving process's youngest-generation threshold (CPython's default is 700): see prepare_gc.
GC_YOUNG_THRESHOLD = 50_000


def _load(path: str | None) -> Settings:
    try:
        return load_settings(path)
    except ConfigError as exc:
        print(f"edgeproxy: the configuration has {len(exc.problems)} problem(s):", file=sys.stderr)
        for problem in exc.problems:
            print(f"  - {problem}", file=sys.stderr)
        raise SystemExit(2) from None


def cmd_serve(args: argparse.Namespace) -> int:
    settings = _load(args.config)
    if args.host:
        settings.server.host = args.host
    if args.port:
        settings.server.port = args.port
    if args.workers != 1:
        return _serve_workers(args, settings)
    from edgeproxy import logs, serving
    from edgeproxy.app import create_app

    logs.configure(settings.server.log_format)
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux/macOS
        pass
    from edgeproxy.delivery.records import SpoolUnavailable

    host, port = settings.server.host, settings.server.port
    try:
        app = create_app(settings)
        print(
            f"edgeproxy on http://{host}:{port}/  (demo site at /, operator view at {settings.server.debug_path}, "
            f"tracking API at {settings.server.prefix}/v1/…)",
            flush=True,
        )
        prepare_gc()
        serving.run(app, settings, reuse_port=args.reuse_port)
    except (OSError, SpoolUnavailable, RuntimeError) as exc:
        # Start-up problems an operator can fix (data_dir, port in use, signing key file): one
        # clear line, not a traceback.
        print(f"edgeproxy: cannot start: {exc}", file=sys.stderr)
        return 1
    return 0


def prepare_gc() -> None:
    """Tune the cyclic garbage collector for a long-running server, once the app is built.

    Everything built so far (modules, mapping plans, parsers' tables) lives as long as the
    process: ``gc.freeze`` moves it out of the collector's reach, so full collections stop
    walking it. And the youngest generation is sized for a server: CPython collects it after
    every 700 net new container objects, which a few tracking calls in flight (their
    coroutines, requests, messages) exceed, so each collection walked live requests only to
    promote them, and the older generations then walked them again. Measured at saturation
    (single-event calls, one core): 36 µs of collection per call with the default (~7% of the
    CPU), pauses up to 27-62 ms (full collections); with 50,000, no collection ran in 10 s and
    the CPU per call fell by that much. What a request leaves behind is freed by reference
    counting; cycles still get collected, only later. The older generations keep CPython's
    ratios.
    """
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, older, oldest)


def _serve_workers(args: argparse.Namespace, settings: Settings) -> int:
    """Several serving processes on one port (see ``supervisor``); Redis is required for them."""
    from edgeproxy.supervisor import check_workers, supervise

    problems = check_workers(settings, args.workers)
    if problems:
        print(f"edgeproxy: cannot run {args.workers} workers:", file=sys.stderr)
        for problem in problems:
            print(f"  - {problem}", file=sys.stderr)
        return 2
    child = [sys.executable, "-m", "edgeproxy", "serve", "--reuse-port"]
    for flag, value in (("--config", args.config), ("--host", args.host), ("--port", args.port)):
        if value:
            child += [flag, str(value)]
    return supervise(child, args.workers, settings.server.shutdown_grace)


def cmd_check_config(args: argparse.Namespace) -> int:
    try:
        load_settings(args.config)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem)
        print(f"{len(exc.problems)} problem(s) found", file=sys.stderr)
        return 1
    print(f"{args.config or '(defaults)'}: OK")
    return 0


def cmd_map(args: argparse.Namespace) -> int:
    from edgeproxy.mapping.cli import run_map

    return run_map(args.config, sys.stdin, sys.stdout, args.source)


def _queue_hint(settings: Settings) -> str:
    if settings.delivery.queue:
        return "delivery.queue is a Redis URL: is that Redis running?"
    return f"delivery.data_dir is {str(settings.data_dir)!r}"


def cmd_spool(args: argparse.Namespace) -> int:
    import orjson

    from edgeproxy.delivery.records import SpoolUnavailable
    from edgeproxy.delivery.spool_cli import spool_report

    settings = _load(args.config)
    try:
        if settings.delivery.queue:
            from edgeproxy.delivery.redis_queue_views import queue_report

            report = queue_report(settings.delivery.queue)
        else:
            report = spool_report(settings.data_dir / "spool.sqlite3")
    except SpoolUnavailable as exc:
        print(f"edgeproxy spool: {exc} ({_queue_hint(settings)})", file=sys.stderr)
        return 1
    print(orjson.dumps(report, option=orjson.OPT_INDENT_2, default=str).decode())
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    from edgeproxy.amplitude_api import PATHS
    from edgeproxy.delivery.records import SpoolUnavailable
    from edgeproxy.delivery.spool import ReplayFilter
    from edgeproxy.delivery.spool_cli import replay

    settings = _load(args.config)
    if args.endpoint is not None and args.endpoint not in PATHS:
        print(f"edgeproxy replay: --endpoint must be one of {', '.join(PATHS)}, got {args.endpoint!r}", file=sys.stderr)
        return 2
    if args.limit is not None and args.limit < 1:
        print(f"edgeproxy replay: --limit must be at least 1, got {args.limit}", file=sys.stderr)
        return 2
    names = ["default", *(src.name for src in settings.sources)]
    if args.source is not None and args.source not in names:
        print(f"edgeproxy replay: --source must be one of {', '.join(names)} (the configured sources), "
              f"got {args.source!r}", file=sys.stderr)
        return 2
    selection = ReplayFilter(reasons=tuple(args.reason or ()), endpoint=args.endpoint,
                             message_ids=tuple(args.message_id or ()), limit=args.limit,
                             target=args.target, source=args.source)
    try:
        if settings.delivery.queue:
            from edgeproxy.delivery.redis_queue_views import queue_replay

            count = queue_replay(settings.delivery.queue, selection)
        else:
            count = replay(settings.data_dir / "spool.sqlite3", selection)
    except SpoolUnavailable as exc:
        print(f"edgeproxy replay: {exc} ({_queue_hint(settings)})", file=sys.stderr)
        return 1
    print(f"{count} dead letter(s) queued again for delivery")
    return 0


def cmd_forget(args: argparse.Namespace) -> int:
    """Delete a person's data everywhere edgeproxy keeps it and queue Amplitude's deletion."""
    import asyncio

    from edgeproxy.delivery.queue import open_queue
    from edgeproxy.delivery.records import SpoolUnavailable
    from edgeproxy.forget import forget_person
    from edgeproxy.identity.store import StoreUnavailable, open_store
    from edgeproxy.sources import SourceTable

    if bool(args.user_id) == bool(args.device_id):
        print("edgeproxy forget: give exactly one of --user-id ID or --device-id ID", file=sys.stderr)
        return 2
    settings = _load(args.config)

    async def run() -> list[str]:
        store, spool = open_store(settings), open_queue(settings)
        await spool.open()
        try:
            report = await forget_person(user_id=args.user_id, device_id=args.device_id, store=store, spool=spool,
                                         sources=SourceTable(settings),
                                         memory_store_elsewhere=settings.sessions.store == "memory")
            return report.lines()
        finally:
            await spool.close()
            await store.close()

    try:
        lines = asyncio.run(run())
    except (SpoolUnavailable, StoreUnavailable) as exc:
        print(f"edgeproxy forget: {exc} ({_queue_hint(settings)})", file=sys.stderr)
        return 1
    print("\n".join(lines))
    return 0


def build_parser() -> argparse.ArgumentParser:
    from edgeproxy.delivery.targets import TARGETS

    parser = argparse.ArgumentParser(prog="edgeproxy", description="First-party analytics edge: Segment in, Amplitude out.")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the proxy")
    serve.add_argument("--config", help="TOML config file (defaults apply without one)")
    serve.add_argument("--host", help="override server.host")
    serve.add_argument("--port", type=int, help="override server.port")
    serve.add_argument("--workers", type=int, default=1,
                       help="serving processes sharing the port (SO_REUSEPORT); more than 1 needs Redis for "
                            "sessions.store and delivery.queue")
    serve.add_argument("--reuse-port", action="store_true", help=argparse.SUPPRESS)  # set for --workers children
    serve.set_defaults(func=cmd_serve)

    check = sub.add_parser("check-config", help="validate a config file and list every problem")
    check.add_argument("--config", help="TOML config file")
    check.set_defaults(func=cmd_check_config)

    mapping = sub.add_parser("map", help="map Segment messages (JSON lines on stdin) to Amplitude requests")
    mapping.add_argument("--config", help="TOML (or JSON) config with an [amplitude] table")
    mapping.add_argument("--source", metavar="NAME",
                         help="map with the [sources.amplitude] of the [[sources]] entry NAME (default: [amplitude])")
    mapping.set_defaults(func=cmd_map)

    spool = sub.add_parser("spool", help="show spool depth, oldest age and dead letters by reason (JSON)")
    spool.add_argument("--config", help="TOML config file")
    spool.set_defaults(func=cmd_spool)

    replay = sub.add_parser("replay", help="queue dead letters for delivery again (all, or those matching every filter)")
    replay.add_argument("--config", help="TOML config file")
    replay.add_argument("--reason", action="append", metavar="CODE",
                        help="a reason code as `edgeproxy spool` lists them, e.g. invalid_api_key (repeatable)")
    replay.add_argument("--endpoint", help="only items for this endpoint: httpapi, batch, identify, … (the relay's is batch)")
    replay.add_argument("--target", choices=TARGETS, help="only items for this delivery target")
    replay.add_argument("--source", metavar="NAME", help="only items of this source (default, or a [[sources]] name)")
    replay.add_argument("--message-id", action="append", metavar="ID", help="only this message id (repeatable)")
    replay.add_argument("--limit", type=int, help="at most this many, oldest first")
    replay.set_defaults(func=cmd_replay)

    forget = sub.add_parser("forget", help="delete a person's sessions, spool rows and dead letters, and queue "
                                           "Amplitude's deletion (User Privacy API)")
    forget.add_argument("--config", help="TOML config file")
    who = forget.add_mutually_exclusive_group(required=True)
    who.add_argument("--user-id", metavar="ID", help="the person's userId")
    who.add_argument("--device-id", metavar="ID", help="a device id (anonymousId or the edge's device cookie)")
    forget.set_defaults(func=cmd_forget)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
