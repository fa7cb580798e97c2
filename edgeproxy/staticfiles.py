"""Where the files under ``static/`` (session plugin, demo site) are at run time.

From a source checkout (``pip install -e .``, the Makefile's way) they are the repository's
``static/``; a regular wheel install ships them as data files under
``<prefix>/share/edgeproxy/static`` (see ``[tool.setuptools.data-files]`` in pyproject.toml).
"""

from __future__ import annotations

import sys
from pathlib import Path

_SOURCE = Path(__file__).resolve().parent.parent / "static"
_INSTALLED = Path(sys.prefix) / "share" / "edgeproxy" / "static"


def static_dir() -> Path:
    return _SOURCE if _SOURCE.is_dir() else _INSTALLED


STATIC_DIR = static_dir()
