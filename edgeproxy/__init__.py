"""edgeproxy: a first-party analytics edge (Segment's tracking API in, Amplitude out)."""

from edgeproxy import compiled as _compiled

_compiled.install()  # before any submodule: the compiled hot path, or its source (edgeproxy/compiled.py)
