"""Race harness for lm-evaluation-harness jobs: N real `lm_eval` processes start together.

    python bench/race_lmeval.py                         # N=16, 3 trials per state, lock-less
    python bench/race_lmeval.py --n 12 --trials 1 --json out.json   # the CI-sized run

Each trial writes a small lm-eval project into a fresh folder (local data files and the
user's own task YAMLs under an include_path, see make_project) and fresh cache roots,
puts the HF datasets cache in one state:

    cold      nothing built (what happens without any pre-build)
    agent     pre-built by `cluster-agent consumer=lm_eval` on the project's summary
              (lm-eval's own task manager resolves the tasks; each exact load_dataset call
              is built and proved by lm-eval's own loading in a fresh process)

then starts N processes at once, each the real CLI a job script runs:

    lm_eval run --model dummy --tasks NAME --include_path TASKS

with the job environment (HF_DATASETS_CACHE, HF_HUB_OFFLINE=1, HF_DATASETS_OFFLINE=1).
`--model dummy` is lm-eval's own test model (lm_eval/models/dummy.py: random
log-likelihoods, no weights, no network); the task names cycle over the project's four
tasks, two of which share one data file (one call, one cache folder).

Lock modes: `none` (default) puts tests/lockless on PYTHONPATH: its sitecustomize makes
filelock's locks no-ops in every job, a stand-in for NFS / GPFS / Lustre mounts whose
flock does not hold across nodes (we cannot mount one here); `flock` leaves them working.

Per job: exit code, the last line of stderr when it failed, and whether it printed
"Generating ... split" (it missed the cache and built the dataset itself). Per trial:
every file and folder under the cache root that the jobs created, modified or removed.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

REPO = Path(__file__).resolve().parent.parent
LOCKLESS = REPO / "tests" / "lockless"
_EXC = re.compile(r"^([A-Za-z_][\w.]*(?:Error|Exception|Interrupt|Exit)):?( |$)")
TASKS = ("qa_easy", "qa_hard", "facts_csv", "facts_parquet")

_TEMPLATE = """\
# shared by qa_easy and qa_hard through `include:` (one load_dataset call for both)
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}/qa.jsonl
test_split: test
output_type: multiple_choice
doc_to_choice: "{{{{choices}}}}"
doc_to_target: answer
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
"""

_TASKS = {
    "qa_easy.yaml": "include: _qa_template_yaml\ntask: qa_easy\ndoc_to_text: \"{{question}}\"\n",
    "qa_hard.yaml": "include: _qa_template_yaml\ntask: qa_hard\ndoc_to_text: \"Question: {{question}}\\nAnswer:\"\n",
    "facts_csv.yaml": (
        "task: facts_csv\ndataset_path: csv\ndataset_kwargs:\n  data_files:\n    test: {data}/facts.csv\n"
        "test_split: test\noutput_type: multiple_choice\ndoc_to_text: \"{{{{fact}}}} is\"\n"
        "doc_to_choice: [\"false\", \"true\"]\ndoc_to_target: label\n"
        "metric_list:\n  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n"),
    # data_files as a plain string: datasets names the split "train"
    "facts_parquet.yaml": (
        "task: facts_parquet\ndataset_path: parquet\ndataset_kwargs:\n  data_files: {data}/facts.parquet\n"
        "test_split: train\noutput_type: multiple_choice\ndoc_to_text: \"{{{{fact}}}} is\"\n"
        "doc_to_choice: [\"false\", \"true\"]\ndoc_to_target: label\n"
        "metric_list:\n  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n"),
    "qa_suite.yaml": "group: qa_suite\ntask:\n  - qa_easy\n  - qa_hard\n  - facts_csv\n  - facts_parquet\n",
}


def make_project(folder: Path, rows: int = 200, seed: int = 0) -> Dict[str, Path]:
    """Data files (jsonl, csv, parquet) and the user's task YAMLs; returns their folders."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = random.Random(seed)
    data, tasks = folder / "data", folder / "tasks"
    data.mkdir(parents=True, exist_ok=True)
    tasks.mkdir(parents=True, exist_ok=True)
    with open(data / "qa.jsonl", "w") as f:
        for i in range(rows):
            f.write(json.dumps({"question": f"What is {i} plus {rng.randint(0, 9)}?",
                                "choices": [str(i), str(i + 1), str(i + 2)], "answer": rng.randint(0, 2)}) + "\n")
    facts = [{"fact": f"fact number {i}", "label": rng.randint(0, 1)} for i in range(rows + 7)]
    with open(data / "facts.csv", "w") as f:
        f.write("fact,label\n" + "".join(f"{r['fact']},{r['label']}\n" for r in facts))
    pq.write_table(pa.Table.from_pylist(facts[: rows + 3]), data / "facts.parquet")
    (tasks / "_qa_template_yaml").write_text(_TEMPLATE.format(data=data))
    for name, text in _TASKS.items():
        (tasks / name).write_text(text.format(data=data))
    return {"data": data, "tasks": tasks}


def cache_state(root: Path) -> Dict[str, int]:
    """Every file and folder under the cache root with its mtime (lock files excluded:
    they hold no data and their mtime moves on every acquisition)."""
    out: Dict[str, int] = {}
    if root.exists():
        for p in root.rglob("*"):
            if not p.name.endswith(".lock"):
                out[str(p) + ("/" if p.is_dir() else "")] = p.stat().st_mtime_ns
    return out


def changes(before: Dict[str, int], after: Dict[str, int]) -> List[str]:
    created = sorted(p for p in after if p not in before)
    modified = sorted(p for p in after if p in before and before[p] != after[p])
    removed = sorted(p for p in before if p not in after)
    return created + modified + [f"{p} (removed)" for p in removed]


def job_env(hf: Path, lock: str) -> Dict[str, str]:
    env = dict(os.environ)
    env.update({"HF_DATASETS_CACHE": str(hf), "HF_HOME": str(hf.parent / "hf-home"), "HF_HUB_OFFLINE": "1",
                "HF_DATASETS_OFFLINE": "1", "PYTHONUNBUFFERED": "1"})
    env.pop("PYTHONPATH", None)
    if lock == "none":
        env["PYTHONPATH"] = str(LOCKLESS)
    return env


def write_summary(project: Dict[str, Path]) -> Path:
    """The experiment summary naming the project's lm-eval tasks (consumer=lm_eval)."""
    path = project["tasks"].parent / "experiment_summary.yaml"
    path.write_text("experiment: {name: lmrace}\nevaluation:\n  include_path: tasks\n  tasks:\n"
                    + "".join(f"    - {{name: {t}, lm_eval_task: {t}}}\n" for t in TASKS))
    return path


def prebuild(python: str, project: Dict[str, Path], hf: Path) -> List[Dict[str, Any]]:
    """The real pre-build: `cluster-agent consumer=lm_eval` on the project's summary
    (lm-eval's own task manager resolves the tasks; each exact call is built, then proved
    by lm-eval's own loading in a fresh process). Returns the manifest's entries."""
    env = job_env(hf, "flock")
    summary = write_summary(project)
    agent = str(Path(python).parent / "cluster-agent")
    built = subprocess.run([agent, "consumer=lm_eval", f"experiment={summary}", f"site.hf_cache={hf}",
                            "output=json"], capture_output=True, text=True, env=env, timeout=900, stdin=subprocess.DEVNULL)
    if built.returncode != 0:
        raise SystemExit(f"cluster-agent failed (exit {built.returncode}): {built.stderr.strip().splitlines()[-1:]}")
    manifest = json.loads(built.stdout.strip().splitlines()[-1])["manifest"]
    return json.loads(Path(manifest).read_text())["entries"]


# the recipe's first two steps (recipes/eval_job.sbatch): the gate narrowed to the job's task,
# then its `export` lines, before lm_eval starts; "$@" is then the lm_eval command
GATED = ('env_lines=$("$1" action=check manifest="$2" task="$3" consumer=lm_eval output=shell) || exit $?; '
         'eval "$env_lines"; shift 3; exec "$@"')


def run_jobs(lm_eval: str, names: List[str], include: Path, env: Dict[str, str], cwd: Path,
             timeout: float, prefix: Sequence[str] = (), gate: Optional[Tuple[str, str]] = None) -> List[Dict[str, Any]]:
    """Start one real `lm_eval run --model dummy` per name at once. `prefix`: a command the
    jobs run under (e.g. scripts/sharedfs-node.sh B: on a node of the shared-FS rig).
    `gate=(cluster-agent, manifest)`: each job runs the launch gate for its task first and
    exports the manifest's environment, as the recipe's jobs do (the summary's task names
    are the lm-eval task names here)."""
    def argv(name: str) -> List[str]:
        cmd = [lm_eval, "run", "--model", "dummy", "--tasks", name, "--include_path", str(include)]
        if gate:
            cmd = ["bash", "-c", GATED, "job", gate[0], gate[1], name, *cmd]
        return [*prefix, *cmd]

    procs = [subprocess.Popen(argv(name), stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                              text=True, env=env, cwd=cwd) for name in names]
    deadline = time.monotonic() + timeout
    out = []
    for name, proc in zip(names, procs):
        try:
            stdout, stderr = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
            rc = proc.returncode
        except subprocess.TimeoutExpired:
            proc.kill()
            stdout, stderr = proc.communicate()
            rc = "timeout"
        lines = [ln for ln in stderr.splitlines() if ln.strip()]
        # the traceback's exception line ("OSError: Cannot find data file. ..."); its message
        # may go on over more lines, so the last line alone does not name the type
        raised = [ln for ln in lines if _EXC.match(ln)]
        # the results table: "|qa_easy|Yaml   |none  |     0|acc   |..."
        scored = any(ln.startswith(f"|{name}") and "|acc" in ln for ln in stdout.splitlines())
        ok = rc == 0 and scored
        out.append({"task": name, "rc": rc, "ok": ok, "built_itself": "Generating " in stderr,
                    "gate": None if gate is None else "ok" if "GATE_OK" in stderr else
                    "refused" if "GATE_REFUSED" in stderr else "error",
                    "error_type": None if ok else (_EXC.match(raised[-1]).group(1) if raised else f"exit {rc}"),
                    "error": None if ok else " | ".join(dict.fromkeys((raised[-1:] + lines[-1:])))[:400] or "no output"})
    return out


def trial(args: argparse.Namespace, state: str, index: int) -> Dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix=f"lmrace-{state}-", dir=args.work))
    project = make_project(work / "project", rows=args.rows, seed=index)
    hf = work / "cache" / "hf-datasets"
    entries = prebuild(args.python, project, hf) if state == "agent" else []
    lm_eval = str(Path(args.python).parent / "lm_eval")
    names = [TASKS[i % len(TASKS)] for i in range(args.n)]
    env = job_env(hf, args.lock)
    probe = subprocess.run([args.python, "-c", "import filelock; print(getattr(filelock, 'CLUSTER_AGENT_TEST_LOCKLESS', False))"],
                           capture_output=True, text=True, env=env)
    before = cache_state(hf)
    t0 = time.monotonic()
    jobs = run_jobs(lm_eval, names, project["tasks"], env, work, args.timeout)
    seconds = time.monotonic() - t0
    written = changes(before, cache_state(hf))
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return {"state": state, "lock": args.lock, "jobs": jobs, "written": written, "seconds": round(seconds, 1),
            "entries": len(entries), "lockless_active": probe.stdout.strip() == "True"}


def summarize(trials: List[Dict[str, Any]]) -> Dict[str, Any]:
    jobs = [j for t in trials for j in t["jobs"]]
    errors: Dict[str, int] = {}
    for j in jobs:
        if not j["ok"]:
            errors[j["error_type"]] = errors.get(j["error_type"], 0) + 1
    return {"trials": len(trials), "jobs": len(jobs), "failed": sum(not j["ok"] for j in jobs),
            "failures_by_type": errors, "built_itself": sum(j["built_itself"] for j in jobs),
            "written_under_cache": sum(len(t["written"]) for t in trials),
            "seconds": [t["seconds"] for t in trials]}


def main(argv: List[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=16, help="lm_eval jobs started together per trial")
    ap.add_argument("--trials", type=int, default=3)
    ap.add_argument("--rows", type=int, default=2000, help="rows per data file")
    ap.add_argument("--states", default="cold,agent")
    ap.add_argument("--lock", choices=("none", "flock"), default="none")
    ap.add_argument("--python", default=sys.executable, help="interpreter of the environment under test")
    ap.add_argument("--work", default=None, help="parent folder for the trials' temp folders")
    ap.add_argument("--timeout", type=float, default=1200)
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    doc: Dict[str, Any] = {"args": vars(args), "results": {}, "trials": {}}
    for state in args.states.split(","):
        trials = [trial(args, state, i) for i in range(args.trials)]
        doc["trials"][state] = trials
        doc["results"][state] = summarize(trials)
    print("| cache before the jobs | locks | trials | jobs | failed | failures by type | jobs that built the "
          "dataset themselves | paths written under the cache root |")
    print("|---|---|---:|---:|---:|---|---:|---:|")
    for state, r in doc["results"].items():
        kinds = ", ".join(f"{k} {v}" for k, v in sorted(r["failures_by_type"].items())) or "-"
        print(f"| {state} | {args.lock} | {r['trials']} | {r['jobs']} | {r['failed']} | {kinds} | "
              f"{r['built_itself']} | {r['written_under_cache']} |")
    if args.json:
        Path(args.json).write_text(json.dumps(doc, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
