"""Time from submission to all N eval jobs RUNNING: one job array vs the 5-second stagger.

    .venv/bin/python bench/submit.py [--n 32] [--stagger 5]

Needs the real cluster (bash scripts/slurm-up.sh). Both methods submit the same rendered
eval script (recipes/eval_job.sbatch via recipes/submit.py: the gate, the manifest's
environment, then the consumer step), for an experiment whose pre-build has run:
  - array:   recipes/submit.py -> ONE `sbatch --array=0-(N-1)`, no stagger;
  - stagger: what users run today to dodge the cache race: N separate sbatch calls,
             `sleep 5` between them (each `sbatch --array=i` of the same script).
The consumer step records when it started (the gate has passed by then) and waits for a
release file, so all N must be running at once. Reported per method: seconds from the
first submission until SLURM shows every job started (scontrol StartTime, 1 s resolution)
and until every job's consumer step was running; and the ratio stagger / array.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
CLI = str(BIN / "cluster-agent")


def experiment(root: Path, n: int) -> Path:
    import yaml

    data = root / "exp" / "data"
    data.mkdir(parents=True)
    (data / "items.json").write_text(json.dumps({"test": [{"input": f"q{i}", "output": f"a{i}"} for i in range(500)]}))
    tasks = [{"name": f"task{i:02d}", "dataset": "data/items.json"} for i in range(n)]
    path = root / "exp" / "experiment_summary.yaml"
    path.write_text(yaml.safe_dump({"experiment": {"name": "bench-submit"}, "evaluation": {"tasks": tasks}}))
    return path


def start_times(job_ids: List[str]) -> Dict[str, float]:
    """{job key: StartTime epoch} for every task of these jobs that is running or done."""
    out: Dict[str, float] = {}
    for job_id in job_ids:
        proc = subprocess.run(["scontrol", "-o", "show", "job", job_id], capture_output=True, text=True)
        for line in proc.stdout.splitlines():
            f = dict(w.split("=", 1) for w in line.split() if "=" in w)
            if f.get("JobState") in ("RUNNING", "COMPLETING", "COMPLETED") and f.get("StartTime", "Unknown") != "Unknown":
                key = f"{f.get('ArrayJobId', f['JobId'])}_{f.get('ArrayTaskId', '')}"
                out[key] = time.mktime(time.strptime(f["StartTime"], "%Y-%m-%dT%H:%M:%S"))
    return out


def wait_all(started: Path, job_ids: List[str], n: int, timeout: float) -> Dict[str, float]:
    deadline = time.time() + timeout
    while True:
        stamps = {p.name: float(p.read_text() or 0) for p in started.iterdir() if p.read_text().strip()}
        if len(stamps) >= n:
            return {"consumers": stamps, "slurm": start_times(job_ids)}
        if time.time() > deadline:
            raise SystemExit(f"only {len(stamps)}/{n} jobs running after {timeout} s")
        time.sleep(0.1)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=32)
    ap.add_argument("--stagger", type=float, default=5.0, help="seconds between sbatch calls (today's practice)")
    a = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-submit-"))
    env = dict(os.environ, HF_DATASETS_CACHE=str(root / "hf"), XDG_CACHE_HOME=str(root / "xdg"))
    os.environ.update(env)
    summary = experiment(root, a.n)
    overrides = [f"experiment={summary}", f'site.slurm.setup=["source {BIN / "activate"}"]', "policy=stop"]
    subprocess.run([CLI, *overrides], check=True, env=env, capture_output=True)  # the pre-build

    results = {}
    for method in ("array", "stagger"):
        started, release = root / f"started-{method}", root / f"release-{method}"
        started.mkdir()
        command = (f"date +%s.%N > {started}/$SLURM_ARRAY_TASK_ID.tmp && mv {started}/$SLURM_ARRAY_TASK_ID.tmp "
                   f"{started}/$SLURM_ARRAY_TASK_ID; while [ ! -e {release} ]; do sleep 0.2; done")
        job_ids: List[str] = []
        t0 = time.time()
        if method == "array":
            proc = subprocess.run([sys.executable, str(REPO / "recipes" / "submit.py"), *overrides, "--json",
                                   "--job-name", "bench-array", "--command", command],
                                  capture_output=True, text=True, env=env, check=True)
            job_ids.append(json.loads(proc.stdout)["job_id"])
        else:
            proc = subprocess.run([sys.executable, str(REPO / "recipes" / "submit.py"), *overrides, "--dry-run",
                                   "--job-name", "bench-stagger", "--command", command],
                                  capture_output=True, text=True, env=env, check=True)
            script = root / "stagger.sbatch"
            script.write_text(proc.stdout)
            t0 = time.time()
            for i in range(a.n):
                if i:
                    time.sleep(a.stagger)
                out = subprocess.run(["sbatch", "--parsable", f"--array={i}", str(script)], capture_output=True,
                                     text=True, check=True, cwd=summary.parent)
                job_ids.append(out.stdout.strip().split(";")[0])
        seen = wait_all(started, job_ids, a.n, timeout=a.n * a.stagger + 300)
        release.touch()
        slurm = seen["slurm"]
        results[method] = {
            # StartTime has 1 s resolution: compare with the submission second
            "all_running_s": max(slurm.values()) - int(t0) if len(slurm) >= a.n else None,
            "all_consumers_s": round(max(seen["consumers"].values()) - t0, 2),
            "first_consumer_s": round(min(seen["consumers"].values()) - t0, 2),
            "sbatch_calls": len(job_ids),
        }
        print(f"{method:8s} {json.dumps(results[method])}", flush=True)
        time.sleep(2)
    ratio = results["stagger"]["all_consumers_s"] / results["array"]["all_consumers_s"]
    print(json.dumps({"n": a.n, "stagger_s": a.stagger, **results, "ratio_stagger_over_array": round(ratio, 1),
                      "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
