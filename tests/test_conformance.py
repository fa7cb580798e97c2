"""Conformance: every case of tests/conformance/amplitude-cases.jsonl (and of
useragent-cases.jsonl) through ``edgeproxy map``.

Compared as tests/conformance's README says: events grouped by endpoint URL and compared in
order, structurally, ignoring only the listed deliberate differences (leaked
``use_batch_endpoint``/``products``, ``insert_id`` when the case maps none, the literal
``options=undefined``, the clock-based ``time`` of groupIdentifyUser's /identify call).
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from edgeproxy.mapping.cli import run_map

CASES_FILE = Path(__file__).parent / "conformance" / "amplitude-cases.jsonl"
CASES = [json.loads(line) for line in CASES_FILE.read_text().splitlines() if line.strip()]
_RESULTS: dict[str, bool] = {}


def _maps_insert_id(case: dict[str, Any]) -> bool:
    subs = case["config"]["amplitude"].get("subscriptions") or []
    return any("insert_id" in (s.get("mapping") or {}) for s in subs)


def _items(request: dict[str, Any]) -> tuple[list[Any], Any, Any]:
    """(items, options, api_key) of one request, from its readable body."""
    body = request.get("decoded_body") or request["body"]
    if "events" in body:
        items = body["events"]
    else:
        items = body.get("identification", body.get("mapping"))
        items = items if isinstance(items, list) else [items]
    options = body.get("options")
    return list(items), (None if options == "undefined" else options), body.get("api_key")


def _normalise(case: dict[str, Any], url: str, item: Any) -> Any:
    if not isinstance(item, dict):
        return item
    item = dict(item)
    if url.endswith(("/httpapi", "/batch")):
        item.pop("use_batch_endpoint", None)
        item.pop("products", None)
    if not _maps_insert_id(case):
        item.pop("insert_id", None)
    group_identify = any(s["action"] == "groupIdentifyUser" for s in case["config"]["amplitude"].get("subscriptions") or [])
    if group_identify and url.endswith("/identify") and "timestamp" not in case["event"]:
        item.pop("time", None)
    return item


def _by_url(case: dict[str, Any], requests: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for request in requests:
        items, options, api_key = _items(request)
        slot = out.setdefault(request["url"], {"items": [], "options": set(), "api_key": set(), "method": set()})
        slot["items"] += [_normalise(case, request["url"], i) for i in items]
        slot["options"].add(json.dumps(options, sort_keys=True))
        slot["api_key"].add(api_key)
        slot["method"].add(request["method"])
    return out


def _first_difference(expected: Any, actual: Any, where: str = "") -> str | None:
    if isinstance(expected, dict) and isinstance(actual, dict):
        for key in sorted(set(expected) | set(actual)):
            if key not in actual:
                return f"{where}.{key}: missing (expected {expected[key]!r})"
            if key not in expected:
                return f"{where}.{key}: unexpected {actual[key]!r}"
            diff = _first_difference(expected[key], actual[key], f"{where}.{key}")
            if diff:
                return diff
        return None
    if isinstance(expected, list) and isinstance(actual, list):
        if len(expected) != len(actual):
            return f"{where}: {len(actual)} items, expected {len(expected)}"
        for i, (e, a) in enumerate(zip(expected, actual)):
            diff = _first_difference(e, a, f"{where}[{i}]")
            if diff:
                return diff
        return None
    numbers = (int, float)
    if isinstance(expected, numbers) and isinstance(actual, numbers) and not isinstance(expected, bool) and not isinstance(actual, bool):
        return None if expected == actual else f"{where}: {actual!r}, expected {expected!r}"
    if type(expected) is not type(actual) or expected != actual:
        return f"{where}: {actual!r}, expected {expected!r}"
    return None


def _same_settings_refusal(expected: str | None, got: str | None) -> bool:
    """A settings refusal names edgeproxy's config key first, then quotes the reference's
    message (``400 <message>``): the same refusal, said for an edgeproxy user."""
    return (expected is not None and got is not None and expected.startswith("400 ")
            and got.startswith("amplitude.") and f"(its message: {expected[4:]})" in got)


def compare(case: dict[str, Any], got: dict[str, Any]) -> str | None:
    """The first differing field, or None when the output conforms."""
    expected = case["expected"]
    if expected["error"] is not None or got["error"] is not None:
        if got["error"] != expected["error"] and not _same_settings_refusal(expected["error"], got["error"]):
            return f"error: {got['error']!r}, expected {expected['error']!r}"
    return _first_difference(_by_url(case, expected["requests"]), _by_url(case, got["requests"]), "requests")


def _run(case: dict[str, Any], tmp_path: Path) -> dict[str, Any]:
    config = tmp_path / "config.json"
    config.write_text(json.dumps(case["config"]))
    stdout = io.StringIO()
    assert run_map(str(config), io.StringIO(json.dumps(case["event"]) + "\n"), stdout) == 0
    lines = stdout.getvalue().splitlines()
    assert len(lines) == 1
    return json.loads(lines[0])


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_case(case: dict[str, Any], tmp_path: Path) -> None:
    diff = compare(case, _run(case, tmp_path))
    _RESULTS[case["name"]] = diff is None
    assert diff is None, f"{case['name']}: {diff}"


def test_score_is_reported(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """Runs every case again (cheap) so the score is printed even under -k selections."""
    failures = []
    for case in CASES:
        diff = compare(case, _run(case, tmp_path))
        if diff:
            failures.append(f"  {case['name']}: {diff}")
    report(capsys, "conformance", len(CASES), failures)


def report(capsys: pytest.CaptureFixture[str], what: str, total: int, failures: list[str]) -> None:
    """Print the score and every failing case, then fail if any did."""
    with capsys.disabled():
        print(f"\n{what}: {total - len(failures)}/{total} passed")
        for line in failures:
            print(line)
    assert not failures


UA_CASES_FILE = Path(__file__).parent / "conformance" / "useragent-cases.jsonl"
UA_CASES = [json.loads(line) for line in UA_CASES_FILE.read_text().splitlines() if line.strip()]


def test_user_agent_cases(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """The 496 user agents Segment's destination parsed (browsers, HTTP stacks, bots, consoles,
    TVs), through one ``edgeproxy map`` run per config: os_name, os_version, device_*."""
    by_config: dict[str, list[dict[str, Any]]] = {}
    for case in UA_CASES:
        by_config.setdefault(json.dumps(case["config"], sort_keys=True), []).append(case)
    failures = []
    for config_text, cases in by_config.items():
        config = tmp_path / "ua-config.json"
        config.write_text(config_text)
        stdout = io.StringIO()
        assert run_map(str(config), io.StringIO("".join(json.dumps(c["event"]) + "\n" for c in cases)), stdout) == 0
        for case, line in zip(cases, stdout.getvalue().splitlines(), strict=True):
            diff = compare(case, json.loads(line))
            if diff:
                failures.append(f"  {case['name']} {case['event']['context'].get('userAgent')!r}: {diff}")
    report(capsys, "user agents", len(UA_CASES), failures)


def test_compare_detects_a_difference() -> None:
    """The comparison itself must be able to fail (a changed number, a dropped key)."""
    case = next(c for c in CASES if c["expected"]["requests"])
    changed = json.loads(json.dumps(case["expected"]))
    body = changed["requests"][0].get("decoded_body") or changed["requests"][0]["body"]
    items = body.get("events") or body.get("identification") or body.get("mapping")
    first = items[0] if isinstance(items, list) else items
    first["injected_key"] = 1
    assert compare(case, changed) is not None
    assert compare(case, case["expected"]) is None


def test_through_a_real_subprocess(tmp_path: Path) -> None:
    """``python -m edgeproxy.mapping.cli --config`` over several lines, including a bad one."""
    picked = [c for c in CASES if c["config"] == CASES[0]["config"]][:3]
    config = tmp_path / "config.json"
    config.write_text(json.dumps(picked[0]["config"]))
    stdin = "\n".join([json.dumps(c["event"]) for c in picked] + ["{not json"]) + "\n"
    proc = subprocess.run([sys.executable, "-m", "edgeproxy.mapping.cli", "--config", str(config)],
                          input=stdin, capture_output=True, text=True, timeout=60,
                          cwd=Path(__file__).parent.parent)
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    assert len(lines) == len(picked) + 1
    for case, got in zip(picked, lines):
        assert compare(case, got) is None
    assert lines[-1]["requests"] == [] and lines[-1]["error"].startswith(f"line {len(picked) + 1}: invalid JSON")
