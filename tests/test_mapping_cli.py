"""``run_map``: TOML and JSON configs, grouping into requests, bad lines, config problems."""

from __future__ import annotations

import io
import json
from pathlib import Path

from edgeproxy.mapping.cli import run_map

TOML = '''
[server]
port = 8080

[amplitude]
api_key = "key-1"
secret_key = "secret-1"
region = "europe"

[[amplitude.subscriptions]]
action = "logPurchase"
subscribe = 'type = "track"'
mapping = { trackRevenuePerProduct = true, min_id_length = 2 }

[[amplitude.subscriptions]]
action = "groupIdentifyUser"
subscribe = 'type = "group"'
mapping = { group_type = "company", group_value = { "@path" = "$.groupId" } }
'''


def run(config: Path, *lines: str) -> tuple[int, list[dict]]:
    out = io.StringIO()
    code = run_map(str(config), io.StringIO("\n".join(lines) + "\n"), out)
    return code, [json.loads(line) for line in out.getvalue().splitlines()]


def test_toml_config_eu_one_request_per_endpoint(tmp_path: Path) -> None:
    config = tmp_path / "edgeproxy.toml"
    config.write_text(TOML)
    order = {"type": "track", "event": "Order Completed", "userId": "u", "messageId": "m",
             "properties": {"products": [{"price": 2, "quantity": 1}, {"price": 3, "quantity": 1}]}}
    code, (line1, line2, line3) = run(config, json.dumps(order), "{oops",
                                      json.dumps({"type": "group", "groupId": "g", "userId": "u"}))
    assert code == 0
    (req,) = line1["requests"]
    assert req["url"] == "https://api.eu.amplitude.com/2/httpapi" and req["method"] == "POST"
    assert req["headers"] == {"content-type": "application/json"}
    assert req["body"]["api_key"] == "key-1" and req["body"]["options"] == {"min_id_length": 2}
    assert [e["event_type"] for e in req["body"]["events"]] == ["Order Completed", "Product Purchased", "Product Purchased"]
    assert line1["error"] is None
    assert line2 == {"requests": [], "error": line2["error"]} and line2["error"].startswith("line 2: invalid JSON")
    assert [r["url"] for r in line3["requests"]] == ["https://api.eu.amplitude.com/identify", "https://api.eu.amplitude.com/groupidentify"]
    assert line3["requests"][0]["headers"]["content-type"].startswith("application/x-www-form-urlencoded")
    assert line3["requests"][1]["body"]["identification"][0]["group_type"] == "company"


def test_a_half_set_config_refuses_each_line_naming_the_missing_key(tmp_path: Path, capsys) -> None:
    config = tmp_path / "c.json"
    config.write_text(json.dumps({"amplitude": {"api_key": "k"}}))
    code, lines = run(config, *[json.dumps({"type": "track", "event": "x", "userId": "u"})] * 2)
    assert code == 0 and len(lines) == 2
    for line in lines:
        assert line["requests"] == []
        assert line["error"].startswith("amplitude.secret_key is not set: Segment's destination refuses every event")
        assert "The root value is missing the required field 'secretKey'." in line["error"]
        assert not line["error"].startswith("400")  # a config problem, not an answer from Amplitude
    err = capsys.readouterr().err
    assert err.count("amplitude.secret_key") == 1, err  # said once, not per event
    assert "edgeproxy serve needs only amplitude.api_key" in err


def test_no_credentials_is_a_preview_with_placeholder_keys(tmp_path: Path, capsys) -> None:
    config = tmp_path / "c.toml"
    config.write_text('[amplitude]\nregion = "europe"\n')
    events = [json.dumps({"type": "track", "event": f"e{i}", "userId": "u", "messageId": f"m{i}"}) for i in range(3)]
    for path in (config, None):  # a config without keys, and no config at all
        out = io.StringIO()
        assert run_map(None if path is None else str(path), io.StringIO("\n".join(events)), out) == 0
        lines = [json.loads(line) for line in out.getvalue().splitlines()]
        assert [line["error"] for line in lines] == [None] * 3
        assert [line["requests"][0]["body"]["events"][0]["event_type"] for line in lines] == ["e0", "e1", "e2"]
        assert {line["requests"][0]["body"]["api_key"] for line in lines} == {"PREVIEW-API-KEY"}
        err = capsys.readouterr().err
        assert err.count("placeholder keys") == 1, err
    assert lines[0]["requests"][0]["url"] == "https://api2.amplitude.com/2/httpapi"  # no config: the default region


def test_bad_subscriptions_exit_2_with_problems(tmp_path: Path, capsys) -> None:
    config = tmp_path / "c.json"
    config.write_text(json.dumps({"amplitude": {"api_key": "k", "secret_key": "s", "subscriptions": [
        {"action": "logEventV2", "subscribe": 'type = "track" and'}]}}))
    code, lines = run(config, "{}")
    assert code == 2 and lines == []
    assert "amplitude.subscriptions[0].subscribe: expected a field" in capsys.readouterr().err


def test_missing_config_file_exit_2(tmp_path: Path, capsys) -> None:
    code, _ = run(tmp_path / "nope.toml", "{}")
    assert code == 2 and "cannot read config" in capsys.readouterr().err


def test_edgeproxy_map_command(tmp_path: Path) -> None:
    """The user's preview tool through the installed command line: `edgeproxy map --config FILE`."""
    import subprocess
    import sys

    config = tmp_path / "edgeproxy.toml"
    config.write_text(TOML)
    event = {"type": "track", "event": "Order Completed", "userId": "user-1", "messageId": "m-1",
             "properties": {"revenue": 10}}
    run_ = subprocess.run([sys.executable, "-m", "edgeproxy", "map", "--config", str(config)],
                          input=json.dumps(event) + "\n", capture_output=True, text=True, timeout=60)
    assert run_.returncode == 0, run_.stderr
    (line,) = [json.loads(x) for x in run_.stdout.splitlines()]
    assert line["error"] is None
    (event_out,) = line["requests"][0]["body"]["events"]
    assert event_out["revenue"] == 10 and event_out["insert_id"] == "m-1"
