"""Putting the analytics snippet into a page the origin serves (SPEC section 7): the rules.

Pure functions of the page's bytes and headers, apart from the proxy that streams pages
(``origin``): which answers may be rewritten (HTML of a status a browser renders, identity
or gzip encoded, at most ``INJECT_MAX_BYTES``, not UTF-16/32) and where the snippet goes
(before ``</head>``, else right after ``<body …>``; a fragment with neither passes untouched).
"""

from __future__ import annotations

import re
import zlib

INJECT_MAX_BYTES = 2 * 1024 * 1024

_HEAD_CLOSE = re.compile(rb"</head\s*>", re.IGNORECASE)
_BODY_OPEN = re.compile(rb"<body(?:\s[^>]*)?>", re.IGNORECASE)


def inject_html(html: bytes, snippet: bytes) -> bytes | None:
    """``snippet`` before ``</head>``, else right after ``<body …>``; None for a fragment with neither."""
    m = _HEAD_CLOSE.search(html)
    if m:
        return html[: m.start()] + snippet + html[m.start():]
    m = _BODY_OPEN.search(html)
    if m:
        return html[: m.end()] + snippet + html[m.end():]
    return None


def rewrite_body(body: bytes, encoding: str, snippet: bytes, cap: int = INJECT_MAX_BYTES) -> bytes | None:
    """The page with the snippet, in the same content encoding; None when it must pass untouched."""
    if encoding == "gzip":
        try:
            d = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
            html = d.decompress(body, cap + 1)
            if len(html) > cap or d.unconsumed_tail or d.unused_data or not d.eof:
                return None  # too big once inflated (or a gzip bomb), or more than one member
        except zlib.error:
            return None
    else:
        html = body
    if html.startswith((b"\xff\xfe", b"\xfe\xff")):
        return None  # UTF-16: byte-level insertion would corrupt it
    new = inject_html(html, snippet)
    if new is None:
        return None
    if encoding == "gzip":
        c = zlib.compressobj(6, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
        return c.compress(new) + c.flush()
    return new


def media_type(content_type: str) -> tuple[str, str]:
    """(media type, charset) of a Content-Type value, both lower case."""
    media, _, params = content_type.partition(";")
    charset = ""
    for param in params.split(";"):
        key, _, value = param.partition("=")
        if key.strip().lower() == "charset":
            charset = value.strip().strip('"').lower()
    return media.strip().lower(), charset


def injectable_status(status: int) -> bool:
    return (200 <= status < 300 and status not in (204, 206)) or 400 <= status < 600
