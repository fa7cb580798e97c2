"""The compiled hot path: pure modules built with mypyc from their own typed source.

Why: a tracking call spends its Python time in a few pure modules (normalising the message,
the session rules, the mapping's actions); mypyc compiles exactly that source to C extensions, so the plain ``.py``
stays the one truth and the fallback. ``make`` builds them in place (``python -m
edgeproxy.mypyc_build``, needs a C compiler); ``bench/bench_ingest.py --only compiled``
measures what each build pays.

Which runs is decided here, at the import of ``edgeproxy``, for all of them at once (they
share one compiled runtime): the build when it was made from the sources as they are now
(each SHA-256 is recorded at build time, so an edited ``.py`` is never shadowed by a stale
build), else the sources. ``EDGEPROXY_PURE_PYTHON=1``
forces the source everywhere (CI runs the suite both ways); ``edgeproxy serve`` logs which.
"""

from __future__ import annotations

import hashlib
import importlib.machinery
import importlib.util
import json
import os
import sys
import sysconfig
from pathlib import Path
from typing import Any

PACKAGE_DIR = Path(__file__).resolve().parent
# What pays when compiled (bench_ingest --only compiled): normalising, the session rules, the
# mapping's actions and conversions, and the relay's request body (segment_api.request_body:
# 1.75 vs 2.2 µs a message of ~1.2 KB). Not here: the cookie codec (identity.cookies, which
# compiles now that its itsdangerous parts are in identity.signing: a returning visitor's
# cookie work read 13.9 against 14.3-14.7 µs, 1.03x, the signing being itsdangerous's Python
# either way, and four handler-alone runs could not tell the builds apart, 0.93-1.09x: not
# worth a build, one line to try again); amplitude_api (its body is one join per batch,
# nothing per item to gain); the mapping's predicates (``fql``: its closures take any JSON value
# where their annotations say dict, and mypyc checks annotations at run time: the suite fails);
# its ``plan``, ``schema`` and ``directives``, which the generated plan function (Python either
# way) calls into: compiled too, an event's normalise + touch + mapping took 14.6 µs against
# 14.1 without them (15.6 pure; 2026-12-07, three alternating runs each).
MODULES = (
    "edgeproxy.segment",
    "edgeproxy.identity.sessions",
    "edgeproxy.mapping.actions",
    "edgeproxy.mapping.coerce",
    "edgeproxy.mapping.revenue",
    "edgeproxy.mapping.useragent",
    "edgeproxy.mapping.userprops",
    "edgeproxy.segment_api",
)
MANIFEST = PACKAGE_DIR / "compiled.json"  # the runtime's name and each source's SHA-256 at build time
PURE_ENV = "EDGEPROXY_PURE_PYTHON"
EXTENSION_SUFFIX = sysconfig.get_config_var("EXT_SUFFIX") or ".so"


def source_path(module: str) -> Path:
    return PACKAGE_DIR.joinpath(*module.split(".")[1:]).with_suffix(".py")


def extension_path(module: str) -> Path:
    return source_path(module).with_suffix("").with_name(module.rsplit(".", 1)[1] + EXTENSION_SUFFIX)


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def read_manifest() -> dict[str, Any]:
    """``{"runtime": <mypyc's shared library module>, "sources": {module: SHA-256}}``."""
    try:
        data = json.loads(MANIFEST.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def runtime_path(name: str) -> Path:
    """mypyc's shared library (a top-level module named ``<hash>__mypyc``), kept in the package."""
    return PACKAGE_DIR / f"{name}{EXTENSION_SUFFIX}"


def usable(manifest: dict[str, Any]) -> bool:
    """The build exists and was made from the sources as they are now (all or none: the
    modules share one compiled runtime)."""
    runtime, sources = manifest.get("runtime"), manifest.get("sources")
    if not isinstance(runtime, str) or not isinstance(sources, dict) or not runtime_path(runtime).is_file():
        return False
    return all(sources.get(m) == digest(source_path(m)) and extension_path(m).is_file() for m in MODULES)


def _extension_spec(fullname: str, path: Path) -> Any:
    loader = importlib.machinery.ExtensionFileLoader(fullname, str(path))
    return importlib.util.spec_from_file_location(fullname, path, loader=loader)


class _SourceFirst:
    """A meta-path finder for the compiled modules (and mypyc's runtime library): the build
    when it is usable and not refused, else the source. Any other edgeproxy module with an
    extension file beside its source (one dropped from MODULES since the last build, which
    Python's own finder would load first) gets its source too; the rest go to the normal finders."""

    def __init__(self, pure: bool):
        manifest = {} if pure else read_manifest()
        self.runtime: str | None = manifest["runtime"] if not pure and usable(manifest) else None
        self.compiled = set(MODULES) if self.runtime else set()

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        if self.runtime is not None and fullname == self.runtime:
            return _extension_spec(fullname, runtime_path(fullname))
        if fullname not in MODULES:
            return self._stray(fullname)
        if fullname in self.compiled:
            return _extension_spec(fullname, extension_path(fullname))
        return importlib.util.spec_from_file_location(fullname, source_path(fullname))

    @staticmethod
    def _stray(fullname: str) -> Any:
        """The source of an edgeproxy module shadowed by an extension no build lists, else None."""
        if not fullname.startswith("edgeproxy."):
            return None
        source = source_path(fullname)
        if not extension_path(fullname).is_file() or not source.is_file():
            return None
        return importlib.util.spec_from_file_location(fullname, source)


_finder: _SourceFirst | None = None


def install() -> None:
    """Put the finder first (once): called by ``edgeproxy/__init__.py`` before any submodule."""
    global _finder
    if _finder is None:
        _finder = _SourceFirst(pure=os.environ.get(PURE_ENV) == "1")
        sys.meta_path.insert(0, _finder)


def status() -> str:
    """What runs, for the log line at start: the compiled modules, or why the source runs."""
    if os.environ.get(PURE_ENV) == "1":
        return f"pure Python ({PURE_ENV}=1)"
    if _finder is None or not _finder.compiled:
        return "pure Python (no current mypyc build: `make` builds it)"
    return "compiled with mypyc: " + ", ".join(sorted(_finder.compiled))
