"""The launch gate (`action=check`, DESIGN §8): may these jobs start now?

It runs before `sbatch` and again as the first step of every eval job, so it must be
fast: it imports neither `datasets`, `inspect_ai` nor Hydra. It reads the manifest,
re-stats each source (hashing it only when the stat moved), checks that every layer's
files are on disk at their recorded sizes, and compares the installed library versions
with the manifest's. Exit 0 = go, 3 = refused with one line per reason.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, TextIO

from agent.errors import EXIT_GATE, EXIT_PROCEED, EXIT_USAGE, ManifestError, SourceError
from agent.fingerprint import Fingerprint, fingerprint
from agent.layers import HF, INSPECT, Layer, layer_problems
from agent.manifest import READY, read

# cache layers each consumer reads; the versions whose change moves its cache keys
_LAYERS = {"inspect": (HF, INSPECT), "datasets": (HF,)}
_KEYING = {"inspect": ("datasets", "inspect_ai"), "datasets": ("datasets",)}
_FAST_KEYS = {"action", "experiment", "manifest", "task", "output", "verbose"}


def _versions() -> Dict[str, Optional[str]]:
    from agent.versions import versions  # dist-info lookup: no importlib.metadata import

    return versions(("datasets", "pyarrow", "inspect_ai"))


def check(manifest_path: Path, task: Optional[str] = None,
          versions: Optional[Dict[str, Optional[str]]] = None) -> Dict[str, Any]:
    """{'ok': bool, 'problems': [...], 'entries': n, 'env': {...}} for the whole manifest or one task."""
    try:
        doc = read(manifest_path)
    except ManifestError as exc:
        return _refused(manifest_path, task, [str(exc)])
    if doc is None:
        return _refused(manifest_path, task, [
            f"no manifest at {manifest_path}: run cluster-agent (prebuild) for this experiment first"])
    consumer = doc.get("consumer", "inspect")
    problems: List[str] = []
    if doc.get("decision") != "proceed":
        problems.append(f"the pre-build decided '{doc.get('decision')}': fix the datasets it reported and run cluster-agent again")
    installed = versions if versions is not None else _versions()
    for lib in _KEYING.get(consumer, ("datasets",)):
        built_with, here = doc["versions"].get(lib), installed.get(lib)
        if built_with != here:
            problems.append(
                f"{lib} {here or 'not installed'} here, but the caches were built with {lib} {built_with}: "
                "the cache keys differ; re-run cluster-agent in the job's environment")
    entries = doc["entries"]
    if task is not None:
        entries = [e for e in entries if task in e.get("tasks", [])]
        if not entries:
            names = sorted({t for e in doc["entries"] for t in e.get("tasks", [])})
            problems.append(f"task '{task}' is not in manifest {manifest_path}; tasks: {', '.join(names)}")
    for entry in entries:
        problems += _entry_problems(entry, consumer)
    return {"ok": not problems, "manifest": str(manifest_path), "task": task, "entries": len(entries),
            "problems": problems, "env": doc.get("env", {})}


def _refused(manifest_path: Path, task: Optional[str], problems: List[str]) -> Dict[str, Any]:
    return {"ok": False, "manifest": str(manifest_path), "task": task, "entries": 0, "problems": problems, "env": {}}


def _entry_problems(entry: Dict[str, Any], consumer: str) -> List[str]:
    path = entry["call"]["data_files"]
    if entry["status"] not in READY:
        return [f"{path} is {entry['status']} in the manifest ({entry.get('error') or 'no cache'}); fix it and run cluster-agent again"]
    try:
        recorded = Fingerprint.from_json(entry["source"])
        now = fingerprint(path, recorded)
    except SourceError as exc:
        return [f"{exc} since the pre-build; restore it or run cluster-agent again"]
    except (KeyError, TypeError, ValueError):
        return [f"{path}: manifest entry has no usable source fingerprint (edited by hand?); run cluster-agent again"]
    if now.sha256 != recorded.sha256:
        return [f"{path} changed since the pre-build (content hash differs): its caches hold the old rows; run cluster-agent again"]
    if now.mtime_ns != recorded.mtime_ns and consumer == "datasets":
        return [f"{path} has a new mtime since the pre-build: datasets will look under a new cache key; run cluster-agent again"]
    problems = []
    for kind in _LAYERS.get(consumer, (HF,)):
        raw = (entry.get("layers") or {}).get(kind)
        if raw is None:
            problems.append(f"{path}: no {kind} cache recorded; run cluster-agent again")
            continue
        try:
            problems += [f"{p}; run cluster-agent again to repair it" for p in layer_problems(kind, Layer.from_json(raw))]
        except (KeyError, TypeError, ValueError, AttributeError):
            problems.append(f"{path}: {kind} layer record is malformed (edited by hand?); run cluster-agent again")
    return problems


def _line(event: str, message: str) -> str:
    return f"[{time.strftime('%Y-%m-%d %H:%M:%S')}] {event}: {message}\n"


def emit(result: Dict[str, Any], output: str, stdout: TextIO = sys.stdout, stderr: TextIO = sys.stderr) -> int:
    scope = f"task {result['task']}" if result["task"] else "all tasks"
    if output == "json":
        stdout.write(json.dumps({"gate": "ok" if result["ok"] else "refused", **result}) + "\n")
    if result["ok"]:
        stderr.write(_line("GATE_OK", f"{result['entries']} dataset(s) ready for {scope} ({result['manifest']})"))
        if output == "shell":
            stdout.write("".join(f"export {k}={shlex.quote(str(v))}\n" for k, v in result["env"].items()))
        return EXIT_PROCEED
    for problem in result["problems"]:
        stderr.write(_line("GATE_REFUSED", problem))
    return EXIT_GATE


def default_manifest(experiment: Optional[str]) -> Path:
    from agent.config import EXAMPLE_SUMMARY  # stdlib-only module level; no Hydra import

    summary = Path(os.path.abspath(os.path.expanduser(experiment))) if experiment else EXAMPLE_SUMMARY
    return summary.parent / ".cluster-agent" / "manifest.json"


def fast_args(argv: List[str]) -> Optional[Dict[str, str]]:
    """`action=check` with only gate keys: handled without composing the Hydra config."""
    pairs = {}
    for item in argv:
        if "=" not in item or item.startswith(("-", "+", "~")):
            return None
        key, value = item.split("=", 1)
        if key not in _FAST_KEYS:
            return None
        pairs[key] = value
    if pairs.get("action") != "check" or pairs.get("output", "text") not in ("text", "json", "shell"):
        return None
    if pairs.get("verbose", "false").lower() not in ("true", "false"):
        return None
    return pairs


def main_fast(pairs: Dict[str, str]) -> int:
    manifest = pairs.get("manifest")
    if manifest in ("", "null"):
        manifest = None
    if manifest:
        from agent.config import inside  # stdlib at module level; no Hydra import
        from agent.errors import ConfigError

        try:
            path = inside(default_manifest(pairs.get("experiment")).parent.parent, manifest, "manifest")
        except ConfigError as exc:
            sys.stderr.write(f"cluster-agent: error: {exc}\n")
            return EXIT_USAGE
    else:
        path = default_manifest(pairs.get("experiment"))
    task = pairs.get("task") or None
    if task == "null":
        task = None
    try:
        return emit(check(path, task), pairs.get("output", "text"))
    except OSError as exc:  # pragma: no cover - e.g. stdout closed
        sys.stderr.write(f"cluster-agent: error: {exc}\n")
        return EXIT_USAGE
