"""Race harness: N inspect-ai eval jobs start at (nearly) the same instant on one dataset.

    python bench/race.py                       # N=16, 10 trials per mode, markdown table
    python bench/race.py --n 8 --trials 2 --rows 5000 --json out.json   # the CI-sized run

Each trial gets fresh cache roots and puts them in one of three states before the jobs
start:

    cold      nothing built (what happens without any pre-build)
    hf-only   the HF datasets layer built by one `datasets.load_dataset` call, no
              inspect-ai layer (today's usual workaround)
    agent     `cluster-agent` run on a summary naming the file (both layers, verified);
              the jobs get exactly the manifest's `env`

and runs the jobs in one of two lock modes:

    flock     filelock works (local disk)
    none      filelock's locks do nothing in the jobs: a stand-in for NFS / GPFS / Lustre
              mounts whose locks do not hold across nodes (we cannot mount one here)

A trial: one helper process with the job environment imports `datasets` and inspect-ai
once, then forks N jobs (so every job has finished importing before the race starts,
and N imports do not cost N x 3 s of CPU on a small machine). The jobs wait on a
barrier, each sleeps a random 0-0.5 s offset, then makes the real consumer call:
`inspect_ai.dataset.hf_dataset(path="json", data_files=DATA, field="test",
split="train", sample_fields=..., retry=False)`. Per job we record: the exception type
(or a fatal signal such as SIGBUS, or a time-out), the number of rows returned (a wrong
count is a silent failure), and whether inspect-ai printed that it missed its own cache.
After the jobs, one more call checks whether the cache was left broken for every later
job.

`retry=False`: inspect-ai's default retries a `DatasetGenerationError` after a random
0-60 s sleep (three tries); that would stretch a cold trial to minutes and hide some
failures behind a late retry. A job that finds the inspect-ai layer (the `agent` state)
never reaches that code: it calls `load_from_disk`.

The data (default 20,000 rows of ~30 words, ~5 MB; `--rows 200000` is DESIGN's size, too
slow for 960 jobs on a 2-core machine) is generated into a temporary folder, never into
the repository.
"""

from __future__ import annotations

import argparse
import collections
import io
import json
import os
import platform
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

REPO = Path(__file__).resolve().parent.parent
STATES = ("cold", "hf-only", "agent")
LOCKS = ("flock", "none")
FIELD = "test"

_WORDS = ("garden lantern river cloud saddle harbor marble window pepper copper meadow falcon "
          "anchor violet timber crystal ember willow quartz summit lagoon canyon orchard beacon").split()


def make_data(path: Path, rows: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    doc = {"train": [{"input": "t", "output": "t"}], "validation": [{"input": "v", "output": "v"}],
           FIELD: [{"input": f"{i} " + " ".join(rng.choice(_WORDS) for _ in range(30)), "output": rng.choice(_WORDS)}
                   for i in range(rows)]}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc))


# --- inside the jobs -------------------------------------------------------------------


def disable_filelock() -> None:
    """Make every filelock lock a no-op in this process.

    A FAKE, on purpose: a stand-in for NFS / GPFS / Lustre mounts whose flock/fcntl locks
    do not hold across nodes (or are silently granted to everyone). We cannot mount such a
    file system here, so the lock calls themselves succeed without excluding anybody.
    `datasets.utils._filelock.FileLock` subclasses `filelock.UnixFileLock`, so patching
    the base classes covers every lock `datasets` takes.
    """
    import filelock

    class _Proxy:
        def __init__(self, lock: Any) -> None:
            self.lock = lock

        def __enter__(self) -> Any:
            return self.lock

        def __exit__(self, *exc: Any) -> None:
            return None

    for cls in (filelock.BaseFileLock, filelock.UnixFileLock):
        cls.acquire = lambda self, *a, **k: _Proxy(self)  # type: ignore[method-assign]
        cls.release = lambda self, *a, **k: None  # type: ignore[method-assign]
        cls.__enter__ = lambda self: self  # type: ignore[method-assign]
        cls.__exit__ = lambda self, *exc: None  # type: ignore[method-assign]


def consume(data: str) -> Dict[str, Any]:
    """The job's real call; never raises."""
    from contextlib import redirect_stdout

    from inspect_ai.dataset import Sample, hf_dataset

    printed = io.StringIO()
    try:
        with redirect_stdout(printed):  # inspect-ai prints "Loading dataset ..." on a miss
            ds = hf_dataset(path="json", data_files=data, field=FIELD, split="train", retry=False,
                            sample_fields=lambda r: Sample(input=r["input"], target=r["output"]))
        return {"ok": True, "rows": len(ds), "missed": "Loading dataset" in printed.getvalue()}
    except BaseException as exc:  # noqa: BLE001 - counting every failure is the point
        return {"ok": False, "rows": None, "error": type(exc).__name__,
                "message": (str(exc).splitlines() or [""])[0][:300], "missed": "Loading dataset" in printed.getvalue()}


def _job(index: int, req: Dict[str, Any], barrier: Any, results: Any) -> None:
    if req["lock"] == "none":
        disable_filelock()
    delay = random.Random(req["seed"] * 1000 + index).uniform(0, req["offset"])
    barrier.wait()
    time.sleep(delay)
    out = consume(req["data"])
    out["index"] = index
    results.put(out)


def zygote(req: Dict[str, Any]) -> Dict[str, Any]:
    """One trial, in a process that already has the job environment: import, fork N jobs."""
    import multiprocessing as mp

    import datasets  # noqa: F401 - the jobs import before the barrier, as real jobs do
    import inspect_ai.dataset  # noqa: F401

    ctx = mp.get_context("fork")
    barrier = ctx.Barrier(req["n"])
    results = ctx.Queue()
    procs = [ctx.Process(target=_job, args=(i, req, barrier, results)) for i in range(req["n"])]
    for p in procs:
        p.start()
    got: Dict[int, Dict[str, Any]] = {}
    deadline = time.monotonic() + req["timeout"]
    while len(got) < len(procs) and time.monotonic() < deadline:
        try:
            item = results.get(timeout=1.0)
            got[item["index"]] = item
        except Exception:  # noqa: BLE001 - queue.Empty; check for dead jobs below
            if all(not p.is_alive() for p in procs) and results.empty():
                break
    jobs = []
    for i, p in enumerate(procs):
        p.join(timeout=max(0.0, deadline - time.monotonic()))
        killed = p.is_alive()
        if killed:
            p.kill()
            p.join()
        if i in got:
            jobs.append(got[i])
        elif killed:
            jobs.append({"ok": False, "rows": None, "error": "Timeout", "message": f"no result in {req['timeout']} s",
                         "missed": None, "index": i})
        elif p.exitcode is not None and p.exitcode < 0:
            jobs.append({"ok": False, "rows": None, "error": signal.Signals(-p.exitcode).name,
                         "message": "killed by a signal", "missed": None, "index": i})
        else:
            jobs.append({"ok": False, "rows": None, "error": f"exit {p.exitcode}",
                         "message": "no result", "missed": None, "index": i})
    # Is the cache now broken for every later job? One more, unhurried call (locks work).
    after = ctx.Queue()
    check = ctx.Process(target=lambda q: q.put(consume(req["data"])), args=(after,))
    check.start()
    try:
        later = after.get(timeout=req["timeout"])
    except Exception:  # noqa: BLE001
        later = {"ok": False, "rows": None, "error": "no result", "message": "", "missed": None}
    check.join()
    return {"jobs": jobs, "later": later}


# --- the driver ------------------------------------------------------------------------


def job_env(root: Path) -> Dict[str, str]:
    return {"HF_DATASETS_CACHE": str(root / "hf"), "XDG_CACHE_HOME": str(root / "xdg"),
            "HF_HOME": str(root / "hf-home"), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


def prepare(state: str, root: Path, data: Path, python: str) -> Dict[str, str]:
    """Put the trial's cache roots in `state`; return the environment the jobs export."""
    env = job_env(root)
    full = {**os.environ, **env}
    if state == "hf-only":
        code = ("import datasets; datasets.disable_progress_bars(); "
                f"datasets.load_dataset('json', data_files={str(data)!r}, field={FIELD!r}, split='train')")
        subprocess.run([python, "-c", code], env=full, check=True, capture_output=True)
    elif state == "agent":
        exp = root / "exp"
        exp.mkdir(parents=True, exist_ok=True)
        summary = exp / "experiment_summary.yaml"
        summary.write_text(json.dumps({"experiment": {"name": "race"},
                                       "evaluation": {"tasks": [{"name": "race", "dataset": str(data)}]}}))
        cli = str(Path(python).parent / "cluster-agent")
        proc = subprocess.run([cli, f"experiment={summary}", "policy=stop", "output=json"], env=full,
                              capture_output=True, text=True, stdin=subprocess.DEVNULL)
        if proc.returncode != 0:
            raise RuntimeError(f"cluster-agent exited {proc.returncode}: {proc.stderr.strip().splitlines()[-1:]}")
        manifest = json.loads((exp / ".cluster-agent" / "manifest.json").read_text())
        env = {**env, **manifest["env"]}  # exactly what a job exports
    return env


def run_trial(state: str, lock: str, trial: int, args: argparse.Namespace, data: Path, work: Path) -> Dict[str, Any]:
    root = work / f"{state}-{lock}-{trial}"
    root.mkdir(parents=True)
    try:
        env = prepare(state, root, data, args.python)
        req = {"n": args.n, "data": str(data), "lock": lock, "offset": args.offset,
               "seed": args.seed * 100003 + trial * 7 + STATES.index(state) * 3 + LOCKS.index(lock),
               "timeout": args.timeout}
        with open(root / "zygote.err", "w") as err:
            proc = subprocess.run([args.python, str(Path(__file__).resolve()), "--zygote"], input=json.dumps(req),
                                  stdout=subprocess.PIPE, stderr=err, text=True, env={**os.environ, **env},
                                  timeout=args.timeout * 3)
        if proc.returncode != 0:
            tail = (root / "zygote.err").read_text().strip().splitlines()[-1:]
            raise RuntimeError(f"trial helper exited {proc.returncode}: {tail}")
        return json.loads(proc.stdout.strip().splitlines()[-1])
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


def tally(trials: List[Dict[str, Any]], expected_rows: int) -> Dict[str, Any]:
    by_type: collections.Counter = collections.Counter()
    wrong, failed, missed, broken, jobs = 0, 0, 0, 0, 0
    wrong_counts: collections.Counter = collections.Counter()
    for t in trials:
        for j in t["jobs"]:
            jobs += 1
            if not j["ok"]:
                failed += 1
                by_type[j["error"]] += 1
            elif j["rows"] != expected_rows:
                wrong += 1
                wrong_counts[j["rows"]] += 1
            if j.get("missed"):
                missed += 1
        later = t["later"]
        if not later["ok"] or later["rows"] != expected_rows:
            broken += 1
    return {"trials": len(trials), "jobs": jobs, "failed": failed, "failures_by_type": dict(by_type.most_common()),
            "wrong_rows": wrong, "wrong_row_counts": {str(k): v for k, v in wrong_counts.items()},
            "missed_inspect_cache": missed, "left_broken": broken}


def table(results: Dict[str, Dict[str, Any]], expected_rows: int) -> str:
    lines = ["| cache before the jobs start | locks | trials | jobs | failed | failures by type | "
             f"wrong row count (expected {expected_rows:,}) | missed inspect cache | cache left broken |",
             "|---|---|---:|---:|---:|---|---:|---:|---:|"]
    names = {"cold": "cold (no pre-build)", "hf-only": "HF layer only (`load_dataset` once)",
             "agent": "**cluster-agent**"}
    order = {f"{s}/{lk}": (STATES.index(s), LOCKS.index(lk)) for s in STATES for lk in LOCKS}
    for key, r in sorted(results.items(), key=lambda kv: order[kv[0]]):
        state, lock = key.split("/")
        types = ", ".join(f"{k} {v}" for k, v in r["failures_by_type"].items()) or "-"
        wrong = f"{r['wrong_rows']}" + (f" ({', '.join(f'{v}x {int(k):,}' for k, v in r['wrong_row_counts'].items())})"
                                         if r["wrong_rows"] else "")
        lock_name = "flock" if lock == "flock" else "none (lock-less FS stand-in)"
        lines.append(f"| {names[state]} | {lock_name} | {r['trials']} | {r['jobs']} | {r['failed']} | {types} | "
                     f"{wrong} | {r['missed_inspect_cache']} | {r['left_broken']} |")
    return "\n".join(lines)


def versions() -> Dict[str, Optional[str]]:
    from importlib.metadata import PackageNotFoundError, version

    out: Dict[str, Optional[str]] = {}
    for dist in ("datasets", "inspect_ai", "pyarrow", "filelock", "cluster-agent"):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            out[dist] = None
    return out


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=16, help="jobs per trial (default 16)")
    ap.add_argument("--trials", type=int, default=10, help="trials per mode (default 10)")
    ap.add_argument("--rows", type=int, default=20_000, help="rows in the generated dataset (default 20,000)")
    ap.add_argument("--offset", type=float, default=0.5, help="jobs start at random 0..OFFSET s after the barrier")
    ap.add_argument("--states", default=",".join(STATES), help=f"comma list of {', '.join(STATES)}")
    ap.add_argument("--locks", default=",".join(LOCKS), help=f"comma list of {', '.join(LOCKS)}")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--timeout", type=float, default=600, help="seconds a trial's jobs may take")
    ap.add_argument("--work", type=Path, default=None, help="scratch folder (default: a new temp folder, removed)")
    ap.add_argument("--keep", action="store_true", help="keep each trial's caches")
    ap.add_argument("--json", type=Path, default=None, help="also write the results as JSON here")
    ap.add_argument("--python", default=sys.executable, help="interpreter of the environment under test")
    ap.add_argument("--zygote", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.zygote:
        out = zygote(json.loads(sys.stdin.read()))
        sys.stdout.write("\n" + json.dumps(out) + "\n")
        return 0

    states = [s for s in args.states.split(",") if s]
    locks = [lk for lk in args.locks.split(",") if lk]
    bad = [s for s in states if s not in STATES] + [lk for lk in locks if lk not in LOCKS]
    if bad:
        ap.error(f"unknown mode(s) {', '.join(bad)}; states: {', '.join(STATES)}; locks: {', '.join(LOCKS)}")
    own_work = args.work is None
    work = Path(tempfile.mkdtemp(prefix="race-")) if own_work else args.work
    work.mkdir(parents=True, exist_ok=True)
    started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    t0 = time.perf_counter()
    try:
        data = work / "data" / "race.json"
        make_data(data, args.rows, args.seed)
        results: Dict[str, Dict[str, Any]] = {}
        raw: Dict[str, List[Dict[str, Any]]] = {}
        for state in states:
            for lock in locks:
                key = f"{state}/{lock}"
                raw[key] = []
                for trial in range(args.trials):
                    raw[key].append(run_trial(state, lock, trial, args, data, work))
                    r = tally(raw[key][-1:], args.rows)
                    print(f"{key} trial {trial + 1}/{args.trials}: {r['failed']} failed, {r['wrong_rows']} wrong rows, "
                          f"{r['left_broken']} left broken ({time.perf_counter() - t0:.0f} s)", file=sys.stderr, flush=True)
                results[key] = tally(raw[key], args.rows)
        meta = {"date": started, "seconds": round(time.perf_counter() - t0, 1),
                "command": "python bench/race.py " + " ".join(argv if argv is not None else sys.argv[1:]),
                "n": args.n, "trials": args.trials, "rows": args.rows, "data_mb": round(data.stat().st_size / 1e6, 1),
                "offset_s": args.offset, "machine": f"{platform.node()}: {os.cpu_count()} CPUs, "
                f"{round(os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30)} GiB, {platform.platform()}",
                "python": platform.python_version(), "versions": versions()}
        print(f"Race harness, {meta['date']}: N={args.n} jobs per trial, {args.trials} trials per mode, "
              f"{args.rows:,} rows ({meta['data_mb']} MB), offsets 0-{args.offset} s, {meta['seconds']} s total\n")
        print(table(results, args.rows))
        if args.json:
            args.json.write_text(json.dumps({"meta": meta, "results": results, "trials": raw}, indent=1))
        return 0
    finally:
        if own_work and not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
