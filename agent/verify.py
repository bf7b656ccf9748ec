"""Verification with the real consumer, in a fresh process with the job environment.

One subprocess (``python -m agent.verify``) is started before the builds with exactly
the environment the manifest tells jobs to export; it imports the consumer library while
the agent builds, then makes each built entry's real call as soon as that entry is built
(so verifying entry k overlaps building entry k+1) -- ``inspect_ai.dataset.hf_dataset``
or ``datasets.load_dataset`` with the job's arguments -- and checks that it was a pure
cache hit: nothing created or modified under either cache root, the call opened the
folder the build wrote, and the rows of what it opened (Arrow metadata) are the rows the
build recorded. Anything else fails the entry.

What the proof no longer does (docs/benchmarks.md): inspect's call is made with
``limit=1``, so it converts one row into a ``Sample``, not every row (that conversion is
what a job pays for anyway, and it cost 7 s for 820k rows). ``limit`` is a named
parameter of ``hf_dataset``, not part of its ``**kwargs``, so it is not in inspect's
cache key in either key form (tests/test_inspect_layer.py runs both releases).
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

# Lock files are created on first use and their mtime moves on every acquisition (they
# are opened with O_TRUNC); they hold no data, so they are not evidence of a rebuild.
_IGNORED_SUFFIXES = (".lock",)

# Peak RSS of the verification process: its imports plus the memory-mapped pages it
# touches, whatever the file size (one row is converted). Measured (the CACHE_VERIFY log
# line): 200 MB for inspect-ai, 143 MB for datasets, 259 MB for lm-eval (its task index
# included); the prototype 329 MB on a 92 MB file. site.memory_budget_mb reserves
# this much for it, with some margin.
RSS_MB = {"inspect": 350.0, "datasets": 250.0, "lm_eval": 400.0}


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


def _diff(before: Dict[str, Tuple[int, int]], after: Dict[str, Tuple[int, int]]) -> Dict[str, List[str]]:
    return {"created": sorted(p for p in after if p not in before),
            "modified": sorted(p for p in after if p in before and before[p] != after[p]),
            "removed": sorted(p for p in before if p not in after)}


# --- inside the verification process ---------------------------------------------------------


def _consume(consumer: str, call: Dict[str, Any]) -> Tuple[Optional[int], Optional[str]]:
    """The job's call (agent.consumers). Returns (rows of the dataset it opened, the folder
    it opened). The spies below call the real `datasets` functions and return their
    results unchanged: they only record which dataset the consumer opened, so its rows
    are read from the Arrow metadata instead of from what the consumer converted."""
    import datasets

    from agent import consumers

    seen: List[Tuple[str, Any]] = []
    real_from_disk, real_load = datasets.load_from_disk, datasets.load_dataset

    def from_disk(path: Any, *a: Any, **k: Any) -> Any:  # inspect-ai's cache hit
        ds = real_from_disk(path, *a, **k)
        seen.append((os.path.normpath(os.fspath(path)), ds))
        return ds

    def load(*a: Any, **k: Any) -> Any:  # the datasets and lm-eval consumers; inspect-ai's miss
        from agent.build import cache_files

        ds = real_load(*a, **k)
        files = cache_files(ds)
        seen.append((os.path.dirname(files[0]) if files else "", ds))
        return ds

    datasets.load_from_disk, datasets.load_dataset = from_disk, load
    try:
        # limit=1: one row is converted (0 would mean "no limit" to inspect-ai <= 0.3.220)
        consumers.get(consumer).consume(dict(call, limit=1 if call.get("rows") else None))
    finally:
        datasets.load_from_disk, datasets.load_dataset = real_from_disk, real_load
    if not seen:
        return None, None
    from agent.build import total_rows

    return total_rows(seen[0][1]), seen[0][0] or None


def _consumer_roots(consumer: str) -> List[str]:
    """The cache roots as the consumer in this process resolves them (job env applied)."""
    from agent import consumers

    return consumers.get(consumer).consumer_roots()


def probe_one(consumer: str, roots: List[str], call: Dict[str, Any]) -> Dict[str, Any]:
    """One call's facts: rows, opened, missed, changed, error, and when it ran (t0, t1)."""
    import io

    t0 = time.time()
    watch = [w for w in call.get("watch", []) if w]
    before = snapshot(roots, watch)
    printed = io.StringIO()
    out: Dict[str, Any] = {"rows": None, "opened": None, "missed": False, "error": None}
    try:
        with contextlib.redirect_stdout(printed):  # inspect prints on a cache miss
            out["rows"], out["opened"] = _consume(consumer, call)
    except Exception as exc:  # noqa: BLE001 - reported as the entry's failure
        out["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    # inspect-ai prints this only when its own cache folder was not found
    out["missed"] = "Loading dataset" in printed.getvalue()
    out["changed"] = _diff(before, snapshot(roots, watch))
    out["t0"], out["t1"] = t0, time.time()
    return out


def _serve(consumer: str, build_roots: List[str], answers: Any) -> None:
    """Answer one JSON line per request line until stdin closes."""
    # Watch the roots the build wrote AND the roots this process's consumer really uses:
    # if the job environment points the consumer elsewhere (a site env override, another
    # XDG_CACHE_HOME), its miss writes there, and only watching there shows it.
    roots = list(dict.fromkeys(build_roots + _consumer_roots(consumer)))
    for line in sys.stdin:
        if line.strip():
            answers.write(json.dumps(probe_one(consumer, roots, json.loads(line))) + "\n")
            answers.flush()


# --- in the agent ------------------------------------------------------------------------------


@dataclass
class _Build:
    """What one build of this run may have written, and when (wall clock)."""

    start: float
    end: float
    paths: List[str]  # its layer folders (empty for a failed build)
    builder: str


def judge(call: Dict[str, Any], facts: Dict[str, Any], roots: List[str], builds: List[_Build]) -> Dict[str, Any]:
    """{ok, rows, error} for one call. Changes a build of this run made while the call ran
    (its layer folders, their temporary siblings, the folders above them) are the build's,
    not the consumer's: verification overlaps the builds."""
    rows = facts.get("rows")
    if facts.get("error"):
        return {"ok": False, "rows": None, "error": facts["error"]}
    overlapping = [b for b in builds if b.start <= facts["t1"] and b.end >= facts["t0"]]
    changed = [p for p in facts["changed"]["created"] + facts["changed"]["modified"]
               if not _excused(p, roots, overlapping)]
    changed += [f"{p} (removed)" for p in facts["changed"]["removed"] if not _excused(p, roots, overlapping)]
    if facts.get("missed"):
        return {"ok": False, "rows": rows, "error": (
            "the consumer missed the inspect-ai cache and loaded the source again"
            + (f" (it wrote {changed[0]})" if changed else ""))}
    if changed:
        return {"ok": False, "rows": rows, "error": (
            f"the consumer's call was not a pure cache hit: it wrote {changed[0]}"
            + (f" and {len(changed) - 1} more" if len(changed) > 1 else ""))}
    expect = call.get("expect")
    if expect and facts.get("opened") != os.path.normpath(expect):
        return {"ok": False, "rows": rows, "error": f"the consumer opened {facts.get('opened')}, the build wrote {expect}"}
    if rows != call["rows"]:
        return {"ok": False, "rows": rows, "error": f"the consumer read {rows} rows, the build recorded {call['rows']}"}
    return {"ok": True, "rows": rows, "error": None}


def _excused(path: str, roots: List[str], builds: List[_Build]) -> bool:
    bare = path.rstrip("/")
    for build in builds:
        if not build.paths:  # a failed build: it wrote somewhere under <hf>/<builder>/
            if any(bare == r or bare.startswith(os.path.join(r, build.builder)) for r in roots):
                return True
            continue
        for layer in build.paths:
            # the folders down to the layer (mtimes move when it is created below them)
            if layer == bare or layer.startswith(bare + os.sep):
                return True
            for root in roots:
                if not layer.startswith(root + os.sep):
                    continue
                top = os.path.join(root, *os.path.relpath(layer, root).split(os.sep)[:2])
                # inside the layer's own <builder>/<config> (HF) or folder (inspect), or a
                # temporary or stale sibling of it (.<name>.tmp-..., .<name>.stale-...)
                if bare == top or bare.startswith(top + os.sep):
                    return True
                name = os.path.basename(layer)
                if os.path.dirname(bare) == os.path.dirname(layer) and os.path.basename(bare).startswith(f".{name}."):
                    return True
    return False


class Verifier:
    """The fresh verification process of one run.

        v = Verifier(consumer, job_env, roots)   # before the builds: it imports meanwhile
        v.built(...)                             # every finished build (what it wrote, when)
        v.submit(call)                           # each entry to verify, as soon as it is built
        v.results()                              # one {ok, rows, error} per submit, in order
    """

    def __init__(self, consumer: str, job_env: Dict[str, str], roots: List[str]) -> None:
        self.consumer, self.roots = consumer, [os.path.normpath(r) for r in roots]
        self.rss_mb = RSS_MB.get(consumer, 400.0)
        env = dict(os.environ)
        env.update(job_env)
        env.setdefault("PYTHONUNBUFFERED", "1")
        self._stderr = tempfile.TemporaryFile(mode="w+")  # a file: a chatty library must not block it
        self._proc = subprocess.Popen([sys.executable, "-m", "agent.verify", consumer, json.dumps(self.roots)],
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr,
                                      text=True, env=env)
        self._calls: List[Dict[str, Any]] = []
        self.keys: List[str] = []
        self._facts: List[Dict[str, Any]] = []
        self._builds: List[_Build] = []
        # answers are read as they come, so neither side can block on a full pipe
        self._reader = threading.Thread(target=self._read, name="verify-answers", daemon=True)
        self._reader.start()
        self._broken: Optional[str] = None
        self.cpu_s = self.maxrss_mb = self.call_s = 0.0  # measured by results()

    def _read(self) -> None:
        assert self._proc.stdout is not None
        for line in self._proc.stdout:
            if line.strip():
                self._facts.append(json.loads(line))

    def built(self, paths: List[str], seconds: float, builder: str) -> None:
        """A build of this run just finished (observed now), having run `seconds`."""
        # Observed after the build ended and before its own entry is submitted, so an entry's
        # own build never counts as overlapping its verification; the start has 1 s slack.
        end = time.time()
        self._builds.append(_Build(end - seconds - 1.0, end, [os.path.normpath(p) for p in paths], builder))

    def submit(self, call: Dict[str, Any], key: str = "") -> None:
        """Verify one entry now, while the next builds run. `call`: the LoadCall's fields
        plus rows (the build's), watch (its cache folders) and expect (the folder the
        consumer must open); `key` names it in `keys`, aligned with results()."""
        self._calls.append(call)
        self.keys.append(key)
        if self._broken is None:
            try:
                assert self._proc.stdin is not None
                self._proc.stdin.write(json.dumps(call) + "\n")
                self._proc.stdin.flush()
            except (BrokenPipeError, OSError) as exc:
                self._broken = str(exc)

    def results(self, timeout: float = 1800) -> List[Dict[str, Any]]:
        with contextlib.suppress(OSError, ValueError):
            assert self._proc.stdin is not None
            self._proc.stdin.close()
        self._reader.join(timeout)  # ends when the process closes its stdout (exits)
        if self._reader.is_alive():
            self.cancel()
            raise subprocess.TimeoutExpired(self._proc.args, timeout)
        _, status, usage = os.wait4(self._proc.pid, 0)
        self._proc.returncode = os.waitstatus_to_exitcode(status)
        self.cpu_s, self.maxrss_mb = usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024
        self.call_s = sum(f["t1"] - f["t0"] for f in self._facts)
        out = []
        for i, call in enumerate(self._calls):
            if i < len(self._facts):
                out.append(judge(call, self._facts[i], self.roots, self._builds))
            else:
                self._stderr.seek(0)
                tail = (self._stderr.read().strip().splitlines() or [f"exit {self._proc.returncode}, no output"])[-1]
                out.append({"ok": False, "rows": None, "error": f"verification process failed: {tail}"})
        self._stderr.close()
        return out

    def cancel(self) -> None:
        """Nothing (more) to verify: stop the process."""
        self._proc.kill()
        self._proc.wait()
        with contextlib.suppress(OSError, ValueError):
            self._stderr.close()


def verify(consumer: str, calls: List[Dict[str, Any]], roots: List[str], job_env: Dict[str, str]) -> List[Dict[str, Any]]:
    """All calls at once, after the builds (no overlap): a Verifier with nothing built."""
    v = Verifier(consumer, job_env, roots)
    for call in calls:
        v.submit(call)
    return v.results()


# --- the run's side: entry records (agent.entry.EntryRecord) ------------------------------------


def wanted(record: Any) -> bool:
    """Verified: what this run built, and what another agent built while we waited for its
    lock (it was verified in *its* job environment, not necessarily in ours)."""
    from agent.entry import Status

    return record.status in (Status.BUILT, Status.REBUILT) or record.by_other_agent


def _watched(record: Any) -> List[str]:
    """The folders whose every file verification compares: the entry's HF config folder
    (<hf>/<builder>/<config>, holding its version folders) and its other layers' folders."""
    out = []
    for kind, layer in record.layers.items():
        out.append(os.path.dirname(os.path.dirname(layer.dir)) if kind == "hf" else layer.dir)
    return out


def on_built(verifier: Verifier, record: Any) -> None:
    """A build just finished: tell the verifier what it wrote, and verify the entry now,
    while the next builds run."""
    verifier.built([layer.dir for layer in record.layers.values()], record.seconds, record.call.builder)
    if wanted(record):
        from agent import consumers

        opened = record.layers.get(consumers.get(verifier.consumer).layers[-1])  # what the job's call opens
        verifier.submit(dict(record.call.to_json(), rows=record.rows, watch=_watched(record), job=record.job,
                             expect=opened.dir if opened else None), record.key)


def collect(verifier: Verifier, records: List[Any]) -> List[Any]:
    """The verifier's answers for what on_built submitted; a failed proof fails the entry."""
    import dataclasses

    from agent.entry import Status
    from agent.logs import event

    if not verifier.keys:
        verifier.cancel()
        return records
    results = dict(zip(verifier.keys, verifier.results()))
    event("CACHE_VERIFY", f"Loaded {len(results)} dataset(s) with the real {verifier.consumer} call in a fresh "
          f"process: {sum(r['ok'] for r in results.values())} pure cache hit(s) ({verifier.call_s:.2f} s in the "
          f"calls, verifier CPU {verifier.cpu_s:.2f} s, peak {verifier.maxrss_mb:.0f} MB)")
    out = list(records)
    for i, record in enumerate(out):
        result = results.get(record.key)
        if result is not None and not result["ok"] and wanted(record):
            out[i] = dataclasses.replace(record, status=Status.FAILED,
                                         error=f"{record.call.describe()} (verification: {result['error']})")
    return out


def main(argv: List[str]) -> None:
    import logging

    logging.disable(logging.WARNING)
    consumer, build_roots = argv[0], json.loads(argv[1])
    # The answers get a private copy of stdout; fd 1 itself goes to stderr, so nothing a
    # library prints (C code included) can be mistaken for an answer.
    answers = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    # Import while the agent builds. A broken install fails in the call itself.
    with contextlib.suppress(Exception):
        from agent import consumers

        import datasets  # noqa: F401  (inspect-ai imports it only inside hf_dataset)
        consumers.get(consumer).preload()
    _serve(consumer, build_roots, answers)
    answers.flush()
    # Nothing to tear down that anyone needs: skip the interpreter's 0.8 s of freeing
    # datasets/pyarrow/inspect-ai modules once the last answer is written.
    os._exit(0)


if __name__ == "__main__":
    main(sys.argv[1:])
