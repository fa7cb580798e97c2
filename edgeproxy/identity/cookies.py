"""Signed identity cookies: the device cookie, the session cookie and the readable pair.

Why signed and server-set: Safari caps script-written cookies at 7 days and ad blockers
keep Segment's plugin from running; an HttpOnly cookie set by the site's own server lasts
its full ``Max-Age`` and cannot be forged by the page. Signing is itsdangerous with a list
of keys: the first configured key signs, every key verifies, so keys rotate without
logging anyone out.

Every reader here is total: a forged, expired, garbled, oversized or wrong-key cookie reads
as "absent" (the caller then issues a fresh identity), never as an exception.

Cookies leave this module as ``CookieSpec`` values (plain data); the edge turns them into
``Set-Cookie`` headers. Values are URL-safe base64 or decimal digits only, so no header
injection is possible whatever the device id contains.
"""

from __future__ import annotations

import os
import re
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Collection, Sequence, cast

import orjson
from itsdangerous import BadData, Signer, TimestampSigner, URLSafeTimedSerializer
from itsdangerous.encoding import base64_decode, base64_encode

from edgeproxy.identity.sessions import SessionState
from edgeproxy.identity.signing import Recent, forget_refusal, make_serializer

# Segment's names, read by the browser plugin and by Amplitude Session Replay.
READABLE_SESSION_COOKIE = "analytics_session_id"
READABLE_LAST_ACCESS_COOKIE = "analytics_session_id.last_access"

# Browsers drop cookies over 4096 bytes; anything longer is not ours.
MAX_COOKIE_VALUE = 4096
# Longest device id kept in a cookie (uuids are 36; Segment ids are free-form strings).
MAX_DEVICE_ID_LEN = 200

SIGNING_KEY_FILE = "signing.key"

# Unicode category Cc (C0 and C1 controls), as one regex: this runs on every tracking call.
_CONTROL_CHARS = re.compile("[\x00-\x1f\x7f-\x9f]")

_DEVICE_SALT = "edgeproxy.device"
_SESSION_SALT = "edgeproxy.session"
_DOMAIN_RE = re.compile(r"^\.?[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\Z")


@dataclass(slots=True)
class CookieSpec:
    """One cookie to set, as plain data.

    Slotted, not frozen: a tracking response builds up to four, and a frozen dataclass pays an
    ``object.__setattr__`` per field (8 here, ~1 µs a cookie); nothing changes or hashes one.
    """

    name: str
    value: str
    max_age: int
    http_only: bool
    secure: bool
    same_site: str = "Lax"
    domain: str | None = None
    path: str = "/"

    def set_cookie_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``aiohttp.web.StreamResponse.set_cookie``."""
        kwargs: dict[str, Any] = {
            "max_age": self.max_age,
            "path": self.path,
            "secure": self.secure,
            "httponly": self.http_only,
            "samesite": self.same_site,
        }
        if self.domain:
            kwargs["domain"] = self.domain
        return kwargs

    def header_value(self) -> str:
        """The ``Set-Cookie`` header value."""
        parts = [f"{self.name}={self.value}", f"Max-Age={self.max_age}", f"Path={self.path}"]
        if self.domain:
            parts.append(f"Domain={self.domain}")
        if self.secure:
            parts.append("Secure")
        if self.http_only:
            parts.append("HttpOnly")
        parts.append(f"SameSite={self.same_site}")
        return "; ".join(parts)


def _session_payload(payload: Any, device_id: str) -> SessionState | None:
    """A session cookie's payload as state, if well formed and bound to ``device_id``."""
    if not isinstance(payload, list) or len(payload) != 5 or payload[0] != device_id:
        return None
    numbers = payload[1:]
    for n in numbers:  # a loop, not all(genexpr): this runs for every session cookie issued or read
        if not isinstance(n, int) or isinstance(n, bool) or n < 0:
            return None
    session_id, last_event_ms, event_count, first_seen = numbers
    if session_id > last_event_ms or event_count < 1:
        return None
    return SessionState(
        session_id=session_id,
        last_event_ms=last_event_ms,
        event_count=event_count,
        user_id=None,
        first_seen=min(first_seen, session_id),
    )


def cookie_values(header: str | None, names: Collection[str]) -> dict[str, str]:
    """The values of ``names`` in a ``Cookie`` request header (the first of each name: the
    browser sends the most specific path first).

    Why not ``request.cookies``: that parses every cookie of the site into an
    ``http.cookies.Morsel`` (~20 µs with a few analytics cookies) on every tracking call, and
    only two of them are ours. Our values never need unquoting; surrounding quotes, which
    some clients add, are dropped.
    """
    found: dict[str, str] = {}
    if not header:
        return found
    for part in header.split(";"):
        name, sep, value = part.partition("=")
        name = name.strip()
        if sep and name in names and name not in found:
            found[name] = value.strip().strip('"')
    return found


def valid_device_id(value: Any) -> bool:
    """A string fit to be an edge device id: non-blank, bounded, no control characters."""
    if not isinstance(value, str) or not value.strip() or len(value) > MAX_DEVICE_ID_LEN:
        return False
    return _CONTROL_CHARS.search(value) is None


class CookieCodec:
    """Encodes and verifies the two signed cookies.

    The device payload is ``[device_id]`` or ``[device_id, 1]`` for a *provisional* id (one
    issued on an HTML page before any event was seen, which the first event's
    ``anonymousId`` may replace). The session payload is ``[device_id, session_id,
    last_event_ms, event_count, first_seen]``: compact, and bound to the device it belongs
    to, so a session cookie copied next to another device cookie is ignored.
    """

    def __init__(self, keys: Sequence[str], *, max_age_s: float, clock: Callable[[], float] = time.time):
        self._device = make_serializer(keys, _DEVICE_SALT, clock)
        self._session = make_serializer(keys, _SESSION_SALT, clock)
        # The serializers' own signers, used directly on the hot path: the serializer's zlib
        # attempt and stdlib JSON cost ~4x the signature for these tiny payloads. The format is
        # the serializer's uncompressed one, so values stay readable by it and vice versa.
        self._device_signer = cast(TimestampSigner, self._device.make_signer())  # a timed serializer's
        self._session_signer = self._session.make_signer()
        self._max_age = max_age_s
        self._clock = clock
        # Verified device cookies: a returning visitor sends the same value on every call, so
        # its signature is checked once, not per request. value -> (device id, provisional, signed at).
        self._verified_devices: Recent[tuple[str, bool, int]] = Recent()
        # Session cookies this process issued: value -> (device id, state, signed at).
        self._issued_sessions: Recent[tuple[str, SessionState, int]] = Recent()

    @staticmethod
    def _dump(signer: Signer, payload: Any) -> str:
        return signer.sign(base64_encode(orjson.dumps(payload))).decode("ascii")

    def dump_device(self, device_id: str, *, provisional: bool = False) -> str:
        if not valid_device_id(device_id):
            raise ValueError(f"not a usable device id for a cookie: {device_id!r}")
        return self._dump(self._device_signer, [device_id, 1] if provisional else [device_id])

    def load_device(self, value: str | None) -> tuple[str, bool] | None:
        """``(device_id, provisional)`` or None when the cookie is absent or not valid."""
        loaded = self.load_device_signed(value)
        return None if loaded is None else loaded[:2]

    def load_device_signed(self, value: str | None) -> tuple[str, bool, int] | None:
        """``(device_id, provisional, signed at (epoch s))`` or None when absent or not valid."""
        if not isinstance(value, str) or not value or len(value) > MAX_COOKIE_VALUE:
            return None
        hit = self._verified_devices.recall(value)
        if hit is not None:
            return hit if self._clock() - hit[2] <= self._max_age else None
        try:
            raw, signed_at = self._device_signer.unsign(value, max_age=self._max_age, return_timestamp=True)  # type: ignore[call-overload]  # a float max_age works
            device = self._device_payload(self._decode(self._device, raw))
        except (BadData, ValueError, TypeError, OverflowError) as exc:  # garbled base64/zlib/json too
            forget_refusal(exc)
            return None
        if device is None:
            return None
        loaded = (device[0], device[1], int(signed_at.timestamp()))
        self._verified_devices.remember(value, loaded)
        return loaded

    @staticmethod
    def _device_payload(payload: Any) -> tuple[str, bool] | None:
        if not isinstance(payload, list) or not payload or not valid_device_id(payload[0]):
            return None
        if len(payload) == 1:
            return payload[0], False
        if len(payload) == 2 and payload[1] == 1 and payload[1] is not True:
            return payload[0], True
        return None

    def dump_session(self, device_id: str, state: SessionState) -> str:
        payload = [device_id, state.session_id, state.last_event_ms, state.event_count, state.first_seen]
        value = self._dump(self._session_signer, payload)
        loaded = _session_payload(payload, device_id)
        if loaded is not None:
            # The browser sends this exact value back with its next event: remembering what it
            # says spares that request a signature check (the value is ours, byte for byte).
            self._issued_sessions.remember(value, (device_id, loaded, int(self._clock())))
        return value

    def load_session(self, value: str | None, device_id: str | None) -> SessionState | None:
        """The session state, only when the cookie is valid and bound to ``device_id``."""
        if device_id is None:
            return None
        if isinstance(value, str):
            issued = self._issued_sessions.recall(value)
            if issued is not None and issued[0] == device_id and self._clock() - issued[2] <= self._max_age:
                return issued[1]
        return _session_payload(self._load(self._session, self._session_signer, value), device_id)

    def _load(self, serializer: URLSafeTimedSerializer, signer: Signer, value: str | None) -> Any:
        if not isinstance(value, str) or not value or len(value) > MAX_COOKIE_VALUE:
            return None
        try:
            return self._decode(serializer, signer.unsign(value, max_age=self._max_age))  # type: ignore[call-arg]
        except (BadData, ValueError, TypeError, OverflowError) as exc:  # garbled base64/zlib/json too (orjson's error is a ValueError)
            forget_refusal(exc)
            return None

    @staticmethod
    def _decode(serializer: URLSafeTimedSerializer, payload: bytes) -> Any:
        """A verified payload's JSON. Raises on garbage (callers treat that as absent)."""
        if payload[:1] == b".":  # compressed: only the serializer's own dumps writes that
            return serializer.load_payload(payload)
        return orjson.loads(base64_decode(payload))  # what _dump writes (stdlib json is 3x slower)


@dataclass(frozen=True)
class CookiePolicy:
    """Names and attributes of the identity cookies, from ``[sessions]``."""

    device_cookie: str = "_ep_did"
    session_cookie: str = "_ep_sess"
    domain: str | None = None
    secure: bool = True
    max_age: int = 400 * 86400

    @classmethod
    def from_settings(cls, settings: Any) -> CookiePolicy:
        s = settings.sessions
        domain = s.cookie_domain.strip() or None
        if domain is not None and not _DOMAIN_RE.match(domain):
            raise ValueError(
                f"sessions.cookie_domain: not a domain name such as \"example.com\", got {s.cookie_domain!r}"
            )
        return cls(
            device_cookie=s.device_cookie,
            session_cookie=s.session_cookie,
            domain=domain,
            secure=bool(s.secure_cookies),
            max_age=int(s.device_cookie_max_age),
        )

    def signed(self, name: str, value: str) -> CookieSpec:
        return CookieSpec(name, value, self.max_age, http_only=True, secure=self.secure, domain=self.domain)

    def readable(self, name: str, value: int) -> CookieSpec:
        """The browser plugin's cookies: script-readable, epoch ms as a decimal string."""
        return CookieSpec(name, str(int(value)), self.max_age, http_only=False, secure=self.secure, domain=self.domain)


def load_signing_keys(settings: Any) -> list[str]:
    """The configured signing keys, or the one kept in ``<data_dir>/signing.key``.

    Why a file: with no key configured, a key generated per start would log every visitor
    out on each restart. The file is created once (mode 0600) by an atomic link of a fully
    written temporary file, so processes starting together agree on one key.
    """
    configured = [k for k in settings.sessions.signing_keys if k]
    if configured:
        return list(configured)
    data_dir = Path(settings.delivery.data_dir)
    path = data_dir / SIGNING_KEY_FILE
    key = _read_key(path)
    if key is not None:
        return [key]
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RuntimeError(f"delivery.data_dir: cannot create {str(data_dir)!r} to keep the signing key: {exc}") from None
    tmp = data_dir / f".{SIGNING_KEY_FILE}.{os.getpid()}.{secrets.token_hex(4)}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_urlsafe(48) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass  # another process won the race: use its key
    finally:
        tmp.unlink(missing_ok=True)
    key = _read_key(path)
    if key is None:
        raise RuntimeError(f"{path}: signing key file is empty or unreadable; delete it to generate a new one")
    return [key]


def _read_key(path: Path) -> str | None:
    try:
        text = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise RuntimeError(f"{path}: cannot read the signing key: {exc}") from None
    if len(text) < 16:
        raise RuntimeError(f"{path}: the signing key is shorter than 16 characters; delete the file to generate a new one")
    return text
