"""Small inline SVG charts: the last hour as bars, a session as dots on a time axis.

Pure functions from numbers to markup, no script and no style attribute (the pages' CSP
allows one hashed stylesheet): colours are SVG presentation attributes. Every bar and dot
has a ``<title>`` (a tooltip, and what a screen reader reads); every chart states its total
in text, so it reads without the picture.
"""

from __future__ import annotations

import html
from datetime import datetime, timezone
from typing import Any, Sequence

from edgeproxy.identity.sessions import duration_text

WIDTH, HEIGHT = 300, 48
COLOURS = ("#2b6cb0", "#c05621", "#2f855a", "#6b46c1", "#b7791f", "#c53030")


def _esc(value: Any) -> str:
    return html.escape("" if value is None else str(value))


def _hhmm(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, timezone.utc).strftime("%H:%M")


def _number(value: float) -> str:
    return f"{value:,.0f}" if float(value).is_integer() else f"{value:,.1f}"


def bars(chart_id: str, title: str, points: Sequence[tuple[int, float | None]], *, unit: str = "",
         total: str | None = None, colour: str = COLOURS[0]) -> str:
    """One bar per minute; ``total`` the caption's figure (default: the sum of the points)."""
    values = [v for _, v in points if v is not None]
    peak = max(values, default=0) or 1
    step = WIDTH / max(1, len(points))
    rects = []
    for i, (t, v) in enumerate(points):
        if not v:
            continue
        h = max(1.0, v / peak * (HEIGHT - 2))
        rects.append(f'<rect x="{i * step:.1f}" y="{HEIGHT - h:.1f}" width="{max(1.0, step - 1):.1f}" height="{h:.1f}" '
                     f'fill="{colour}"><title>{_hhmm(t)} UTC: {_number(v)}{_esc(unit)}</title></rect>')
    figure = total if total is not None else _number(sum(values))
    span = f"{_hhmm(points[0][0])}–{_hhmm(points[-1][0])} UTC" if points else ""
    return (f'<figure class="chart" id="chart-{_esc(chart_id)}" data-total="{_esc(figure)}">'
            f'<figcaption>{_esc(title)}: <b class="chart-total">{_esc(figure)}</b>{_esc(unit)}</figcaption>'
            f'<svg viewBox="0 0 {WIDTH} {HEIGHT}" width="{WIDTH}" height="{HEIGHT}" role="img" '
            f'aria-label="{_esc(title)}, per minute, {_esc(span)}">'
            f'<line x1="0" y1="{HEIGHT - 0.5}" x2="{WIDTH}" y2="{HEIGHT - 0.5}" stroke="#bbb"/>{"".join(rects)}</svg>'
            f'<span class="axis">{_esc(span)}</span></figure>')


def timeline(events: Sequence[dict[str, Any]], *, gap_ms: int) -> str:
    """A device's events on a time axis: one colour per session, idle gaps over ``gap_ms`` marked
    (their length in the title), a line where the session changed.

    ``events``: ``{"t": ms, "session_id": int | None, "label": str}``, any order.
    """
    if not events:
        return '<p class="note">No events to draw.</p>'
    rows = sorted(events, key=lambda e: e["t"])
    first, last = rows[0]["t"], rows[-1]["t"]
    span = max(1, last - first)
    width, height, pad = 640, 56, 8

    def x(t: int) -> float:
        return pad + (t - first) / span * (width - 2 * pad)

    colour_of: dict[Any, str] = {}
    marks: list[str] = []
    previous = None
    for e in rows:
        colour_of.setdefault(e["session_id"], COLOURS[len(colour_of) % len(COLOURS)])
        if previous is not None:
            gap = e["t"] - previous["t"]
            if gap >= gap_ms:
                marks.append(f'<rect class="gap" x="{x(previous["t"]):.1f}" y="8" width="{x(e["t"]) - x(previous["t"]):.1f}" '
                             f'height="28" fill="#f2f2f2"><title>idle {_esc(duration_text(gap))}</title></rect>')
            if e["session_id"] != previous["session_id"]:
                marks.append(f'<line class="rotation" x1="{x(e["t"]):.1f}" y1="4" x2="{x(e["t"]):.1f}" y2="40" '
                             f'stroke="#c53030" stroke-dasharray="3 2"><title>new session {_esc(e["session_id"])} '
                             f'after {_esc(duration_text(gap))}</title></line>')
        previous = e
    dots = [f'<circle class="event" cx="{x(e["t"]):.1f}" cy="22" r="4" fill="{colour_of[e["session_id"]]}">'
            f'<title>{_esc(_hhmm(e["t"]))} UTC · {_esc(e["label"])} · session {_esc(e["session_id"])}</title></circle>'
            for e in rows]
    sessions = len(colour_of)
    legend = (f'{len(rows)} events in {sessions} session{"s" if sessions != 1 else ""}, '
              f'{_hhmm(first)}–{_hhmm(last)} UTC')
    return (f'<figure class="timeline" data-events="{len(rows)}" data-sessions="{sessions}">'
            f'<svg viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img" aria-label="{_esc(legend)}">'
            f'<line x1="{pad}" y1="44" x2="{width - pad}" y2="44" stroke="#bbb"/>{"".join(marks)}{"".join(dots)}'
            f'<text x="{pad}" y="54" font-size="9" fill="#555">{_esc(_hhmm(first))}</text>'
            f'<text x="{width - pad}" y="54" font-size="9" fill="#555" text-anchor="end">{_esc(_hhmm(last))}</text>'
            f'</svg><figcaption>{_esc(legend)}</figcaption></figure>')
