"""Two nodes on a real shared file system: the trials behind docs/robustness.md.

    python bench/sharedfs_trials.py --fs sshfs,moosefs --trials 5 --json out.json
    python bench/sharedfs_trials.py --fs sshfs --scenario rewrite --trials 1 --keep-up

Needs root: brings the rig up with scripts/sharedfs-up.sh (one file system at a time)
and down with scripts/sharedfs-down.sh. Every trial gets a fresh folder on the shared
mount (data, summary, both cache roots); commands run "on node A/B" through
scripts/sharedfs-node.sh. Scenarios (per trial: failures, wrong rows, false "ready",
false "refused"):

    cold        no cluster-agent: 8 jobs on A + 8 on B start at once on cold caches
                (reported: it shows the rig reproduces the users' failure)
    a_then_b    agent on A (datasets and inspect consumers), then the gate + 12 jobs
                on B at once (6 per consumer)
    two_agents  agents on A and B at once on one summary (2 datasets, lock auto=soft):
                each entry must be built exactly once
    rewrite     the data rewritten on B with the same size and mtime (as cp -p does),
                then at once: the gate on A and B must refuse, the agent on A must
                rebuild (not CACHE_UNCHANGED), then a job on B must read the new rows
    torn        A replaces the manifest (the agent's own atomic writer) in a loop while
                B's gate reads it: no false refusal
    kill        agent on A killed -9 while holding the entry's soft lock and B's agent
                waits on it: B takes over after lock_stale_s and builds; jobs read right
    lm_eval     (not in the default run: --scenario lm_eval,lm_eval_cold)
                consumer=lm_eval on A (bench/race_lmeval.py's project), then 12 real
                `lm_eval run --model dummy` jobs on B at once, each gated first: no
                failure, nothing created/modified/removed under the HF cache root
    lm_eval_cold  no cluster-agent: 6 real lm_eval jobs on A + 6 on B at once on a cold
                cache (reported: the lm-eval users' race on a shared file system)

`--before` runs the same scenarios with the fixes switched off where a switch exists
(CLUSTER_AGENT_SETTLE_S=0: no settled re-reads; CLUSTER_AGENT_TRUST_STAT=1: trust an
unchanged stat), to show what each fix prevents.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

REPO = Path(__file__).resolve().parent.parent
W = Path(os.environ.get("CLUSTER_AGENT_SHAREDFS_DIR", "/var/lib/cluster-agent-sharedfs"))
SHARED = W / "shared"
CLI = str(Path(sys.executable).parent / "cluster-agent")
JOB = str(REPO / "bench" / "sharedfs_job.py")
SCENARIOS = ("cold", "a_then_b", "two_agents", "rewrite", "torn", "kill")  # the default --scenario
# lm-eval's two (--scenario lm_eval,lm_eval_cold; docs/lm_eval.md) take ~3 min a trial on
# 2 cores, so they are not in the default run
ROWS_OLD, ROWS_NEW = 2000, 3000


def up(kind: str) -> float:
    t0 = time.monotonic()
    subprocess.run(["bash", str(REPO / "scripts" / "sharedfs-up.sh"), kind], check=True,
                   stdout=subprocess.DEVNULL)
    return time.monotonic() - t0


def down() -> None:
    subprocess.run(["bash", str(REPO / "scripts" / "sharedfs-down.sh")], check=False,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def on(node: str, argv: List[str], env: Optional[Dict[str, str]] = None, wait: bool = True,
       timeout: float = 600) -> Any:
    full = dict(os.environ, PYTHONPATH=str(REPO))
    full.update(env or {})
    cmd = ["bash", str(REPO / "scripts" / "sharedfs-node.sh"), node, *argv]
    if not wait:
        return subprocess.Popen(cmd, env=full, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                stdin=subprocess.DEVNULL, cwd=str(REPO))
    return subprocess.run(cmd, env=full, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL, cwd=str(REPO))


def put(node: str, path: Path, text: str, keep_mtime: bool = False) -> None:
    """Write `text` to `path` through `node`'s mount (staged in a local temporary file:
    an argv cannot carry megabytes). keep_mtime: the file keeps its size-independent
    mtime, as `cp -p` / `rsync -t` leave it."""
    import tempfile

    with tempfile.NamedTemporaryFile("w", suffix=".stage", delete=False) as fh:
        fh.write(text)
    script = ("import os,sys,shutil; src,dst,keep=sys.argv[1:4]; st=os.stat(dst) if keep=='1' else None\n"
              "with open(src,'rb') as i, open(dst,'wb') as o: shutil.copyfileobj(i,o)\n"
              "if st: os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns))")
    try:
        r = on(node, [sys.executable, "-c", script, fh.name, str(path), "1" if keep_mtime else "0"])
        assert r.returncode == 0, r.stderr
    finally:
        os.unlink(fh.name)


def records(n: int, width: int, size: Optional[int] = None) -> str:
    """A .json data file of n rows; padded with spaces to `size` bytes if given."""
    rng = random.Random(n)
    doc = {"train": [{"input": "t", "output": "t"}],
           "test": [{"input": f"{i} " + "".join(rng.choice("abcdefgh") for _ in range(width)), "output": "x"}
                    for i in range(n)]}
    text = json.dumps(doc)
    if size is not None:
        assert len(text) <= size, (len(text), size)
        text += " " * (size - len(text))
    return text


class Trial:
    """A fresh folder on the shared mount: data, summaries (one per consumer), caches."""

    def __init__(self, scenario: str, index: int, datasets: int = 1) -> None:
        self.root = SHARED / f"{scenario}-{index}-{os.getpid()}"
        self.env = {"HF_DATASETS_CACHE": str(self.root / "hf"), "HF_HOME": str(self.root / "hf-home"),
                    "XDG_CACHE_HOME": str(self.root / "xdg"), "HF_HUB_OFFLINE": "1",
                    "HF_DATASETS_OFFLINE": "1"}
        self.data = [self.root / f"data{i}.json" for i in range(datasets)]
        self.go = f"/tmp/sharedfs-go-{scenario}-{index}-{os.getpid()}-{time.time_ns()}"
        # written through node A's mount
        on("A", ["mkdir", "-p", str(self.root / "datasets"), str(self.root / "inspect")])
        for p in self.data:
            put("A", p, records(ROWS_OLD, 40))
        tasks = [{"name": f"t{i}", "dataset": f"../{p.name}", "field": "test"} for i, p in enumerate(self.data)]
        import yaml

        for consumer in ("datasets", "inspect"):
            doc = {"experiment": {"name": consumer}, "evaluation": {"tasks": tasks}}
            put("A", self.summary(consumer), yaml.safe_dump(doc))

    def summary(self, consumer: str) -> Path:
        return self.root / consumer / "experiment_summary.yaml"

    def manifest(self, consumer: str) -> Path:
        return self.root / consumer / ".cluster-agent" / "manifest.json"

    def agent(self, node: str, consumer: str, *extra: str, wait: bool = True, env: Optional[Dict[str, str]] = None):
        args = [CLI, f"experiment={self.summary(consumer)}", f"consumer={consumer}", "policy=stop",
                "verify=false", "output=json", *extra]
        return on(node, args, dict(self.env, **(env or {})), wait=wait)

    def jobs(self, node: str, consumer: str, n: int, gate: bool = True, env: Optional[Dict[str, str]] = None):
        """A job batch on `node` (one importer forking n jobs); released by collect()."""
        data = ",".join(str(p) for p in self.data)
        argv = [sys.executable, JOB, str(n), self.go, data, consumer] + ([str(self.manifest(consumer))] if gate else [])
        proc = on(node, argv, dict(self.env, **(env or {})), wait=False)
        proc.go = self.go
        return proc


def go(procs, timeout: float = 600) -> None:
    """Once every batch has imported and forked: release all their jobs at once."""
    go_file = Path(procs[0].go)
    deadline = time.time() + timeout
    while len(list(go_file.parent.glob(go_file.name + ".ready.*"))) < len(procs):
        if any(p.poll() is not None for p in procs) or time.time() > deadline:
            break
        time.sleep(0.05)
    go_file.touch()


def collect(procs) -> List[Dict[str, Any]]:
    """Release the batches, then one record per job."""
    go(procs)
    out = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=900)
        lines = [ln for ln in stdout.splitlines() if ln.startswith("{")]
        out += [json.loads(ln) for ln in lines]
        if not lines:
            out.append({"gate": None, "rows": None, "error": f"batch crashed: {stderr.strip()[-200:]}"})
    go_file = Path(procs[0].go)
    for f in go_file.parent.glob(go_file.name + "*"):
        f.unlink()
    return out


def statuses(proc) -> List[str]:
    try:
        return [e["status"] for e in json.loads(proc.stdout)["entries"]]
    except (ValueError, KeyError, TypeError):
        return ["error:" + proc.stderr.strip().splitlines()[-1][:200] if proc.stderr.strip() else "error"]


def tally(jobs: List[Dict[str, Any]], expect: int) -> Dict[str, int]:
    return {"jobs": len(jobs),
            "failures": sum(1 for j in jobs if j["error"] or j["gate"] == "refused"),
            "wrong_rows": sum(1 for j in jobs if j["rows"] is not None and j["rows"] != expect),
            "false_refused": sum(1 for j in jobs if j["gate"] == "refused")}


# --- scenarios ---------------------------------------------------------------------------


def sc_cold(i: int, env: Dict[str, str]) -> Dict[str, Any]:
    t = Trial("cold", i)
    procs = [t.jobs("A", "inspect", 8, gate=False, env=env), t.jobs("B", "inspect", 8, gate=False, env=env)]
    jobs = collect(procs)
    res = tally(jobs, ROWS_OLD)
    res["errors"] = sorted({j["error"].split(":")[0] for j in jobs if j["error"]})
    return res


def sc_a_then_b(i: int, env: Dict[str, str]) -> Dict[str, Any]:
    t = Trial("athenb", i)
    res: Dict[str, Any] = {"failures": 0, "wrong_rows": 0, "false_refused": 0, "false_ready": 0, "jobs": 0}
    for consumer in ("datasets", "inspect"):
        a = t.agent("A", consumer, env=env)
        if a.returncode != 0:
            res["failures"] += 1
            res.setdefault("agent_errors", []).append(statuses(a))
    procs = [t.jobs("B", "datasets", 6, env=env), t.jobs("B", "inspect", 6, env=env)]
    for k, v in tally(collect(procs), ROWS_OLD).items():
        res[k] += v
    return res


def sc_two_agents(i: int, env: Dict[str, str]) -> Dict[str, Any]:
    t = Trial("two", i, datasets=2)
    pa = t.agent("A", "datasets", wait=False, env=env)
    pb = t.agent("B", "datasets", wait=False, env=env)
    outs = []
    for p in (pa, pb):
        stdout, stderr = p.communicate(timeout=900)
        outs.append(subprocess.CompletedProcess(p.args, p.returncode, stdout, stderr))
    built = sum(s in ("built", "rebuilt") for o in outs for s in statuses(o))
    res = {"failures": sum(o.returncode != 0 for o in outs), "built": built, "built_twice": max(0, built - 2)}
    jobs = collect([t.jobs("A", "datasets", 2, env=env), t.jobs("B", "datasets", 2, env=env)])
    res.update({k: v for k, v in tally(jobs, ROWS_OLD).items() if k != "jobs"})
    res["failures"] += tally(jobs, ROWS_OLD)["failures"]
    return res


def _gate(t: Trial, node: str, env: Dict[str, str]) -> bool:
    r = on(node, [CLI, "action=check", f"experiment={t.summary('datasets')}"], dict(t.env, **env))
    return r.returncode == 0


def sc_rewrite(i: int, env: Dict[str, str]) -> Dict[str, Any]:
    t = Trial("rewrite", i)
    first = t.agent("A", "datasets", env=env)
    assert first.returncode == 0, first.stderr[-500:]
    path = t.data[0]
    size = len(records(ROWS_OLD, 40))
    new = records(ROWS_NEW, 10, size)  # same size, more rows
    # B rewrites it in place keeping size and mtime (what cp -p / rsync -t leave behind)
    put("B", path, new, keep_mtime=True)
    res = {"failures": 0, "wrong_rows": 0, "false_refused": 0, "false_ready": 0}
    res["false_ready"] += _gate(t, "A", env) + _gate(t, "B", env)  # both must refuse now
    again = t.agent("A", "datasets", env=env)
    st = statuses(again)
    res["agent_status"] = st
    if again.returncode != 0:
        res["failures"] += 1
    if "unchanged" in st:
        res["false_ready"] += 1
    res["false_refused"] += (not _gate(t, "A", env)) + (not _gate(t, "B", env))
    for k, v in tally(collect([t.jobs("B", "datasets", 2, env=env)]), ROWS_NEW).items():
        if k in res:
            res[k] += v
    return res


def sc_torn(i: int, env: Dict[str, str], seconds: float = 10.0) -> Dict[str, Any]:
    t = Trial("torn", i)
    first = t.agent("A", "datasets", env=env)
    assert first.returncode == 0, first.stderr[-500:]
    m = t.manifest("datasets")
    writer = (f"import json,time,pathlib; from agent import manifest as M; p=pathlib.Path({str(m)!r}); "
              f"doc=json.loads(p.read_text()); end=time.time()+{seconds + 2}; n=0\n"
              "while time.time()<end:\n n+=1; doc['note']='x'*(n%7*97); M.write_atomic(p, doc); time.sleep(0.05)\n"
              "print(n)")
    reader = (f"import json,time; from pathlib import Path; from agent.gate import check; end=time.time()+{seconds}; r=[]\n"
              f"time.sleep(1)\nwhile time.time()<end:\n x=check(Path({str(m)!r})); r.append(x['problems'][:1])\n"
              "print(json.dumps(r))")
    pw = on("A", [sys.executable, "-c", writer], dict(t.env, **env), wait=False)
    pr = on("B", [sys.executable, "-c", reader], dict(t.env, **env), wait=False)
    out, err = pr.communicate(timeout=120)
    pw.communicate(timeout=120)
    try:
        checks = json.loads(out.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return {"failures": 1, "error": err[-300:]}
    refused = [c[0] for c in checks if c]
    return {"failures": 0, "checks": len(checks), "false_refused": len(refused),
            "refusals": sorted({r[:90] for r in refused})[:3]}


def _held(t: Trial) -> bool:
    """Is some generation of the entry's soft lock held (not released), seen from A?"""
    locks = t.root / "hf" / ".cluster-agent" / "locks"
    code = (f"import glob,json; fs=sorted(glob.glob({str(locks)!r}+'/*.g*.lock'))\n"
            "try: print(bool(fs) and not json.load(open(fs[-1])).get('released'))\n"
            "except Exception: print(False)")
    return on("A", [sys.executable, "-c", code]).stdout.strip() == "True"


def sc_kill(i: int, env: Dict[str, str]) -> Dict[str, Any]:
    t = Trial("kill", i)
    # a bigger file, so that A is killed while it holds the entry's lock (building)
    big = records(150000, 60)
    put("A", t.data[0], big)
    stale = ["site.lock_stale_s=8", "site.lock_timeout_s=300"]
    pa = t.agent("A", "datasets", *stale, wait=False, env=env)
    deadline = time.time() + 180
    while not _held(t) and time.time() < deadline and pa.poll() is None:
        time.sleep(0.1)
    pb = t.agent("B", "datasets", *stale, wait=False, env=env)
    time.sleep(0.5)
    os.kill(pa.pid, signal.SIGKILL)  # sharedfs-node.sh execs nsenter, which execs the agent
    pa.wait()
    res: Dict[str, Any] = {"a_killed": pa.returncode == -signal.SIGKILL, "held_at_kill": _held(t)}
    t0 = time.monotonic()
    out, err = pb.communicate(timeout=600)
    b = subprocess.CompletedProcess(pb.args, pb.returncode, out, err)
    res.update(failures=int(b.returncode != 0), b_status=statuses(b), b_seconds=round(time.monotonic() - t0, 1))
    # A's build worker must die with A (it held the lock and A's stdout)
    code = f"import os,sys; print(sum(1 for p in os.listdir('/proc') if p.isdigit() and int(p) != os.getpid() and {str(t.summary('datasets'))!r}.encode() in open('/proc/'+p+'/cmdline','rb').read()))"
    res["orphans_on_a"] = int(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout or 0)
    pa.stdout.close()
    pa.stderr.close()
    rows = len(json.loads(big)["test"])
    tl = tally(collect([t.jobs("B", "datasets", 2, env=env), t.jobs("A", "datasets", 1, env=env)]), rows)
    res["failures"] += tl["failures"] + res["orphans_on_a"]
    res.update(wrong_rows=tl["wrong_rows"], false_refused=tl["false_refused"])
    return res


def sc_lm_eval(i: int, env: Dict[str, str], n: int = 12, rows: int = 300) -> Dict[str, Any]:
    """consumer=lm_eval: bench/race_lmeval.py's project (four lm-eval tasks under an
    include_path, local jsonl/csv/parquet files, two tasks sharing one file) on the shared
    mount. `cluster-agent consumer=lm_eval` pre-builds it on A (lm-eval's own task manager
    resolves the calls; its own loading verifies them); then n real `lm_eval run --model
    dummy` processes start at once on B, each gated first and run in the gate's exported
    environment, as recipes/eval_job.sbatch does."""
    sys.path.insert(0, str(REPO / "bench"))
    import race_lmeval as R

    root = SHARED / f"lmeval-{i}-{os.getpid()}"
    hf = root / "hf"
    bench_path = {"PYTHONPATH": f"{REPO}{os.pathsep}{REPO / 'bench'}"}
    made = on("A", [sys.executable, "-c", "import sys, race_lmeval as R; from pathlib import Path; "
                    "print(R.write_summary(R.make_project(Path(sys.argv[1]), rows=int(sys.argv[2]))))",
                    str(root / "project"), str(rows)], bench_path)
    assert made.returncode == 0, made.stderr[-500:]
    summary = made.stdout.strip().splitlines()[-1]
    agent_env = {"HF_DATASETS_CACHE": str(hf), "HF_HOME": str(root / "hf-home-A"), "HF_HUB_OFFLINE": "1",
                 "HF_DATASETS_OFFLINE": "1", **env}
    a = on("A", [CLI, "consumer=lm_eval", f"experiment={summary}", "policy=stop", "output=json"], agent_env)
    res: Dict[str, Any] = {"agent_status": statuses(a), "failures": int(a.returncode != 0)}
    if a.returncode != 0:
        res["agent_error"] = a.stderr.strip().splitlines()[-1:] if a.stderr.strip() else []
        return res
    manifest = json.loads(a.stdout)["manifest"]
    snapshot = ("import json, sys, race_lmeval as R; from pathlib import Path; "
                "print(json.dumps(R.cache_state(Path(sys.argv[1]))))")

    def state() -> Dict[str, int]:
        r = on("B", [sys.executable, "-c", snapshot, str(hf)], bench_path)
        assert r.returncode == 0, r.stderr[-500:]
        return json.loads(r.stdout)

    # The jobs' own environment names no HF cache: the gate's `export` lines must point them
    # at the pre-built root (else they would build under their HF_HOME, and say "Generating").
    # The 12 jobs share node B here, where flock works between them; on a cluster each runs
    # on its own node, where it does not: tests/lockless makes filelock's locks no-ops in
    # the jobs, a stand-in for those other nodes.
    job_env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "XDG_CACHE"))}
    job_env.update({"HF_HOME": str(root / "hf-home-B"), "PYTHONPATH": str(R.LOCKLESS), "PYTHONUNBUFFERED": "1", **env})
    before = state()
    probe = subprocess.run(["bash", str(REPO / "scripts" / "sharedfs-node.sh"), "B", sys.executable, "-c",
                            "import filelock; print(getattr(filelock, 'CLUSTER_AGENT_TEST_LOCKLESS', False))"],
                           capture_output=True, text=True, env=job_env, cwd="/tmp")
    res["lockless_active"] = probe.stdout.strip() == "True"
    res["cache_paths"] = len(before)  # what the pre-build left there (the snapshot is not empty)
    names = [R.TASKS[k % len(R.TASKS)] for k in range(n)]
    t0 = time.monotonic()
    jobs = R.run_jobs(str(Path(sys.executable).parent / "lm_eval"), names, root / "project" / "tasks", job_env,
                      Path("/tmp"), timeout=1800, prefix=["bash", str(REPO / "scripts" / "sharedfs-node.sh"), "B"],
                      gate=(CLI, manifest))
    res["jobs_s"] = round(time.monotonic() - t0, 1)
    written = R.changes(before, state())
    res.update(jobs=len(jobs), failures=res["failures"] + sum(not j["ok"] for j in jobs),
               false_refused=sum(j["gate"] == "refused" for j in jobs), gated=sum(j["gate"] == "ok" for j in jobs),
               built_itself=sum(j["built_itself"] for j in jobs), written=written[:10], written_n=len(written),
               errors=sorted({f"{j['task']}: {j['error']}" for j in jobs if not j["ok"]})[:5])
    return res


def sc_lm_eval_cold(i: int, env: Dict[str, str], n: int = 12, rows: int = 2000) -> Dict[str, Any]:
    """No cluster-agent: n/2 real `lm_eval run --model dummy` jobs on A and n/2 on B start
    at once on a cold HF cache on the shared mount (no stand-in: flock holds within a node
    and not across the two). Reported, not asserted: what the users' race looks like."""
    from concurrent.futures import ThreadPoolExecutor

    sys.path.insert(0, str(REPO / "bench"))
    import race_lmeval as R

    root = SHARED / f"lmeval-cold-{i}-{os.getpid()}"
    made = on("A", [sys.executable, "-c", "import sys, race_lmeval as R; from pathlib import Path; "
                    "R.make_project(Path(sys.argv[1]), rows=int(sys.argv[2]))", str(root / "project"), str(rows)],
              {"PYTHONPATH": f"{REPO}{os.pathsep}{REPO / 'bench'}"})
    assert made.returncode == 0, made.stderr[-500:]
    job_env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "XDG_CACHE", "PYTHONPATH"))}
    job_env.update({"HF_DATASETS_CACHE": str(root / "hf"), "HF_HOME": str(root / "hf-home"), "HF_HUB_OFFLINE": "1",
                    "HF_DATASETS_OFFLINE": "1", "PYTHONUNBUFFERED": "1", **env})
    lm_eval = str(Path(sys.executable).parent / "lm_eval")
    half = [R.TASKS[k % len(R.TASKS)] for k in range(n // 2)]
    t0 = time.monotonic()
    with ThreadPoolExecutor(2) as pool:
        runs = [pool.submit(R.run_jobs, lm_eval, half, root / "project" / "tasks", job_env, Path("/tmp"), 1800,
                            ["bash", str(REPO / "scripts" / "sharedfs-node.sh"), node]) for node in ("A", "B")]
        jobs = [j for r in runs for j in r.result()]
    by_type: Dict[str, int] = {}
    for j in jobs:
        if not j["ok"]:
            by_type[j["error_type"]] = by_type.get(j["error_type"], 0) + 1
    return {"jobs": len(jobs), "failures": sum(not j["ok"] for j in jobs), "failures_by_type": by_type,
            "built_itself": sum(j["built_itself"] for j in jobs), "jobs_s": round(time.monotonic() - t0, 1),
            "errors": sorted({j["error"] for j in jobs if not j["ok"]})[:3]}


FUNCS = {"cold": sc_cold, "a_then_b": sc_a_then_b, "two_agents": sc_two_agents, "rewrite": sc_rewrite,
         "torn": sc_torn, "kill": sc_kill, "lm_eval": sc_lm_eval,
         "lm_eval_cold": sc_lm_eval_cold}


def facts(kind: str) -> Dict[str, Any]:
    """What the rig does that NFS-like file systems do (measured, not assumed)."""
    s = str(SHARED / f"facts-{os.getpid()}")
    probe = (
        "import os,sys,time,errno,fcntl,json\n"
        f"S={s!r}; op=sys.argv[1]; r={{}}\n"
        "if op=='mk': os.makedirs(S, exist_ok=True); open(S+'/a','w').write('1')\n"
        "if op=='look':\n"
        " r['listed_before']='n' in os.listdir(S)\n"
        " for name in ('n', 'd', 'm'):\n"
        "  try: os.stat(S+'/'+name)\n"
        "  except OSError: r['neg']=1\n"
        "if op=='new': open(S+'/n','w').write('x'*10)\n"
        "if op=='new2': os.mkdir(S+'/d'); open(S+'/m','w').write('y')\n"
        "if op=='poll':\n"
        " t=time.time()\n"
        " while 'n' not in os.listdir(S) and time.time()-t<40: time.sleep(0.25)\n"
        " r['listing_s']=round(time.time()-t,2)\n"
        "if op=='poll2':\n"
        " try: os.makedirs(S+'/d', exist_ok=True); r['makedirs']='ok'\n"
        " except OSError as e: r['makedirs']=errno.errorcode[e.errno]\n"
        " try: os.close(os.open(S+'/m', os.O_CREAT|os.O_EXCL|os.O_WRONLY)); r['excl']='created'\n"
        " except OSError as e: r['excl']=errno.errorcode[e.errno]\n"
        " open(S+'/t','w').close()\n"
        " try: os.link(S+'/t', S+'/a'); r['link']='linked'\n"
        " except OSError as e: r['link']=errno.errorcode[e.errno]\n"
        " os.link(S+'/t', S+'/t2'); r['nlink_after_link']=os.stat(S+'/t').st_nlink\n"
        " st=os.stat(S+'/a'); r['mtime_ns_mod_1e9']=st.st_mtime_ns % 10**9; r['ctime_eq_mtime']=st.st_ctime_ns==st.st_mtime_ns\n"
        "if op=='flock':\n"
        " fd=os.open(S+'/f', os.O_CREAT|os.O_RDWR)\n"
        " try: fcntl.flock(fd, fcntl.LOCK_EX|fcntl.LOCK_NB); r['flock']='got it'\n"
        " except OSError: r['flock']='blocked'\n"
        " time.sleep(float(sys.argv[2]))\n"
        "if op=='grow': open(S+'/a','w').write('22222')\n"
        "if op=='size':\n"
        " t=time.time(); r['size_first']=os.stat(S+'/a').st_size; r['read_first']=len(open(S+'/a').read())\n"
        " while os.stat(S+'/a').st_size!=5 and time.time()-t<40: time.sleep(0.1)\n"
        " r['size_s']=round(time.time()-t,2)\n"
        "print(json.dumps(r))\n")

    def run(node: str, *args: str) -> Dict[str, Any]:
        p = on(node, [sys.executable, "-c", probe, *args])
        return json.loads(p.stdout.strip().splitlines()[-1]) if p.stdout.strip() else {"error": p.stderr[-200:]}

    out: Dict[str, Any] = {}
    run("A", "mk")
    run("B", "look")
    run("B", "size")  # B caches a's attributes
    run("A", "new")
    out.update(run("B", "poll"))
    run("B", "look")
    run("A", "new2")
    out.update(run("B", "poll2"))
    holder = on("A", [sys.executable, "-c", probe, "flock", "3"], wait=False)
    time.sleep(1.0)
    out["flock_other_node"] = run("B", "flock", "0").get("flock")
    holder.communicate()
    run("B", "size")
    run("A", "grow")
    out.update(run("B", "size"))
    m = on("A", ["sh", "-c", f"grep ' {SHARED} ' /proc/self/mountinfo"])
    out["mountinfo_type"] = m.stdout.split(" - ")[1].split()[0] if " - " in m.stdout else None
    return out


def cost(kind: str, rows: int = 200000) -> Dict[str, Any]:
    """What hashing instead of trusting a stat costs an unchanged re-run and the gate:
    median of 3 runs each, with the old rule (CLUSTER_AGENT_TRUST_STAT=1) and the new one,
    on the rig's node A and on local disk (where both rules trust the stat)."""
    import statistics
    import tempfile

    t = Trial("cost", 0)
    put("A", t.data[0], records(rows, 40))
    size = len(records(rows, 40))
    first = t.agent("A", "datasets")
    assert first.returncode == 0, first.stderr[-400:]
    local = Path(tempfile.mkdtemp(prefix="sharedfs-cost-"))
    lsum = local / "datasets" / "experiment_summary.yaml"
    lsum.parent.mkdir(parents=True)
    (local / "data0.json").write_text(records(rows, 40))
    lsum.write_text(on("A", ["cat", str(t.summary("datasets"))]).stdout)
    lenv = {k: v.replace(str(t.root), str(local)) for k, v in t.env.items()}
    base = [CLI, "consumer=datasets", "policy=stop", "verify=false"]
    subprocess.run(base + [f"experiment={lsum}"], env=dict(os.environ, **lenv), capture_output=True, check=True)

    def timed(node: Optional[str], argv: List[str], env: Dict[str, str]) -> float:
        out = []
        for _ in range(3):
            t0 = time.monotonic()
            if node:
                r = on(node, argv, env)
            else:
                r = subprocess.run(argv, env=dict(os.environ, **env), capture_output=True)
            assert r.returncode == 0, r.stderr[-300:]
            out.append(time.monotonic() - t0)
        return round(statistics.median(out), 2)

    res: Dict[str, Any] = {"file_mb": round(size / 1e6, 1)}
    for rule, extra in (("trust_stat", {"CLUSTER_AGENT_TRUST_STAT": "1"}), ("hash", {})):
        res[f"rig_rerun_{rule}_s"] = timed("A", base + [f"experiment={t.summary('datasets')}"], dict(t.env, **extra))
        res[f"rig_gate_{rule}_s"] = timed("B", [CLI, "action=check", f"experiment={t.summary('datasets')}"],
                                          dict(t.env, **extra))
        res[f"local_rerun_{rule}_s"] = timed(None, base + [f"experiment={lsum}"], dict(lenv, **extra))
        res[f"local_gate_{rule}_s"] = timed(None, [CLI, "action=check", f"experiment={lsum}"], dict(lenv, **extra))
    import shutil

    shutil.rmtree(local, ignore_errors=True)
    return res


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--fs", default="sshfs,moosefs")
    ap.add_argument("--scenario", default=",".join(SCENARIOS))
    ap.add_argument("--trials", type=int, default=5)
    ap.add_argument("--before", action="store_true", help="fixes off where a switch exists")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--keep-up", action="store_true")
    ap.add_argument("--no-facts", action="store_true")
    ap.add_argument("--cost", action="store_true", help="also measure what hashing costs a re-run")
    args = ap.parse_args(argv)
    env = {"CLUSTER_AGENT_SETTLE_S": "0", "CLUSTER_AGENT_TRUST_STAT": "1"} if args.before else {}
    report: Dict[str, Any] = {"before": args.before, "trials": args.trials, "fs": {}}
    for kind in args.fs.split(","):
        rec: Dict[str, Any] = {"up_s": round(up(kind), 1), "scenarios": {}}
        try:
            if not args.no_facts:
                rec["facts"] = facts(kind)
                print(json.dumps({"fs": kind, "facts": rec["facts"]}), flush=True)
            if args.cost:
                rec["cost"] = cost(kind)
                print(json.dumps({"fs": kind, "cost": rec["cost"]}), flush=True)
            for name in [n for n in args.scenario.split(",") if n in FUNCS]:
                rows = []
                for i in range(args.trials):
                    t0 = time.monotonic()
                    try:
                        r = FUNCS[name](i, env)
                    except Exception as exc:  # noqa: BLE001 - a broken trial is a result too
                        r = {"failures": 1, "error": f"{type(exc).__name__}: {str(exc)[:300]}"}
                    r["seconds"] = round(time.monotonic() - t0, 1)
                    rows.append(r)
                    print(json.dumps({"fs": kind, "scenario": name, "trial": i, **r}), flush=True)
                rec["scenarios"][name] = rows
        finally:
            t0 = time.monotonic()
            if not args.keep_up:
                down()
            rec["down_s"] = round(time.monotonic() - t0, 1)
        report["fs"][kind] = rec
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    print(table(report))
    return 0


def table(report: Dict[str, Any]) -> str:
    keys = ("failures", "wrong_rows", "false_ready", "false_refused")
    lines = ["| FS | scenario | trials | " + " | ".join(keys) + " | s/trial |", "|---" * (len(keys) + 4) + "|"]
    for kind, rec in report["fs"].items():
        for name, rows in rec["scenarios"].items():
            sums = [sum(int(r.get(k, 0) or 0) for r in rows) for k in keys]
            secs = sum(r.get("seconds", 0) for r in rows) / max(1, len(rows))
            lines.append(f"| {kind} | {name} | {len(rows)} | " + " | ".join(map(str, sums)) + f" | {secs:.0f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
