"""Configuration: TOML + environment overrides, every problem listed with its key."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from edgeproxy.config import ConfigError, load_settings, redacted, validate
from edgeproxy.config_values import parse_duration


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "edgeproxy.toml"
    path.write_text(text)
    return path


def test_defaults_serve_a_laptop():
    s = load_settings(None, env={})
    assert (s.server.host, s.server.port, s.server.prefix) == ("127.0.0.1", 8080, "/_e")
    assert s.sessions.store == "memory" and s.sessions.timeout == 1800
    assert s.delivery.batch_size == 500 and s.delivery.flush_interval == 1.0
    assert s.amplitude.api_key == "" and s.origin.url == ""


def test_toml_and_env_overrides(tmp_path):
    path = write(tmp_path, """
[server]
port = 9001
trusted_proxies = ["127.0.0.1"]
[sessions]
timeout = "45m"
[delivery]
flush_interval = "500ms"
[[amplitude.subscriptions]]
action = "logEventV2"
subscribe = 'type = "track"'
""")
    s = load_settings(path, env={"EDGEPROXY_SERVER__PORT": "9000", "EDGEPROXY_DEBUG__TOKEN": "t0ken",
                                 "EDGEPROXY_SESSIONS__SIGNING_KEYS": "a" * 20 + "," + "b" * 20,
                                 "EDGEPROXY_SESSIONS__SECURE_COOKIES": "false"})
    assert s.server.port == 9000
    assert s.server.trusted_proxies == ["127.0.0.1"]
    assert s.sessions.timeout == 2700
    assert s.delivery.flush_interval == 0.5
    assert s.debug.token == "t0ken"
    assert s.sessions.signing_keys == ["a" * 20, "b" * 20]
    assert s.sessions.secure_cookies is False
    assert s.amplitude.subscriptions[0]["action"] == "logEventV2"


def test_every_problem_is_listed_with_its_key(tmp_path):
    path = write(tmp_path, """
[server]
port = "eighty"
prefix = "no-slash"
colour = "blue"
[sessions]
timeout = "soon"
store = "mysql://x"
[delivery]
batch_size = 5000
[amplitude]
region = "asia"
[nonsense]
x = 1
""")
    with pytest.raises(ConfigError) as info:
        load_settings(path, env={"EDGEPROXY_SERVER__HOST": "0.0.0.0", "EDGEPROXY_DELIVERY__BATCH_SIZE": "many"})
    text = "\n".join(info.value.problems)
    for key in ("server.port", "server.prefix", "server.colour", "sessions.timeout", "sessions.store",
                "amplitude.region", "nonsense", "EDGEPROXY_DELIVERY__BATCH_SIZE"):
        assert key in text, key


def test_invalid_toml_is_reported(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_settings(write(tmp_path, "[server\nport=1"), env={})
    assert "not valid TOML" in info.value.problems[0]


@pytest.mark.parametrize("value,seconds", [("30m", 1800), ("2s", 2), ("500ms", 0.5), (10, 10), ("1h", 3600), ("1.5s", 1.5)])
def test_durations(value, seconds):
    assert parse_duration(value) == seconds


@pytest.mark.parametrize("value", ["", "fast", "-1s", True, -3, "5 weeks"])
def test_bad_durations(value):
    with pytest.raises(ValueError):
        parse_duration(value)


def test_redacted_hides_secrets():
    s = load_settings(None, env={"EDGEPROXY_AMPLITUDE__API_KEY": "secret-api", "EDGEPROXY_DEBUG__TOKEN": "tok"})
    flat = str(redacted(s))
    assert "secret-api" not in flat and "tok'" not in flat


def test_check_config_command_lists_problems(tmp_path):
    bad = write(tmp_path, '[server]\nport = 0\n[amplitude]\nregion = "mars"\n')
    run = subprocess.run([sys.executable, "-m", "edgeproxy", "check-config", "--config", str(bad)],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 1
    assert "server.port" in run.stdout and "amplitude.region" in run.stdout
    good = write(tmp_path, "[server]\nport = 8081\n")
    ok = subprocess.run([sys.executable, "-m", "edgeproxy", "check-config", "--config", str(good)],
                        capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0, ok.stdout + ok.stderr


@pytest.mark.parametrize("value,size", [("512MB", 512 * 1024**2), ("2GB", 2 * 1024**3), ("64 MiB", 64 * 1024**2),
                                        (10_000_000, 10_000_000), ("1.5mb", 1536 * 1024)])
def test_max_spool_size_accepts_units(tmp_path, value, size):
    path = tmp_path / "c.toml"
    path.write_text(f"[delivery]\nmax_spool_size = {value!r}\n".replace("'", '"'))
    assert load_settings(path, env={}).delivery.max_spool_size == size
    assert load_settings(None, env={"EDGEPROXY_DELIVERY__MAX_SPOOL_SIZE": str(value)}).delivery.max_spool_size == size


def test_max_spool_size_default_and_problems(tmp_path):
    assert load_settings(None, env={}).delivery.max_spool_size == 1024**3
    path = tmp_path / "c.toml"
    path.write_text('[delivery]\nmax_spool_size = "lots"\n')
    with pytest.raises(ConfigError) as bad:
        load_settings(path, env={})
    assert bad.value.problems == ['delivery.max_spool_size: expected a size such as "512MB", "2GB" or a number of bytes,'
                                  " got 'lots'"]
    path.write_text('[delivery]\nmax_spool_size = "100KB"\n')
    with pytest.raises(ConfigError) as small:
        load_settings(path, env={})
    assert small.value.problems == ["delivery.max_spool_size: must be at least 1MB, got 102400 bytes"]
    run = subprocess.run([sys.executable, "-m", "edgeproxy", "check-config", "--config", str(path)],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 1 and "delivery.max_spool_size: must be at least 1MB" in run.stdout


def test_durability_picks_the_spools_sync_mode(tmp_path):
    from edgeproxy.delivery.queue import open_queue

    assert load_settings(None, env={}).delivery.durability == "power_loss"
    for value, pragma in (("power_loss", "FULL"), ("process_crash", "NORMAL")):
        s = load_settings(None, env={"EDGEPROXY_DELIVERY__DURABILITY": value, "EDGEPROXY_DELIVERY__DATA_DIR": str(tmp_path)})
        assert validate(s) == [] and open_queue(s).synchronous == pragma
    with pytest.raises(ConfigError, match='delivery.durability: must be "power_loss" or "process_crash"'):
        load_settings(None, env={"EDGEPROXY_DELIVERY__DURABILITY": "maybe"})
