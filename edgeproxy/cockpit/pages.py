"""The cockpit's HTML: the overview's live part, the event trail and one event's story.

Pure functions from the views' data (the dicts their JSON twins return) to markup. Everything
that came from a client is escaped: events are attacker-controlled.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

import orjson

from edgeproxy.cockpit.charts import COLOURS, bars
from edgeproxy.cockpit.live import HEADLINES
from edgeproxy.edge.debug_pages import esc, iso, json_default, table

ARROWS = {"up": "↑", "down": "↓", "flat": "→"}


def pretty(value: Any) -> str:
    return f"<pre>{esc(orjson.dumps(value, default=json_default, option=orjson.OPT_INDENT_2).decode())}</pre>"


def live_section(live: dict[str, Any]) -> str:
    """Headline numbers (last 5 minutes, arrow against the 5 before) and the hour's small charts."""
    cells = []
    for name, title in HEADLINES:
        h = live["headline"][name]
        cells.append(f'<div class="headline" id="headline-{esc(name)}"><span class="figure">{esc(h["recent"])}</span> '
                     f'<span class="trend trend-{esc(h["trend"])}" title="the 5 minutes before: {esc(h["before"])}">'
                     f'{ARROWS[h["trend"]]}</span><br>{esc(title)} <span class="note">(5 min; {esc(h["hour"])} this hour)</span></div>')
    spool = live["spool"]
    cells.append(f'<div class="headline" id="headline-spool"><span class="figure">{esc(_int(spool["depth"]))}</span><br>'
                 f'waiting in the spool <span class="note">(oldest {esc(_int(spool["oldest_age_s"]))} s)</span></div>')
    charts = live["charts"]
    figures = [bars("accepted", "Events accepted", charts["accepted"]),
               bars("sessions", "Sessions started", charts["sessions"], colour=COLOURS[2])]
    for name, label_title in (("rejected", "Rejected"), ("delivered", "Delivered to"), ("failed", "Failed requests to"),
                              ("dead", "Dead letters of")):
        for i, (label, points) in enumerate(sorted(charts[name].items())):
            figures.append(bars(f"{name}-{label}", f"{label_title} {label}", points, colour=COLOURS[(i + 1) % len(COLOURS)]))
    for label, points in sorted(charts["latency_ms"].items()):
        known = [v for _, v in points if v is not None]
        mean = f"{sum(known) / len(known):.0f}" if known else "none"
        figures.append(bars(f"latency-{label}", f"Upstream latency, {label}", points, unit=" ms", total=mean,
                            colour=COLOURS[3]))
    figures.append(bars("spool-depth", "Spool depth", charts["spool_depth"], total=_int(spool["depth"]), colour=COLOURS[4]))
    figures.append(bars("oldest-age", "Oldest waiting item", charts["oldest_age_s"], unit=" s",
                        total=_int(spool["oldest_age_s"]), colour=COLOURS[5]))
    return (f'<div class="headlines">{"".join(cells)}</div>'
            f'<h2>The last hour (this process)</h2><div class="charts">{"".join(figures)}</div>')


def _int(value: float | None) -> str:
    return "none" if value is None else str(int(value))


TRAIL_HEADERS = ["received", "source", "message id", "type", "event", "user id", "device id", "outcome", "delivery"]


def trail_rows(base: str, rows: list[dict[str, Any]]) -> str:
    """The trail's table rows, newest first (also what the stream sends to a live page)."""
    b = esc(base)
    out = []
    for r in rows:
        mid = r["message_id"]
        link = f'<a href="{b}/events/{esc(mid)}"><code>{esc(mid)}</code></a>' if mid else "<i>none</i>"
        device = (f'<a href="{b}/sessions/{esc(r["device_id"])}"><code>{esc(r["device_id"])}</code></a>'
                  if r["device_id"] else "")
        cells = [esc(iso(r["received_ms"])), esc(r["source"]), link, esc(r["type"]), esc(r["event"]), esc(r["user_id"]),
                 device, esc(r["outcome"]), f'<span class="delivery-{esc(r["delivery"].split()[0])}">{esc(r["delivery"])}</span>']
        out.append(f'<tr data-seq="{esc(r["seq"])}">' + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    return "".join(out)


def trail_table(base: str, rows: list[dict[str, Any]]) -> str:
    head = "".join(f"<th>{esc(h)}</th>" for h in TRAIL_HEADERS)
    empty = "" if rows else f'<tr class="empty"><td colspan="{len(TRAIL_HEADERS)}">none</td></tr>'
    return f'<table class="trail"><thead><tr>{head}</tr></thead><tbody id="trail-rows">{trail_rows(base, rows)}{empty}</tbody></table>'


def render_trail(base: str, data: dict[str, Any]) -> str:
    b = esc(base)
    return (f'<p><a href="{b}">overview</a> · <a href="{b}/events?q={esc(data["query"])}&amp;format=json">JSON</a></p>'
            f'<form method="get" action="{b}/events"><input name="q" value="{esc(data["query"])}" size="40" '
            'placeholder="message id, device id, user id or event name"> <button>Search</button></form>'
            f'<p class="note">The last {esc(data["size"])} messages this process received ({esc(data["kept"])} kept now); '
            "older ones are in the spool, on their device's session page.</p>"
            f'{live_hooks(base, "events", data["query"], data["seq"])}{trail_table(base, data["events"])}')


def live_hooks(base: str, view: str, query: str, seq: int) -> str:
    """The pause button and status line the script drives (hidden without JavaScript), the
    stream's address, and the script itself (the page works the same without it)."""
    stream = f"{base}/stream?" + urlencode({"view": view, "q": query, "after": seq})
    return (f'<p class="live" id="live-controls" hidden data-stream="{esc(stream)}" data-view="{esc(view)}">'
            '<button type="button" id="live-toggle">Pause</button> <span id="live-status">connecting…</span></p>'
            f'<script src="{esc(base)}/cockpit.js" defer></script>')


def render_entry(base: str, e: dict[str, Any]) -> str:
    """One message's story: as received, the identity decision, the payloads, every attempt."""
    b = esc(base)
    ident = e["identity"]
    device = (f'<a href="{b}/sessions/{esc(e["device_id"])}"><code>{esc(e["device_id"])}</code></a>'
              if e["device_id"] else "none")
    decision = table(["", ""], [
        ["outcome", esc(e["outcome"])],
        ["device id", device],
        ["device id from", esc(ident["device_from"] or "n/a")],
        ["session", esc(ident["session"] or "n/a")],
        ["session id", f'<code>{esc(ident["session_id"])}</code> {esc(iso(ident["session_id"]))}'],
        ["delivery", esc(e["delivery"])],
    ])
    attempts = table(
        ["time", "target", "endpoint", "status", "outcome", "answer", "next attempt"],
        [[esc(iso(a["at_ms"])), esc(a["target"]), esc(a["endpoint"]), esc(a["status"] if a["status"] is not None else "no answer"),
          esc(a["outcome"]), f'<code>{esc(a["answer"])}</code>', esc(iso(a["next_ms"]))] for a in e["attempts"]],
    )
    amplitude = "".join(f"<h3>{esc(p['endpoint'])}</h3>{pretty(p['item'])}" for p in e["amplitude_payloads"]) or \
        "<p>none (withheld, refused, or Amplitude is not a target of this source)</p>"
    relay = pretty(e["relay_payload"]) if e["relay_payload"] is not None else "<p>none (no relay for this source)</p>"
    refused = "".join(f"<p><b>{esc(r['reason'])}</b></p>" for r in e["refused"])
    return (f'<p><a href="{b}/events">event trail</a> · <a href="{b}/events/{esc(e["message_id"])}?format=json">JSON</a></p>'
            f'<h2>Identity decision</h2>{decision}'
            f'<h2>Delivery attempts</h2>{attempts}'
            f'<h2>Amplitude payloads</h2>{refused}{amplitude}'
            f'<h2>Relay payload (Segment)</h2>{relay}'
            f'<h2>Message as received (normalised)</h2>{pretty(e["message"])}')


def devices_table(base: str, devices: list[dict[str, Any]]) -> str:
    """Mobile and server devices with the session ids their libraries sent."""
    b = esc(base)
    return table(
        ["device id", "library", "user id", "session id", "session start", "last event", "events"],
        [[f'<a href="{b}/sessions/{esc(d["device_id"])}"><code>{esc(d["device_id"])}</code></a>', esc(d["library"]),
          esc(d["user_id"]), f'<code>{esc(d["session_id"])}</code>', esc(iso(d["session_id"])), esc(iso(d["last_ms"])),
          esc(d["events"])] for d in devices],
    )
