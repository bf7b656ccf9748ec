"""Verification with the real consumer, in a fresh process with the job environment.

After building, one subprocess (``python -m agent.verify``) exports exactly the
environment the manifest tells jobs to export, then makes each entry's real call —
``inspect_ai.dataset.hf_dataset(...)`` or ``datasets.load_dataset(...)`` — and checks it
was a pure cache hit: nothing created or modified under either cache root, and the rows
it returned are the rows the manifest records. Anything else fails the entry.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any, Dict, List, Optional, Tuple

# Lock files are created on first use and their mtime moves on every acquisition (they
# are opened with O_TRUNC); they hold no data, so they are not evidence of a rebuild.
_IGNORED_SUFFIXES = (".lock",)


def _files(folder: str, seen: Dict[str, Tuple[int, int]]) -> None:
    """Every file under `folder` with its size and mtime (lock files excluded)."""
    for sub, dirs, files in os.walk(folder):
        if os.path.basename(sub) == ".cluster-agent":
            dirs[:] = []
            continue
        for name in files:
            if name.endswith(_IGNORED_SUFFIXES):
                continue
            path = os.path.join(sub, name)
            try:
                st = os.stat(path)
            except FileNotFoundError:
                continue
            seen[path] = (st.st_size, st.st_mtime_ns)
        for name in dirs:
            seen[os.path.join(sub, name) + "/"] = (0, 0)


def _folders(root: str, depth: int, seen: Dict[str, Tuple[int, int]]) -> None:
    """The mtime of every folder down to `depth` below root. A folder's mtime moves when
    anything is created, removed or renamed in it, so this sees a consumer that misses
    and builds anywhere (a new HF config or version folder, a new inspect folder, an
    `.incomplete` folder) without stat-ing every file of a large shared cache."""
    try:
        seen[root + "/"] = (0, os.stat(root).st_mtime_ns)
    except OSError:
        return
    if depth == 0:
        return
    try:
        children = [e for e in os.scandir(root) if e.is_dir(follow_symlinks=False)]
    except OSError:
        return
    for child in children:
        if child.name != ".cluster-agent":
            _folders(child.path, depth - 1, seen)


def snapshot(roots: List[str], watch: Optional[List[str]] = None) -> Dict[str, Tuple[int, int]]:
    """What one call could change: folder mtimes down to <hf>/<builder>/<config>/ (depth 2)
    of every root, plus every file of the call's own cache folders (`watch`), where a
    rebuild in place would rewrite files without creating any. Cost per call grows with
    the number of datasets in the cache (one stat each), not with their files."""
    seen: Dict[str, Tuple[int, int]] = {}
    for root in roots:
        _folders(root, 2, seen)
    for folder in watch or []:
        _files(folder, seen)
    return seen


def _diff(before: Dict[str, Tuple[int, int]], after: Dict[str, Tuple[int, int]]) -> List[str]:
    """Created paths first (they name what the consumer built), then modified, then removed."""
    created = sorted(p for p in after if p not in before)
    modified = sorted(p for p in after if p in before and before[p] != after[p])
    gone = sorted(p for p in before if p not in after)
    return created + modified + [f"{p} (removed)" for p in gone]


def _consume(consumer: str, call: Dict[str, Any]) -> int:
    from agent import consumers

    return consumers.get(consumer).consume(call)


def _consumer_roots(consumer: str) -> List[str]:
    """The cache roots as the consumer in this process resolves them (job env applied)."""
    from agent import consumers

    return consumers.get(consumer).consumer_roots()


def probe(request: Dict[str, Any]) -> List[Dict[str, Any]]:
    """Runs inside the fresh process. One result per call: {ok, rows, error}."""
    import contextlib
    import io

    # Watch the roots the build wrote AND the roots this process's consumer really uses:
    # if the job environment points the consumer elsewhere (a site env override, another
    # XDG_CACHE_HOME), its miss writes there, and only watching there shows it.
    roots = list(dict.fromkeys(request["roots"] + _consumer_roots(request["consumer"])))
    results = []
    for call in request["calls"]:
        watch = [w for w in call.get("watch", []) if w]
        before = snapshot(roots, watch)
        printed = io.StringIO()
        try:
            with contextlib.redirect_stdout(printed):  # inspect prints on a cache miss
                rows = _consume(request["consumer"], call)
        except Exception as exc:  # noqa: BLE001 - reported as the entry's failure
            results.append({"ok": False, "rows": None, "error": f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"})
            continue
        changed = _diff(before, snapshot(roots, watch))
        if "Loading dataset" in printed.getvalue():
            # inspect-ai prints this only when its own cache folder was not found
            results.append({"ok": False, "rows": rows, "error": (
                "the consumer missed the inspect-ai cache and loaded the source again"
                + (f" (it wrote {changed[0]})" if changed else ""))})
        elif changed:
            results.append({"ok": False, "rows": rows, "error": (
                f"the consumer's call was not a pure cache hit: it wrote {changed[0]}"
                + (f" and {len(changed) - 1} more" if len(changed) > 1 else ""))})
        elif rows != call["rows"]:
            results.append({"ok": False, "rows": rows, "error": f"the consumer read {rows} rows, the build recorded {call['rows']}"})
        else:
            results.append({"ok": True, "rows": rows, "error": None})
    return results


def start(consumer: str, job_env: Dict[str, str]) -> "subprocess.Popen[str]":
    """Start the fresh verification process now, before the builds: it imports the
    consumer library (with the job environment, as a job would) while the agent builds,
    then waits for its request on stdin. The import (0.7 s for datasets, 1.2 s for
    inspect-ai) then runs on another core instead of after the builds. It loads nothing
    before the request comes, so its calls are still a job's first calls."""
    env = dict(os.environ)
    env.update(job_env)
    env.setdefault("PYTHONUNBUFFERED", "1")
    return subprocess.Popen([sys.executable, "-m", "agent.verify", consumer], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def cancel(proc: "subprocess.Popen[str]") -> None:
    """A started verification process that has nothing to verify after all."""
    proc.kill()
    proc.communicate()


def verify(consumer: str, calls: List[Dict[str, Any]], roots: List[str], job_env: Dict[str, str],
           timeout: float = 1800, started: "Optional[subprocess.Popen[str]]" = None) -> List[Dict[str, Any]]:
    """Run `probe` in a fresh interpreter with the job environment; one result per call.
    `started`: a process from start() (already past its imports)."""
    request = json.dumps({"consumer": consumer, "calls": calls, "roots": roots})
    proc = started if started is not None else start(consumer, job_env)
    try:
        stdout, stderr = proc.communicate(request, timeout=timeout)
    except subprocess.TimeoutExpired:
        cancel(proc)
        raise
    if proc.returncode != 0:
        tail = (stderr.strip().splitlines() or ["no output"])[-1]
        return [{"ok": False, "rows": None, "error": f"verification process failed: {tail}"} for _ in calls]
    return json.loads(stdout.strip().splitlines()[-1])


def _watched(record: Any) -> List[str]:
    """The folders whose every file verification compares: the entry's HF config folder
    (<hf>/<builder>/<config>, holding its version folders) and its other layers' folders."""
    out = []
    for kind, layer in record.layers.items():
        out.append(os.path.dirname(os.path.dirname(layer.dir)) if kind == "hf" else layer.dir)
    return out


def verify_records(records: List[Any], indices: List[int], settings: Any,
                   started: "Optional[subprocess.Popen[str]]" = None) -> List[Any]:
    """Prove records[i] for i in indices with the real consumer call (what another agent
    built too: it was verified in *its* job environment); a failed proof fails the entry."""
    import dataclasses

    from agent.entry import Status
    from agent.logs import event

    if not indices:
        if started is not None:
            cancel(started)
        return records
    event("CACHE_VERIFY", f"Loading {len(indices)} dataset(s) with the real {settings.consumer} call in a fresh process")
    calls = [dict(records[i].call.to_json(), rows=records[i].rows, watch=_watched(records[i])) for i in indices]
    roots = [str(settings.roots.hf), str(settings.roots.inspect)]
    results = verify(settings.consumer, calls, roots, settings.job_env, started=started)
    out = list(records)
    for i, result in zip(indices, results):
        if not result["ok"]:
            out[i] = dataclasses.replace(out[i], status=Status.FAILED,
                                         error=f"{out[i].call.describe()} (verification: {result['error']})")
    return out


if __name__ == "__main__":
    import logging

    logging.disable(logging.WARNING)
    if len(sys.argv) > 1:  # started early (see start()): import while the agent builds
        import contextlib

        from agent import consumers

        with contextlib.suppress(Exception):  # a broken install fails in the call itself
            consumers.get(sys.argv[1]).preload()
    raw = sys.stdin.read()
    if not raw.strip():  # cancelled: nothing to verify
        sys.exit(0)
    out = probe(json.loads(raw))
    sys.stdout.write("\n" + json.dumps(out) + "\n")
