"""``edgeproxy map``: Segment events (JSON lines) in, the Amplitude requests they become out.

The user's preview tool and the conformance suite's entry point: no network, no session
state, settings checked strictly (one missing key refuses every event, as the reference
does; with neither key it is a preview with placeholder keys).
One output line per input line, in the shape of the conformance cases' ``expected``.
"""

from __future__ import annotations

import argparse
import sys
import tomllib
from pathlib import Path
from typing import Any, TextIO

import orjson

from ..amplitude_api import build_request
from . import Mapped, Mapper, MappingConfigError


def load_amplitude_config(config_path: str | None, source: str | None = None) -> dict[str, Any]:
    """The ``[amplitude]`` table of a TOML config (or of a ``.json`` file of the same shape), or
    with ``source`` the ``amplitude`` table of the ``[[sources]]`` entry of that name ("default"
    is the flat ``[amplitude]``): the mapping that source's events get."""
    raw: Any = {}
    if config_path is not None:
        path = Path(config_path)
        if path.suffix.lower() == ".json":
            raw = orjson.loads(path.read_bytes())
        else:
            with path.open("rb") as fh:
                raw = tomllib.load(fh)
    where = config_path or "(defaults)"
    if not isinstance(raw, dict):
        raise ValueError(f"{where}: expected a table/object at the top level")
    table, section = raw, "[amplitude]"
    if source not in (None, "default"):
        entries = raw.get("sources", [])
        entries = entries if isinstance(entries, list) else []
        named = {e.get("name"): e for e in entries if isinstance(e, dict)}
        if source not in named:
            known = ", ".join(["default", *(str(n) for n in named)])
            raise ValueError(f"{where}: no [[sources]] entry named {source!r} (known: {known})")
        table, section = named[source], f"[sources.amplitude] of source {source!r}"
    amplitude = table.get("amplitude", {})
    if not isinstance(amplitude, dict):
        raise ValueError(f"{where}: {section} must be a table")
    return amplitude


def render(mapped: Mapped, amplitude: dict[str, Any]) -> dict[str, Any]:
    """One request per (endpoint, options) group of the event's outputs, in first-seen order."""
    groups: dict[tuple[str, bytes], tuple[dict | None, list[dict]]] = {}
    for out in mapped.outputs:
        key = (out.endpoint, orjson.dumps(out.options, option=orjson.OPT_SORT_KEYS))
        groups.setdefault(key, (out.options, []))[1].append(out.item)
    requests = []
    for (endpoint, _), (options, items) in groups.items():
        req = build_request(endpoint, str(amplitude.get("api_key", "")), items, options,
                            region=amplitude.get("region") or "north_america",
                            base_override=amplitude.get("endpoint_url") or "")
        requests.append({"method": "POST", "url": req.url, "headers": {"content-type": req.content_type}, "body": req.body})
    errors = ([mapped.settings_error] if mapped.settings_error else []) + [f"400 {e}" for e in mapped.errors]
    return {"requests": requests, "error": "; ".join(errors) or None}


# Shown in the requests of a preview made without credentials, so nobody mistakes them for real ones.
PLACEHOLDER_KEYS = {"api_key": "PREVIEW-API-KEY", "secret_key": "PREVIEW-SECRET-KEY"}


def with_preview_keys(amplitude: dict[str, Any], where: str, stderr: TextIO) -> dict[str, Any]:
    """A config without either key is a preview: placeholder keys, said once on stderr. With
    one key only the config is half-set, so the refusal stays (naming the missing key) and is
    said once on stderr too, instead of only on every output line."""
    missing = [key for key in PLACEHOLDER_KEYS if amplitude.get(key) in (None, "")]
    if len(missing) == len(PLACEHOLDER_KEYS):
        print(f"edgeproxy map: {where} sets neither amplitude.api_key nor amplitude.secret_key: previewing "
              f"with placeholder keys ({PLACEHOLDER_KEYS['api_key']})", file=stderr)
        return {**amplitude, **PLACEHOLDER_KEYS}
    for key in missing:
        print(f"edgeproxy map: {where} sets no amplitude.{key}: Segment's destination refuses every event "
              f"without it and this preview mirrors it, so every line below is a refusal (set it, or remove "
              f"both keys for a preview with placeholders; edgeproxy serve needs only amplitude.api_key)",
              file=stderr)
    return amplitude


def run_map(config_path: str | None, stdin: TextIO, stdout: TextIO, source: str | None = None) -> int:
    """Map every JSON line of ``stdin`` as ``source`` would; 2 when the configuration is unusable, else 0."""
    try:
        amplitude = with_preview_keys(load_amplitude_config(config_path, source), config_path or "(defaults)", sys.stderr)
        mapper = Mapper(amplitude, strict_settings=True)
    except MappingConfigError as exc:
        for problem in exc.problems:
            print(f"amplitude.subscriptions{problem}" if problem.startswith("[") else problem, file=sys.stderr)
        return 2
    except (OSError, ValueError, tomllib.TOMLDecodeError) as exc:
        print(f"cannot read config: {exc}", file=sys.stderr)
        return 2
    for number, line in enumerate(stdin, start=1):
        if not line.strip():
            continue
        try:
            event = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            out: dict[str, Any] = {"requests": [], "error": f"line {number}: invalid JSON: {exc}"}
        else:
            out = render(mapper.map(event), amplitude)
        stdout.write(orjson.dumps(out).decode() + "\n")
    stdout.flush()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="edgeproxy map", description=__doc__.splitlines()[0])
    parser.add_argument("--config", help="edgeproxy TOML config (its [amplitude] table) or a .json of the same shape")
    parser.add_argument("--source", metavar="NAME", help="map as the [[sources]] entry NAME does")
    args = parser.parse_args(argv)
    return run_map(args.config, sys.stdin, sys.stdout, args.source)


if __name__ == "__main__":
    sys.exit(main())
