"""Identity layer: signed device cookie, server-authoritative Amplitude sessions.

``sessions`` holds the pure rules, ``cookies`` the signing and cookie specs, ``store`` and
``redis_store`` the session stores, ``service`` the per-message orchestration the edge calls.
"""

from edgeproxy.identity.cookies import CookieSpec, load_signing_keys
from edgeproxy.identity.service import (
    CookieIdentity,
    IdentityResult,
    IdentityService,
    event_time_ms,
)
from edgeproxy.identity.sessions import SessionState, is_web, touch
from edgeproxy.identity.store import MemorySessionStore, SessionStore, open_store

__all__ = [
    "CookieIdentity",
    "CookieSpec",
    "IdentityResult",
    "IdentityService",
    "MemorySessionStore",
    "SessionState",
    "SessionStore",
    "event_time_ms",
    "is_web",
    "load_signing_keys",
    "open_store",
    "touch",
]
