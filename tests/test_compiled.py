"""The compiled hot path (edgeproxy/compiled.py): the mypyc build runs when it matches its
source, the source runs when forced (EDGEPROXY_PURE_PYTHON=1) or when the build is stale, and
`edgeproxy serve` says which. CI runs the whole suite both ways (.ci/run)."""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from aiohttp import web
from test_ingest import make_settings

from edgeproxy import compiled
from edgeproxy.app import create_app

ROOT = Path(__file__).resolve().parent.parent
PROBE = ("import edgeproxy.segment as s, edgeproxy.identity.sessions as t, edgeproxy.compiled as c; "
         "print(s.__file__); print(t.__file__); print(c.status())")
built = pytest.mark.skipif(not compiled.usable(compiled.read_manifest()),
                           reason="no current mypyc build here (make builds it; .ci/run requires it)")


def probe(path: Path, **env: str) -> list[str]:
    clean = {k: v for k, v in os.environ.items() if k != compiled.PURE_ENV}
    run = subprocess.run([sys.executable, "-c", PROBE], cwd=path, env={**clean, "PYTHONPATH": str(path), **env},
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    return run.stdout.splitlines()


def test_the_pure_switch_runs_the_source() -> None:
    segment, sessions, status = probe(ROOT, EDGEPROXY_PURE_PYTHON="1")
    assert segment.endswith("edgeproxy/segment.py") and sessions.endswith("identity/sessions.py")
    assert status == "pure Python (EDGEPROXY_PURE_PYTHON=1)"


@built
def test_a_current_build_runs_compiled() -> None:
    segment, sessions, status = probe(ROOT)
    assert segment.endswith(compiled.EXTENSION_SUFFIX) and sessions.endswith(compiled.EXTENSION_SUFFIX)
    assert status == "compiled with mypyc: " + ", ".join(sorted(compiled.MODULES))
    assert {"edgeproxy.segment", "edgeproxy.identity.sessions", "edgeproxy.mapping.actions"} <= set(compiled.MODULES)


def test_clean_removes_every_build_also_of_a_module_no_longer_listed(tmp_path: Path) -> None:
    """A module dropped from MODULES keeps no extension behind: Python's own finder would load
    it before its ``.py``, a build of source that may have changed since."""
    shutil.copytree(ROOT / "edgeproxy", tmp_path / "edgeproxy", ignore=shutil.ignore_patterns("__pycache__", "*.so"))
    stray = tmp_path / "edgeproxy" / "mapping" / f"fql{compiled.EXTENSION_SUFFIX}"
    runtime = tmp_path / "edgeproxy" / f"0123456789abcdef0123__mypyc{compiled.EXTENSION_SUFFIX}"
    listed = tmp_path / "edgeproxy" / f"segment{compiled.EXTENSION_SUFFIX}"
    for path in (stray, runtime, listed):
        path.write_bytes(b"not a real extension")
    (tmp_path / "edgeproxy" / "compiled.json").write_text('{"runtime": "other__mypyc", "sources": {}}')
    run = subprocess.run([sys.executable, "-m", "edgeproxy.mypyc_build", "clean"], cwd=tmp_path,
                         env={**os.environ, "PYTHONPATH": str(tmp_path)}, capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert not stray.exists() and not runtime.exists() and not listed.exists()
    assert not (tmp_path / "edgeproxy" / "compiled.json").exists()
    assert (tmp_path / "edgeproxy" / "mapping" / "fql.py").is_file()


def test_a_module_dropped_from_the_build_runs_its_source_until_the_next_make(tmp_path: Path) -> None:
    """An extension left beside a module no longer listed (the build it came from is gone from
    MODULES) is not loaded: Python's own finder would take it before the ``.py``."""
    shutil.copytree(ROOT / "edgeproxy", tmp_path / "edgeproxy", ignore=shutil.ignore_patterns("__pycache__"))
    assert "edgeproxy.identity.cookies" not in compiled.MODULES
    stray = tmp_path / "edgeproxy" / "identity" / f"cookies{compiled.EXTENSION_SUFFIX}"
    stray.write_bytes(b"not a real extension: loading it would fail the import")
    run = subprocess.run([sys.executable, "-c", "import edgeproxy.identity.cookies as c; print(c.__file__)"], cwd=tmp_path,
                         env={**os.environ, "PYTHONPATH": str(tmp_path)}, capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == str(tmp_path / "edgeproxy" / "identity" / "cookies.py")


@built
def test_an_edited_source_is_never_shadowed_by_its_stale_build(tmp_path: Path) -> None:
    shutil.copytree(ROOT / "edgeproxy", tmp_path / "edgeproxy", ignore=shutil.ignore_patterns("__pycache__"))
    edited = tmp_path / "edgeproxy" / "segment.py"
    edited.write_text(edited.read_text() + "\nEDITED = True\n")
    segment, _, status = probe(tmp_path)
    assert segment == str(edited)
    assert status == "pure Python (no current mypyc build: `make` builds it)"


async def test_serve_logs_which_build_runs(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    runner = web.AppRunner(create_app(make_settings(tmp_path)))
    with caplog.at_level(logging.INFO, logger="edgeproxy"):
        await runner.setup()  # the app's startup: "edgeproxy ready: …"
        await runner.cleanup()
    ready = [r.getMessage() for r in caplog.records if r.getMessage().startswith("edgeproxy ready:")]
    assert ready and ready[0].endswith("; hot path " + compiled.status()), ready


def test_make_rebuilds_when_any_compiled_source_changes() -> None:
    """The Makefile's COMPILED_SOURCES (what `make` watches) are exactly the listed modules'
    files: one missing would leave its edited source running uncompiled until the next build."""
    makefile = (ROOT / "Makefile").read_text()
    match = re.search(r"^COMPILED_SOURCES = ((?:.*\\\n)*.*)$", makefile, re.MULTILINE)
    assert match, "COMPILED_SOURCES not found in the Makefile"
    watched = match.group(1).replace("\\\n", " ").split()
    assert sorted(watched) == sorted(str(compiled.source_path(m).relative_to(ROOT)) for m in compiled.MODULES)
