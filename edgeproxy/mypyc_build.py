"""Build the compiled hot path (``edgeproxy/compiled.py``) with mypyc, in place.

``python -m edgeproxy.mypyc_build`` (``make`` runs it) compiles ``compiled.MODULES`` together
(one shared runtime, native calls between them); if mypyc cannot, it says why and the source
runs.
``python -m edgeproxy.mypyc_build clean`` removes the builds; ``status`` says what runs.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Sequence

from edgeproxy.compiled import (EXTENSION_SUFFIX, MANIFEST, MODULES, PACKAGE_DIR, digest, extension_path, runtime_path,
                                source_path, status)


def build(modules: Sequence[str] = MODULES) -> int:
    """Compile the modules together in a scratch copy of the package, then move the build
    in (each module's extension next to its source, mypyc's runtime library in the package),
    so nothing is written outside ``edgeproxy/``. A failure is said, never fatal: the source
    runs. Returns 0."""
    clean()
    with tempfile.TemporaryDirectory(prefix="edgeproxy-mypyc-") as scratch:
        root = Path(scratch)
        shutil.copytree(PACKAGE_DIR, root / "edgeproxy", ignore=shutil.ignore_patterns("__pycache__", "*.so", "*.json.*"))
        files = [str(source_path(m).relative_to(PACKAGE_DIR.parent)) for m in modules]
        run = subprocess.run([sys.executable, "-m", "mypyc", "--ignore-missing-imports", *files],
                             cwd=scratch, capture_output=True, text=True)
        built = [root / extension_path(m).relative_to(PACKAGE_DIR.parent) for m in modules]
        runtimes = sorted(root.glob(f"*__mypyc{EXTENSION_SUFFIX}"))
        if run.returncode != 0 or not all(p.is_file() for p in built) or len(runtimes) != 1:
            print(f"edgeproxy: mypyc could not build the hot path (its source runs instead):\n"
                  f"{run.stdout[-3000:]}{run.stderr[-3000:]}", file=sys.stderr)
            return 0
        runtime = runtimes[0].name[: -len(EXTENSION_SUFFIX)]
        for source, target in [*zip(built, map(extension_path, modules)), (runtimes[0], runtime_path(runtime))]:
            staged = target.with_name(target.name + ".new")
            shutil.copy2(source, staged)
            os.replace(staged, target)  # a running process keeps the copy it mapped
    sources = {m: digest(source_path(m)) for m in modules}
    MANIFEST.write_text(json.dumps({"runtime": runtime, "sources": sources}, indent=1, sort_keys=True) + "\n")
    print(f"edgeproxy: compiled {', '.join(modules)} with mypyc")
    return 0


def clean() -> None:
    """Remove the build: every extension module in the package (the package ships none of its
    own; all are this build's). Not only the listed modules': one dropped from the list would
    otherwise stay next to its source, and Python's own finder prefers an extension to a ``.py``."""
    for path in PACKAGE_DIR.rglob(f"*{EXTENSION_SUFFIX}"):
        path.unlink(missing_ok=True)
    MANIFEST.unlink(missing_ok=True)


if __name__ == "__main__":
    command = sys.argv[1] if len(sys.argv) > 1 else "build"
    if command == "build":
        sys.exit(build(sys.argv[2:] or MODULES))
    elif command == "clean":
        clean()
    elif command == "status":
        print(status())
    else:
        sys.exit(f"usage: python -m edgeproxy.mypyc_build [build [MODULE ...] | clean | status], not {command!r}")
