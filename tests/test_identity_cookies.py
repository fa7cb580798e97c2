"""Cookie signing, rotation, tamper resistance, cookie attributes and the kept signing key."""

from __future__ import annotations

import os
import stat
import threading
from http.cookies import SimpleCookie

import pytest
from hypothesis import given
from hypothesis import strategies as st

from itsdangerous import TimestampSigner

from edgeproxy.config import Settings
from edgeproxy.identity import signing
from edgeproxy.identity.cookies import (
    MAX_DEVICE_ID_LEN,
    CookieCodec,
    CookiePolicy,
    CookieSpec,
    load_signing_keys,
    valid_device_id,
)
from edgeproxy.identity.sessions import SessionState
from edgeproxy.identity.signing import make_serializer

KEY_A = "a" * 32
KEY_B = "b" * 32
MAX_AGE = 400 * 86400
NOW = 1_780_000_000.0
STATE = SessionState(session_id=1_780_000_000_000, last_event_ms=1_780_000_060_000, event_count=3, user_id="u", first_seen=1_779_000_000_000)


def codec(keys=(KEY_A,), now=NOW):
    return CookieCodec(list(keys), max_age_s=MAX_AGE, clock=lambda: now)


# --- signing and rotation ----------------------------------------------------------------


def test_device_cookie_round_trips():
    c = codec()
    assert c.load_device(c.dump_device("dev-1")) == ("dev-1", False)
    assert c.load_device(c.dump_device("dev-1", provisional=True)) == ("dev-1", True)


def test_rotation_first_key_signs_every_key_verifies():
    old = codec([KEY_A]).dump_device("dev-1")
    rotated = codec([KEY_B, KEY_A])
    assert rotated.load_device(old) == ("dev-1", False)  # old key still verifies
    new = rotated.dump_device("dev-1")
    assert codec([KEY_B]).load_device(new) == ("dev-1", False)  # new key signs
    assert codec([KEY_A]).load_device(new) is None


def test_removed_key_no_longer_verifies():
    old = codec([KEY_A]).dump_device("dev-1")
    assert codec([KEY_B]).load_device(old) is None


def test_serializer_requires_a_key():
    with pytest.raises(ValueError, match="signing key"):
        make_serializer([], "salt")


def test_expired_cookie_is_ignored_and_a_fresh_one_is_accepted():
    value = codec(now=NOW).dump_device("dev-1")
    assert codec(now=NOW + MAX_AGE - 10).load_device(value) == ("dev-1", False)
    assert codec(now=NOW + MAX_AGE + 10).load_device(value) is None


def test_device_and_session_cookies_are_not_interchangeable():
    c = codec()
    device = c.dump_device("dev-1")
    session = c.dump_session("dev-1", STATE)
    assert c.load_device(session) is None
    assert c.load_session(device, "dev-1") is None


def test_session_cookie_round_trips_and_is_bound_to_its_device():
    c = codec()
    value = c.dump_session("dev-1", STATE)
    got = c.load_session(value, "dev-1")
    assert (got.session_id, got.last_event_ms, got.event_count, got.first_seen) == (
        STATE.session_id, STATE.last_event_ms, STATE.event_count, STATE.first_seen,
    )
    assert got.user_id is None  # not carried: the cookie stays small and free of PII
    assert c.load_session(value, "dev-2") is None
    assert c.load_session(value, None) is None


def test_session_cookie_is_compact():
    value = codec().dump_session("3f1d2c4e-8a8b-4c1e-9f3e-0d1c2b3a4f5e", STATE)
    assert len(value) < 200


def test_session_cookie_with_inconsistent_numbers_is_ignored():
    s = make_serializer([KEY_A], "edgeproxy.session", clock=lambda: NOW)
    c = codec()
    for payload in (
        ["dev-1", 10, 5, 1, 1],  # session starts after its last event
        ["dev-1", 1, 5, 0, 1],  # no events
        ["dev-1", 1, 5, True, 1],
        ["dev-1", -1, 5, 1, 1],
        ["dev-1", "1", 5, 1, 1],
        ["dev-1", 1, 5, 1],
        {"d": "dev-1"},
    ):
        assert c.load_session(s.dumps(payload), "dev-1") is None, payload


def test_device_payload_shape_is_checked_after_the_signature():
    s = make_serializer([KEY_A], "edgeproxy.device", clock=lambda: NOW)
    c = codec()
    for payload in (["dev", 2], ["dev", 1, 1], [""], [5], "dev", {"d": "dev"}, ["x" * (MAX_DEVICE_ID_LEN + 1)], ["a\nb"]):
        assert c.load_device(s.dumps(payload)) is None, payload


@pytest.mark.parametrize(
    "value",
    [None, "", "garbage", "a.b.c", "..", "eyJ.x.y", "x" * 5000, "\x00\xff", "é" * 10, ".eJyrVkrOz0nNK1GyUgpILUrLTM5WKsnPS1VKycxRqg0A.AAAAAA.ZZZZ"],
)
def test_garbled_values_are_ignored(value):
    c = codec()
    assert c.load_device(value) is None
    assert c.load_session(value, "dev-1") is None


def test_forged_signature_is_ignored():
    c = codec()
    value = c.dump_device("dev-1")
    payload, ts, sig = value.rsplit(".", 2)
    forged_sig = ("A" if sig[0] != "A" else "B") + sig[1:]
    assert c.load_device(f"{payload}.{ts}.{forged_sig}") is None
    other = c.dump_device("dev-2")
    assert c.load_device(f"{other.rsplit('.', 2)[0]}.{ts}.{sig}") is None  # payload swap


def test_a_refused_cookie_leaves_no_reference_cycle():
    """itsdangerous keeps its signature error in a local of a frame that the error's own
    traceback holds: unless the codec drops the traceback, every refused cookie pins its
    request's frames (and all they reference) until the cycle collector runs, which made
    collections of up to 90 ms under a stream of cookies signed with a retired key."""
    import gc

    c = codec([KEY_B])
    stale_device, stale_session = codec([KEY_A]).dump_device("dev-1"), codec([KEY_A]).dump_session("dev-1", STATE)
    expired = codec(now=NOW - MAX_AGE - 10).dump_device("dev-1")
    gc.collect()
    gc.disable()
    try:
        for _ in range(10):
            assert c.load_device(stale_device) is None and c.load_device(expired) is None
            assert c.load_session(stale_session, "dev-1") is None
        unreachable = gc.collect()
    finally:
        gc.enable()
    assert unreachable == 0


def test_the_cookie_caches_keep_the_most_recently_used(monkeypatch: pytest.MonkeyPatch) -> None:
    """A value in use stays remembered (no signature check) however many others come after,
    where clearing the full table made every visitor's next call verify again."""
    monkeypatch.setattr(signing, "VERIFIED_CACHE_SIZE", 3)
    c = codec()
    checked: list[str] = []
    real_unsign = TimestampSigner.unsign

    def unsign(self, value, *args, **kwargs):  # type: ignore[no-untyped-def]
        checked.append(value if isinstance(value, str) else value.decode())
        return real_unsign(self, value, *args, **kwargs)

    monkeypatch.setattr(TimestampSigner, "unsign", unsign)
    kept = c.dump_session("dev-0", STATE)
    for i in range(1, 10):  # nine more issued; the first one is used in between
        assert c.load_session(kept, "dev-0").session_id == STATE.session_id  # type: ignore[union-attr]
        c.dump_session(f"dev-{i}", STATE)
    assert c.load_session(kept, "dev-0").session_id == STATE.session_id  # type: ignore[union-attr]
    devices = [codec().dump_device(f"dev-{i}") for i in range(5)]
    for value in devices:
        c.load_device(value)
        c.load_device(devices[0])
    assert checked == devices  # each device cookie verified once; dev-0's stayed remembered
    assert len(c._issued_sessions) == 3 and len(c._verified_devices) == 3


def test_oversized_cookie_is_ignored_even_if_signed():
    s = make_serializer([KEY_A], "edgeproxy.device", clock=lambda: NOW)
    assert codec().load_device(s.dumps(["x" * 5000])) is None


@given(st.text(min_size=1, max_size=MAX_DEVICE_ID_LEN))
def test_any_valid_device_id_yields_a_header_safe_value(device_id):
    c = codec()
    if not valid_device_id(device_id):
        with pytest.raises(ValueError, match="device id"):
            c.dump_device(device_id)
        return
    value = c.dump_device(device_id)
    assert all(ch.isascii() and (ch.isalnum() or ch in "-_.") for ch in value)
    assert c.load_device(value) == (device_id, False)


@given(st.text(max_size=300))
def test_tampering_any_text_never_raises(text):
    c = codec()
    assert c.load_device(text) is None or isinstance(c.load_device(text), tuple)
    c.load_session(text, "dev-1")


@pytest.mark.parametrize(
    "value, ok",
    [("dev", True), ("   ", False), ("", False), (None, False), (5, False), ("a\r\nSet-Cookie: x", False),
     ("x" * MAX_DEVICE_ID_LEN, True), ("x" * (MAX_DEVICE_ID_LEN + 1), False), ("café-ü", True)],
)
def test_valid_device_id(value, ok):
    assert valid_device_id(value) == ok


# --- cookie attributes ----------------------------------------------------------------------


def settings(**sessions) -> Settings:
    s = Settings()
    for k, v in sessions.items():
        setattr(s.sessions, k, v)
    return s


def test_policy_defaults_secure_lax_400_days_host_only():
    p = CookiePolicy.from_settings(settings())
    spec = p.signed("_ep_did", "v")
    assert spec == CookieSpec("_ep_did", "v", 400 * 86400, http_only=True, secure=True, same_site="Lax", domain=None, path="/")
    assert spec.header_value() == "_ep_did=v; Max-Age=34560000; Path=/; Secure; HttpOnly; SameSite=Lax"


def test_policy_domain_and_plain_http():
    p = CookiePolicy.from_settings(settings(cookie_domain="example.com", secure_cookies=False))
    spec = p.readable("analytics_session_id", 1_780_000_000_000)
    assert spec.value == "1780000000000"
    assert not spec.http_only and not spec.secure and spec.domain == "example.com" and spec.same_site == "Lax"
    assert spec.header_value() == "analytics_session_id=1780000000000; Max-Age=34560000; Path=/; Domain=example.com; SameSite=Lax"


@pytest.mark.parametrize("domain", ["exa mple.com", "example.com;x=y", "a\r\nb", "-bad.com", "exa_mple.com"])
def test_policy_rejects_a_bad_cookie_domain_with_its_key(domain):
    with pytest.raises(ValueError, match="sessions.cookie_domain"):
        CookiePolicy.from_settings(settings(cookie_domain=domain))


def test_set_cookie_kwargs_work_with_the_standard_cookie_jar():
    spec = CookiePolicy.from_settings(settings(cookie_domain=".example.com")).signed("_ep_did", codec().dump_device("d"))
    kwargs = spec.set_cookie_kwargs()
    assert kwargs == {"max_age": 400 * 86400, "path": "/", "secure": True, "httponly": True, "samesite": "Lax", "domain": ".example.com"}
    jar = SimpleCookie()
    jar[spec.name] = spec.value
    assert jar.output(header="").strip() == f"{spec.name}={spec.value}"  # no quoting needed


def test_readable_cookie_name_needs_no_quoting():
    jar = SimpleCookie()
    jar["analytics_session_id.last_access"] = "1780000000000"
    assert jar.output(header="").strip() == "analytics_session_id.last_access=1780000000000"


# --- the kept signing key ---------------------------------------------------------------------


def test_configured_keys_are_used_in_order(tmp_path):
    s = settings(signing_keys=[KEY_B, KEY_A])
    s.delivery.data_dir = str(tmp_path)
    assert load_signing_keys(s) == [KEY_B, KEY_A]
    assert not (tmp_path / "signing.key").exists()


def test_generated_key_is_kept_with_mode_0600_and_reused(tmp_path):
    s = settings()
    s.delivery.data_dir = str(tmp_path / "data")
    first = load_signing_keys(s)
    path = tmp_path / "data" / "signing.key"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert len(first) == 1 and len(first[0]) >= 32
    assert load_signing_keys(s) == first  # a restart keeps cookies valid
    assert [p.name for p in path.parent.iterdir()] == ["signing.key"]  # no temp files left


def test_processes_starting_together_agree_on_one_key(tmp_path):
    s = settings()
    s.delivery.data_dir = str(tmp_path)
    results: list[list[str]] = []
    threads = [threading.Thread(target=lambda: results.append(load_signing_keys(s))) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    assert len(results) == 8 and all(r == results[0] for r in results)


def test_a_damaged_key_file_is_a_clear_error(tmp_path):
    (tmp_path / "signing.key").write_text("short")
    s = settings()
    s.delivery.data_dir = str(tmp_path)
    with pytest.raises(RuntimeError, match="signing.key.*shorter than 16"):
        load_signing_keys(s)


def test_a_session_cookie_this_process_issued_reads_back_without_a_signature_check():
    """The value sent back by the browser is recognised as ours; anything else is verified."""
    clock = [NOW]
    issuer = CookieCodec([KEY_A], max_age_s=MAX_AGE, clock=lambda: clock[0])
    value = issuer.dump_session("dev-1", STATE)
    from_cache = issuer.load_session(value, "dev-1")
    verified = codec().load_session(value, "dev-1")  # another process: checks the signature
    assert from_cache == verified and from_cache is not None and from_cache.user_id is None
    assert issuer.load_session(value, "dev-2") is None  # bound to its device, cached or not
    tampered = value[:-2] + ("AA" if not value.endswith("AA") else "BB")
    assert issuer.load_session(tampered, "dev-1") is None
    clock[0] = NOW + MAX_AGE + 10
    assert issuer.load_session(value, "dev-1") is None  # the cached value ages like a signed one
