"""The /debug pages as HTML: plain tables, one hashed inline style, no script.

Kept apart from the handlers (``debug.py``): these are pure functions from the views' data
(the same dicts the JSON form returns) to text.
"""

from __future__ import annotations

import base64
import hashlib
import html
from dataclasses import asdict, is_dataclass
from datetime import datetime, timezone
from typing import Any

import orjson
from aiohttp import web

from edgeproxy.cockpit import charts


def json_default(value: Any) -> Any:
    if is_dataclass(value):
        return asdict(value)  # type: ignore[arg-type]
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    return str(value)


def iso(ms: Any) -> str:
    if not isinstance(ms, (int, float)) or isinstance(ms, bool):
        return ""
    return datetime.fromtimestamp(ms / 1000, timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + "Z"


def esc(value: Any) -> str:
    return html.escape("" if value is None else str(value))


STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.5rem;color:#1b1b1b}
h1{font-size:1.3rem}h2{font-size:1.05rem;margin-top:1.6rem}
table{border-collapse:collapse;width:100%}th,td{border-bottom:1px solid #ddd;padding:.3rem .5rem;text-align:left;vertical-align:top}
th{background:#f4f4f4}code,pre{font:12px/1.3 ui-monospace,monospace}pre{white-space:pre-wrap;margin:0;max-width:60rem}
.note{color:#555}form.inline{display:inline-block;margin:0 .4rem .3rem 0}
.headlines{display:flex;flex-wrap:wrap;gap:.6rem}.headline{border:1px solid #ddd;padding:.4rem .7rem;min-width:9rem}
.figure{font-size:1.5rem;font-weight:600}.trend-up{color:#17702a}.trend-down{color:#a11}.trend-flat{color:#777}
.charts{display:flex;flex-wrap:wrap;gap:.8rem}figure{margin:0}figcaption{font-size:12px}.axis{font-size:10px;color:#777;display:block}
.delivery-dead,.delivery-refused{color:#a11}.delivery-delivered{color:#17702a}.delivery-retrying,.delivery-queued{color:#8a5a00}
.state-delivered{color:#17702a}.state-dead{color:#a11}.state-pending,.state-retrying,.state-in_flight{color:#8a5a00}
"""
# The pages carry one inline style, allowed by its hash, and only /debug's own script (the live
# updates; every page works without it); nothing may frame them.
_STYLE_HASH = base64.b64encode(hashlib.sha256(STYLE.encode()).digest()).decode()
SECURITY_HEADERS = {
    "Content-Security-Policy": f"default-src 'none'; style-src 'sha256-{_STYLE_HASH}'; script-src 'self'; "
                               "connect-src 'self'; form-action 'self'; "
                               "frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}


def page(title: str, body: str, status: int = 200) -> web.Response:
    text = (
        f"<!doctype html><html><head><meta charset=utf-8><title>{esc(title)}</title>"
        f"<style>{STYLE}</style></head><body><h1>{esc(title)}</h1>{body}</body></html>"
    )
    return web.Response(status=status, text=text, content_type="text/html")


def table(headers: list[str], rows: list[list[str]]) -> str:
    """Rows under a header row; a key/value table (all headers empty) has no header row."""
    head = "<tr>" + "".join(f"<th>{esc(h)}</th>" for h in headers) + "</tr>" if any(headers) else ""
    body = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows)
    return f"<table>{head}{body or '<tr><td colspan=%d>none</td></tr>' % len(headers)}</table>"


def pairs(data: dict[str, Any]) -> str:
    return table(["", ""], [[esc(k), esc(v)] for k, v in data.items()])


def restart_note(process: dict[str, Any]) -> str:
    """What starts empty with each process, so an empty page after a restart is not a mystery."""
    store = ("the memory session store starts empty on each start; visitors' sessions continue from "
             "their cookies at their next event" if process["session_store"] == "memory"
             else "sessions are kept in Redis, shared by every process")
    return (f'<p class="note">This process (pid {esc(process["pid"])} on {esc(process["host"])}) started '
            f'{esc(iso(process["started_ms"]))}: {esc(store)}. The event trail, charts and live numbers are '
            f'this process\'s own.</p>')


def render_overview(base: str, data: dict[str, Any], sources: list[str], csrf: str) -> str:
    b = esc(base)
    options = "".join(f'<option value="{esc(n)}"{" selected" if n == data["source"] else ""}>{esc(n)}</option>'
                      for n in sources)
    parts = [
        f'<p><a href="{b}/me">my session</a> · <a href="{b}?format=json">JSON</a></p>',
        f'<form method="post" action="{b}/forget"><input type="hidden" name="csrf" value="{esc(csrf)}">'
        'Forget a person: <input name="user_id" placeholder="user id"> '
        'or <input name="device_id" placeholder="device id"> <button>Forget</button></form>',
        f'<form method="get" action="{b}"><input name="q" value="{esc(data["query"])}" '
        'placeholder="device or user id"> <button>Search</button></form>',
        f'<form method="get" action="{b}">Deliveries of source <select name="source"><option value="">all</option>'
        f'{options}</select> <button>Filter</button></form>',
        restart_note(data["process"]),
        "<h2>Live sessions</h2>",
        table(
            ["device id", "user id", "session id", "start", "last event", "events", "consent", "library", "user agent"],
            [
                [
                    f'<a href="{b}/sessions/{esc(s["device_id"])}"><code>{esc(s["device_id"])}</code></a>',
                    esc(s.get("user_id")),
                    f"<code>{esc(s.get('session_id'))}</code>",
                    esc(iso(s.get("session_id"))),
                    esc(iso(s.get("last_event_ms"))),
                    esc(s.get("event_count")),
                    esc(s.get("consent") or ""),
                    esc(s.get("library")),
                    esc((s.get("user_agent") or "")[:80]),
                ]
                for s in data["sessions"]
            ],
        ),
        "<h2>Spool</h2>",
        pairs(data["spool"]),
        table(["target", "source", "pending", "dead"],
               [[esc(r["target"]), esc(r["source"]), esc(r["pending"]), esc(r["dead"])] for r in data["by_target"]]),
        "<h2>In flight</h2>",
        undelivered_table(data["in_flight"]),
        "<h2>Retrying</h2>",
        undelivered_table(data["retrying"]),
        "<h2>Recent upstream responses</h2>",
        table(
            ["time", "target", "source", "endpoint", "status", "items", "body"],
            [[esc(iso(r.get("time_ms") or r.get("time"))), *where(r), esc(r.get("endpoint")), esc(r.get("status")),
              esc(r.get("items")), f"<code>{esc(str(r.get('body', ''))[:200])}</code>"] for r in data["recent_responses"]],
        ),
        "<h2>Dead letters</h2>",
        table(["reason", "count"], [[f"<code>{esc(code)}</code>", esc(n)] for code, n in data["dead_by_reason"].items()]),
        replay_forms(base, data["dead_by_reason"], csrf),
        table(
            ["message id", "target", "source", "reason code", "reason", "device id", "act"],
            [[f'<a href="{b}/events/{esc(d.get("message_id"))}"><code>{esc(d.get("message_id"))}</code></a>', *where(d),
              f"<code>{esc(d.get('reason_code'))}</code>", esc(d.get("reason")), esc(d.get("device_id")),
              replay_one(base, str(d.get("message_id")), csrf)] for d in data["dead_letters"]],
        ),
    ]
    if data["sink"] is not None:
        parts += [
            "<h2>Local sink (no Amplitude api_key configured: the requests Amplitude would get)</h2>",
            f'<p class="note">The last {esc(data["process"]["sink_size"])} requests of this process, kept in memory: '
            "the sink starts empty on each start, while the spool's delivered count includes earlier runs.</p>",
            table(["request"], [[f"<pre>{esc(orjson.dumps(r, default=json_default, option=orjson.OPT_INDENT_2).decode())}</pre>"] for r in reversed(data["sink"])]),
        ]
    parts += ["<h2>Privacy decisions (this process: withheld, anonymised, bots)</h2>", privacy_table(data["privacy"])]
    parts += ["<h2>Counters</h2>", pairs(dict(sorted(data["counters"].items())))]
    return "".join(parts)


def where(row: dict[str, Any]) -> list[str]:
    """The target and source cells of a delivery row."""
    return [esc(row.get("target", "amplitude")), esc(row.get("source", "default"))]


def undelivered_table(rows: list[dict[str, Any]]) -> str:
    """Events in flight or waiting to be retried, with why and when."""
    return table(
        ["message id", "target", "source", "endpoint", "device id", "attempts", "next attempt", "last error"],
        [[f"<code>{esc(r.get('message_id'))}</code>", *where(r), esc(r.get("endpoint")), esc(r.get("device_id")), esc(r.get("attempts")),
          esc(iso(r.get("next_attempt_ms"))), esc(r.get("last_error"))] for r in rows],
    )


def render_session(base: str, data: dict[str, Any], csrf: str) -> str:
    b = esc(base)
    s = data["session"]
    client = data.get("client_sessions")
    if s:
        summary = table(["", ""], [[esc(k), _session_cell(k, v)] for k, v in s.items()])
    elif client:
        summary = ("<p>A mobile or server device: its library keeps the session, edgeproxy passes its ids through.</p>"
                   + table(["session id", "start", "first event", "last event", "events"],
                           [[f"<code>{esc(c['session_id'])}</code>", esc(iso(c["session_id"])), esc(iso(c["first_ms"])),
                             esc(iso(c["last_ms"])), esc(c["events"])] for c in client["sessions"]]))
    else:
        summary = "<p>No live session for this device (expired, or held by another process's memory).</p>"
    timeline = charts.timeline([_timeline_point(ev) for ev in data["events"] if ev.get("target", "amplitude") == "amplitude"],
                               gap_ms=max(60_000, data.get("timeout_ms", 1_800_000) // 6))
    events = table(
        ["received", "message id", "target", "source", "endpoint", "state", "attempts", "last error", "as sent"],
        [
            [
                esc(iso(ev.get("received_ms"))),
                f'<a href="{b}/events/{esc(ev.get("message_id"))}"><code>{esc(ev.get("message_id"))}</code></a>'
                + (replay_one(base, str(ev.get("message_id")), csrf) if ev.get("state") == "dead" else ""),
                *where(ev),
                esc(ev.get("endpoint")),
                f'<span class="state-{esc(ev.get("state"))}">{esc(ev.get("state"))}</span>',
                esc(ev.get("attempts")),
                esc(ev.get("last_error")),
                f"<pre>{esc(orjson.dumps(ev.get('item'), option=orjson.OPT_INDENT_2).decode())}</pre>",
            ]
            for ev in data["events"]
        ],
    )
    privacy = ""
    if "privacy_signal" in data:
        privacy = (f'<p>Consent state: <b>{esc(data["consent"] or "none recorded")}</b> · this request '
                   f'{"sends" if data["privacy_signal"] else "does not send"} Sec-GPC / DNT</p>')
    return (f'<p><a href="{b}">all sessions</a> · <a href="{b}/events?q={esc(data["device_id"])}">its event trail</a></p>'
            f'{privacy}{summary}<h2>Timeline</h2>{timeline}<h2>Recent events</h2>{events}'
            f'<h2>Privacy decisions</h2>{privacy_table(data["privacy"])}')


def _timeline_point(ev: dict[str, Any]) -> dict[str, Any]:
    """A spooled item on the session timeline: its event time (else when it was received)."""
    item = ev.get("item")
    if not isinstance(item, dict):
        item = {}
    t = item.get("time")
    if not isinstance(t, int) or isinstance(t, bool):
        t = ev.get("received_ms") or 0
    return {"t": t, "session_id": item.get("session_id", ev.get("session_id")),
            "label": item.get("event_type") or ev.get("endpoint")}


def _session_cell(key: str, value: Any) -> str:
    """The raw epoch-ms ``session_id`` (what Amplitude users search for) next to its date."""
    if key == "session_id":
        return f"<code>{esc(value)}</code> {esc(iso(value))}"
    return esc(iso(value) if key in {"last_event_ms", "first_seen"} else value)


def privacy_table(rows: list[dict[str, Any]] | None) -> str:
    """Events the privacy rules did not deliver (and why), anonymised, or marked as bots."""
    if rows is None:
        return "<p>not recorded</p>"
    return table(
        ["time", "source", "message id", "type", "event", "device id", "outcome", "reason", "consent", "bot"],
        [[esc(iso(r["at_ms"])), esc(r["source"]), f"<code>{esc(r['message_id'])}</code>", esc(r["type"]), esc(r["event"]),
          esc(r["device_id"]), f'<span class="privacy-{esc(r["outcome"])}">{esc(r["outcome"])}</span>', esc(r["reason"] or ""),
          esc(r["consent"]), esc(r["bot"] or "")] for r in rows],
    )


def replay_forms(base: str, dead_by_reason: dict[str, int], csrf: str) -> str:
    """One button per reason: replay every dead letter of it (``edgeproxy replay --reason``)."""
    b = esc(base)
    return "".join(
        f'<form method="post" action="{b}/replay" class="inline"><input type="hidden" name="csrf" value="{esc(csrf)}">'
        f'<input type="hidden" name="reason" value="{esc(code)}"><button>Replay all {esc(n)} <code>{esc(code)}</code></button></form>'
        for code, n in dead_by_reason.items()
    )


def replay_one(base: str, message_id: str, csrf: str) -> str:
    b = esc(base)
    return (f'<form method="post" action="{b}/replay" class="inline"><input type="hidden" name="csrf" value="{esc(csrf)}">'
            f'<input type="hidden" name="message_id" value="{esc(message_id)}"><button>Replay</button></form>')
