"""The operator's commands: `edgeproxy spool` and `edgeproxy replay` on a real spool."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson

from edgeproxy.delivery.spool import Spool, SpoolItem


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edgeproxy", *args], cwd=cwd, capture_output=True, text=True, timeout=60)


def test_spool_and_replay_without_a_spool_say_where_they_looked(tmp_path):
    for command in ("spool", "replay"):
        result = run(command, cwd=tmp_path)
        assert result.returncode == 1
        assert "no spool" in result.stderr and "data_dir" in result.stderr
        assert "Traceback" not in result.stderr


async def test_spool_shows_depth_and_replay_requeues_dead_letters(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    spool = Spool(data / "spool.sqlite3")
    await spool.open()
    await spool.append([SpoolItem("m-1", "httpapi", {"event_type": "A", "device_id": "d-12345"}, None, "d-12345", None, None, 1),
                        SpoolItem("m-2", "httpapi", {"event_type": "B", "device_id": "d-12345"}, None, "d-12345", None, None, 2)])
    [first, *_] = await spool.claim(next(iter(await spool.due_groups())).group_key, limit=1, max_bytes=10**6)
    await spool.dead_letter({first.row_id: "invalid_fields: event_type"})
    await spool.close()

    report = orjson.loads(run("spool", cwd=tmp_path).stdout)
    assert report["depth"] == 1 and report["dead"] == 1
    assert "invalid_fields" in report["dead_letters"][0]["reason"]

    replayed = run("replay", cwd=tmp_path)
    assert replayed.returncode == 0 and replayed.stdout.startswith("1 dead letter")
    assert orjson.loads(run("spool", cwd=tmp_path).stdout)["depth"] == 2


async def test_replay_filters_by_reason_endpoint_and_message_id(tmp_path):
    data = tmp_path / "data"
    spool = Spool(data)
    await spool.open()
    await spool.append([SpoolItem(f"m-{i}", "httpapi", {"event_type": "A", "device_id": "d-12345"}, None, "d-12345", None, None, i)
                        for i in range(4)]
                       + [SpoolItem("i-1", "identify", {"user_id": "u-12345"}, None, None, "u-12345", None, 9)])
    claimed = []
    for group in await spool.due_groups():
        claimed += await spool.claim(group.group_key, limit=10, max_bytes=10**6)
    codes = {"m-0": "invalid_api_key", "m-1": "invalid_api_key", "m-2": "too_large", "m-3": "too_large",
             "i-1": "invalid_api_key"}
    await spool.dead_letter({c.row_id: (codes[c.message_id], f"reason for {c.message_id}") for c in claimed})
    await spool.close()

    report = orjson.loads(run("spool", cwd=tmp_path).stdout)
    assert report["dead_by_reason"] == {"invalid_api_key": 3, "too_large": 2}

    def replayed(*args: str) -> int:
        result = run("replay", *args, cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        return int(result.stdout.split()[0])

    assert replayed("--reason", "invalid_api_key", "--endpoint", "identify") == 1
    assert replayed("--message-id", "m-2") == 1
    assert replayed("--reason", "invalid_api_key", "--limit", "1") == 1  # m-0, the oldest
    report = orjson.loads(run("spool", cwd=tmp_path).stdout)
    assert {d["message_id"] for d in report["dead_letters"]} == {"m-1", "m-3"}
    assert report["dead_by_reason"] == {"invalid_api_key": 1, "too_large": 1} and report["depth"] == 3
    assert replayed() == 2
    bad = run("replay", "--endpoint", "nowhere", cwd=tmp_path)
    assert bad.returncode == 2 and "--endpoint must be one of" in bad.stderr


def test_serve_tunes_the_collector_before_it_serves(tmp_path, monkeypatch):
    """`serve` freezes what start-up built and sizes the young generation for a server (see
    cli.prepare_gc); the collector is back to its defaults after the test."""
    import gc

    import uvloop

    from edgeproxy import cli, logs, serving

    seen: dict[str, object] = {}

    def fake_run(app, settings, **kwargs):
        seen.update(threshold=gc.get_threshold(), frozen=gc.get_freeze_count(), port=settings.server.port)

    monkeypatch.setenv("EDGEPROXY_DELIVERY__DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setattr(serving, "run", fake_run)
    monkeypatch.setattr(uvloop, "install", lambda: None)  # the rest of the session keeps its loop policy…
    monkeypatch.setattr(logs, "configure", lambda fmt: None)  # …and its logging
    before = gc.get_threshold()
    try:
        assert cli.main(["serve", "--port", "18765"]) == 0
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
    assert seen["port"] == 18765
    assert seen["threshold"] == (cli.GC_YOUNG_THRESHOLD, before[1], before[2])
    assert seen["frozen"] > 0
