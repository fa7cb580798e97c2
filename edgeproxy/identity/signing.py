"""itsdangerous as the identity cookies use it: the signer, the serializer with key rotation,
the cleanup after a refused cookie, and the table of values already verified.

Why a module of its own: these subclass or reach into itsdangerous and ``OrderedDict``,
which mypyc cannot compile into native classes, so ``cookies`` (the codec's rules, run on
every tracking call) can be built with mypyc without them (``edgeproxy/compiled.py`` says
why it is not, today).
"""

from __future__ import annotations

import hashlib
import time
import traceback
from collections import OrderedDict
from typing import Callable, Sequence, TypeVar

from itsdangerous import TimestampSigner, URLSafeTimedSerializer

# Device cookies verified and session cookies issued, remembered per process: the 20,000
# most recently used of each (~7 MB). Past that a cookie is simply verified again.
VERIFIED_CACHE_SIZE = 20_000

_V = TypeVar("_V")


def _signer_with_clock(clock: Callable[[], float]) -> type[TimestampSigner]:
    """A TimestampSigner reading ``clock`` (tests age cookies without sleeping)."""

    class ClockSigner(TimestampSigner):
        def get_timestamp(self) -> int:
            return int(clock())

        def derive_key(self, secret_key: str | bytes | None = None) -> bytes:
            """itsdangerous re-derives the key (one more hash) on every sign and verify; it
            is a pure function of (salt, key), so each signer keeps what it derived."""
            cache: dict[str | bytes | None, bytes] = self.__dict__.setdefault("_derived_keys", {})
            key = cache.get(secret_key)
            if key is None:
                key = cache[secret_key] = super().derive_key(secret_key)
            return key

    return ClockSigner


def make_serializer(keys: Sequence[str], salt: str, clock: Callable[[], float] = time.time) -> URLSafeTimedSerializer:
    """A timed serializer that signs with ``keys[0]`` and verifies with every key.

    itsdangerous signs with the LAST key of its list, so the configured order is reversed.
    Exposed so other signed cookies (the /debug login) share the rotation rule.
    """
    if not keys:
        raise ValueError("at least one signing key is required")
    return URLSafeTimedSerializer(
        list(reversed([str(k) for k in keys])),
        salt=salt,
        signer=_signer_with_clock(clock),
        # itsdangerous's default is HMAC-SHA1 through a Python wrapper function, which sends
        # hmac.new down its pure-Python path; the OpenSSL constructor itself gives the same
        # signatures (old cookies stay valid) at a fraction of the cost.
        signer_kwargs={"digest_method": hashlib.sha1},
        serializer_kwargs={"separators": (",", ":")},
    )


def forget_refusal(exc: BaseException) -> None:
    """Clear a refused cookie's error frames, to break the reference cycle itsdangerous leaves.

    ``TimestampSigner.unsign`` catches the signature error into a local variable and raises
    another one (or it again): the first error's traceback holds the very frame whose local
    holds the error. Left alone, that cycle pins the frame, and the request's frames above
    it, until the cycle collector runs: ~60 objects for every request with a stale or forged
    cookie, and young collections of up to 90 ms (measured under a stream of cookies signed
    with a retired key). Clearing the finished frames of the traceback drops those locals;
    the error itself is not needed, a refused cookie reads as absent.
    """
    traceback.clear_frames(exc.__traceback__)
    exc.__traceback__ = None


class Recent(OrderedDict[str, _V]):
    """The VERIFIED_CACHE_SIZE most recently used entries: a hit moves to the back, and the
    entry at the front (used longest ago) makes room for a new one.

    Why not clear the table when full, as it once did: every returning visitor then paid a
    signature check at once, and one who keeps sending the same value (a page whose calls
    overlap, so they carry the cookie from before the last answer) lost it every 20,000 calls.
    """

    def recall(self, key: str) -> _V | None:
        hit = self.get(key)
        if hit is not None:
            self.move_to_end(key)
        return hit

    def remember(self, key: str, value: _V) -> None:
        self[key] = value
        self.move_to_end(key)
        if len(self) > VERIFIED_CACHE_SIZE:
            self.popitem(last=False)
