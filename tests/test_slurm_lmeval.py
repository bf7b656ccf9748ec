"""Real `lm_eval` jobs through the recipe, on the real single-node SLURM cluster (scripts/slurm-up.sh).

The race_lmeval project (bench/race_lmeval.py: four local-file tasks under an include_path,
two sharing one data file) is pre-built by a `cluster-agent consumer=lm_eval launcher=slurm`
job; the eval array is submitted at once, chained on it with `recipes/submit.py
consumer=lm_eval --model dummy --after JOB`. Each array task runs the recipe's real steps:
the gate narrowed to its task, the manifest's environment, then `lm_eval run --model dummy
--tasks NAME --include_path TASKS` (lm-eval's own test model: no weights, no network).
Then a data file is touched: its task's job is refused by its own gate (exit 3) and
lm_eval never runs, while the other tasks' jobs still pass.

What is asserted is what a user sees: job states and exit codes (scontrol), the jobs'
output files (GATE_OK / GATE_REFUSED lines, lm-eval's results table) and the HF cache
root, which the jobs must not change.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Dict

import pytest

from conftest import REPO, run_agent
from test_slurm_e2e import SETUP, SUBMIT, _cluster, wait_done  # noqa: F401 - _cluster: the autouse check

sys.path.insert(0, str(REPO / "bench"))
import race_lmeval  # noqa: E402 - the harness owns the test project (one definition of its tasks)

pytestmark = [pytest.mark.slurm, pytest.mark.slow,
              pytest.mark.skipif(__import__("importlib").util.find_spec("lm_eval") is None,
                                 reason="lm-eval not installed: pip install -e '.[lm-eval]'")]

# lm-eval indexes its ~14,000 task YAMLs (~8 s when idle) in the pre-build's resolve, in its
# verification and in every job: minutes on a busy 2-core machine
JOB_TIMEOUT = 900


def submit_plain(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """recipes/submit.py from an environment that names no HF datasets cache (sbatch passes
    the submitter's environment on to the jobs): only the gate's `export` lines can point
    the jobs at the pre-built root; without them lm_eval would build under HF_HOME."""
    env = {k: v for k, v in os.environ.items() if k not in ("HF_DATASETS_CACHE", "HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")}
    return subprocess.run([sys.executable, str(SUBMIT), *args], capture_output=True, text=True, cwd=cwd, env=env,
                          timeout=120, stdin=subprocess.DEVNULL)


def table_row(out: str, task: str) -> bool:
    """lm-eval's results table has the task's row: `|qa_easy|Yaml   |none  |     0|acc   |...`."""
    return any(line.startswith(f"|{task}") and "|acc" in line for line in out.splitlines())


def paths_under(root: Path) -> Dict[str, int]:
    """Every file and folder under the root with its mtime_ns (lock files excluded: they
    hold no data). A folder's mtime moves when a name in it is created or removed."""
    return race_lmeval.cache_state(root)


@pytest.mark.timeout(2400)
def test_lm_eval_recipe_runs_real_lm_eval_jobs_after_a_prebuild_job(tmp_path: Path, caches: Dict[str, Path]) -> None:
    project = race_lmeval.make_project(tmp_path / "exp", rows=40)
    summary = race_lmeval.write_summary(project)
    exp = summary.parent
    slurm_dir = exp / "logs" / "slurm"
    tag = uuid.uuid4().hex[:8]
    overrides = [f"experiment={summary}", "consumer=lm_eval", SETUP, "policy=stop"]

    # 1. the pre-build as a job (3 entries: one job, no array)
    pre = run_agent("launcher=slurm", "output=json", *overrides, cwd=tmp_path)
    assert pre.returncode == 0, pre.stderr
    prebuild_job = json.loads(pre.stdout)["job_id"]
    assert json.loads(pre.stdout)["entries"] == 3

    # 2. every eval job at once, chained on it (submitted while the pre-build is queued or running)
    ev = submit_plain(*overrides, "--model", "dummy", "--after", prebuild_job, "--json", "--job-name", f"lmeval-{tag}",
                cwd=tmp_path)
    assert ev.returncode == 0, ev.stderr
    array = json.loads(ev.stdout)
    assert array["jobs"] == 4 and array["tasks"] == list(race_lmeval.TASKS)
    script = Path(array["script"]).read_text()
    assert "#SBATCH --array=0-3\n" in script and f"#SBATCH --chdir={exp}\n" in script
    # include_path as the summary writes it: relative, taken in the jobs' folder (--chdir)
    assert "0) lm_eval run --model dummy --tasks qa_easy --include_path tasks ;;" in script

    pre_done = wait_done(prebuild_job, 1, timeout=JOB_TIMEOUT)
    pre_out = (slurm_dir / f"prebuild-{prebuild_job}.out").read_text()
    assert pre_done[prebuild_job]["ExitCode"] == "0:0", pre_out[-3000:]
    done = wait_done(array["job_id"], 4, timeout=JOB_TIMEOUT)
    outs = {i: (slurm_dir / f"eval-{array['job_id']}_{i}.out").read_text() for i in range(4)}
    states = {k: (s["JobState"], s["ExitCode"]) for k, s in done.items()}
    assert set(states.values()) == {("COMPLETED", "0:0")}, (states, {i: o[-1500:] for i, o in outs.items()})

    manifest_path = exp / ".cluster-agent" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    assert manifest["decision"] == "proceed" and manifest["slurm_job_id"] == prebuild_job
    assert manifest["consumer"] == "lm_eval" and manifest["env"]["HF_DATASETS_CACHE"] == str(caches["hf"])
    for i, task in enumerate(race_lmeval.TASKS):
        assert f"GATE_OK: 1 dataset(s) ready for task {task} ({manifest_path})" in outs[i], outs[i][-2000:]
        assert table_row(outs[i], task), outs[i][-2000:]
        assert "Generating " not in outs[i]  # no job built a dataset itself
    # the jobs changed nothing under the cache root: every file and folder there (a
    # folder's mtime moves when a name in it is created or removed) is older than the
    # manifest, which the pre-build job wrote last, and every cache file it lists is there
    hf = caches["hf"]
    after_jobs = paths_under(hf)
    newer = sorted(p for p, m in after_jobs.items() if m > manifest_path.stat().st_mtime_ns)
    assert newer == []
    listed = [os.path.join(layer["dir"], name) for e in manifest["entries"] for layer in e["layers"].values()
              for name in layer["files"]]
    assert listed and all(os.path.isfile(p) and p.startswith(str(hf) + os.sep) for p in listed)

    # 3. a touched data file (new mtime: datasets would look under a new HF cache key)
    # refuses the one task that reads it: its job ends with exit 3 before lm_eval starts
    csv = project["data"] / "facts.csv"
    os.utime(csv, ns=(csv.stat().st_atime_ns, csv.stat().st_mtime_ns + 5 * 10**9))
    refused = submit_plain(*overrides, "--model", "dummy", "--json", cwd=tmp_path)  # the login-side check refuses first
    assert refused.returncode == 3 and refused.stdout == "", refused.stderr
    assert f"GATE_REFUSED: {csv} has a new mtime since the pre-build" in refused.stderr
    manifest_bytes = manifest_path.read_bytes()
    ev2 = submit_plain(*overrides, "--model", "dummy", "--no-check", "--json", "--job-name", f"lmeval-{tag}", cwd=tmp_path)
    assert ev2.returncode == 0, ev2.stderr
    second = json.loads(ev2.stdout)
    done2 = wait_done(second["job_id"], 4, timeout=JOB_TIMEOUT)
    outs2 = {i: (slurm_dir / f"eval-{second['job_id']}_{i}.out").read_text() for i in range(4)}
    got = {s["ArrayTaskId"]: (s["JobState"], s["ExitCode"]) for s in done2.values()}
    i_csv = race_lmeval.TASKS.index("facts_csv")
    assert got == {str(i): ("FAILED", "3:0") if i == i_csv else ("COMPLETED", "0:0") for i in range(4)}, \
        (got, {i: o[-1500:] for i, o in outs2.items()})
    text = outs2[i_csv]
    assert f"GATE_REFUSED: {csv} has a new mtime since the pre-build: datasets looks under a new HF cache key" in text
    assert f"eval job {i_csv} (task facts_csv) not run: the launch gate refused it (exit 3)" in text
    assert not table_row(text, "facts_csv")  # lm_eval never ran
    for i, task in enumerate(race_lmeval.TASKS):
        if i != i_csv:
            assert "GATE_OK" in outs2[i] and table_row(outs2[i], task), outs2[i][-2000:]
    assert paths_under(hf) == after_jobs  # nothing created, modified or removed by the second array
    assert manifest_path.read_bytes() == manifest_bytes
