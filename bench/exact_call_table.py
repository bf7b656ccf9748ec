"""Issue 10's table: every case of tests/scaffold.py, pre-built by cluster-agent from the
scaffolded cells, then each cell's gate and its real job (inspect-ai's own task loading
and hf_dataset, from the cell folder, with the manifest's environment).

    .venv/bin/python bench/exact_call_table.py [--work DIR]

Prints one Markdown row per cell: the job's call -> pre-built? -> gate -> rows read ->
cache files written by the job (0 = a pure cache hit).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from scaffold import MOCKLLM_JOB, build  # noqa: E402

CLI = str(Path(sys.executable).parent / "cluster-agent")
JOB = "import json, sys\n" + MOCKLLM_JOB + r"""
job = json.loads(sys.argv[1])
try:
    log = inspect_eval(job["task_script"], model=get_model("mockllm/model", custom_outputs=outputs()),
                       task_args=parse_cli_args(job["targs"]), log_dir=job["logs"], display="none")[0]
    print(json.dumps({"status": log.status, "samples": log.results.completed_samples if log.results else None,
                      "error": str(log.error.message).splitlines()[0] if log.error else None}))
except Exception as exc:
    print(json.dumps({"status": "crashed", "samples": None, "error": f"{type(exc).__name__}: {exc}"[:120]}))
"""


def tree(roots):
    out = {}
    for root in roots:
        for folder, _, files in os.walk(root):
            for f in files:
                if not f.endswith(".lock"):
                    st = os.stat(os.path.join(folder, f))
                    out[os.path.join(folder, f)] = (st.st_size, st.st_mtime_ns)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=None)
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="exact-call-"))
    from agent import cells

    scaffold = build(work)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "XDG_"))}
    env.update(HF_DATASETS_CACHE=str(work / "c" / "hf"), XDG_CACHE_HOME=str(work / "c" / "xdg"),
               HF_HOME=str(work / "c" / "hf-home"), HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    pre = subprocess.run([CLI, f"experiment={scaffold.summary}", "policy=continue", "output=json"],
                         capture_output=True, text=True, env=env)
    doc = json.loads(pre.stdout)
    status = {(e["source"], e["field"]): e["status"] for e in doc["entries"]}
    roots = [work / "c" / "hf", work / "c" / "xdg"]
    rows = []
    for call in cells.discover(scaffold.experiment):
        gate = subprocess.run([CLI, "action=check", f"cell={call.cell}", "output=shell"], capture_output=True,
                              text=True, env=env, cwd=call.cell)
        job_env = dict(env)
        if gate.returncode == 0:
            job_env.update(dict(ln.split(" ", 1)[1].split("=", 1) for ln in gate.stdout.splitlines()))
            before = tree(roots)
            job = {"task_script": call.task_script, "logs": str(work / "logs" / call.cell.name),
                   "targs": [f"{k}={v}" for k, v in cells.read_slurm(call.slurm).task_args]}
            proc = subprocess.run([sys.executable, "-c", JOB, json.dumps(job)], capture_output=True, text=True,
                                  env=job_env, cwd=call.cell)
            result = json.loads(proc.stdout.strip().splitlines()[-1])
            written = len(set(tree(roots).items()) - set(before.items()))
            read = f"{result['samples']}" if result["status"] == "success" else result["status"]
        else:
            read, written = "not run (gate)", 0
        kw = ", ".join(k for k, _ in call.kwargs)
        rows.append(f"| {call.run}/{call.cell.name} | `{call.data_files}` field={call.field} ({kw}) | "
                    f"{status.get((call.data_files, call.field), '?')} | exit {gate.returncode} | {read} | {written} |")
    print("| cell | the job's call | pre-built | gate | rows read | cache files the job wrote |")
    print("|---|---|---|---|---|---|")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
