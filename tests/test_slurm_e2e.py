"""End to end on the real single-node SLURM cluster (scripts/slurm-up.sh).

The pre-build runs as a SLURM job (an array over the datasets, then one job writing the
manifest); the eval jobs are ONE 32-task array chained on it with afterok; every task runs
its gate, exports the manifest's environment and calls the real consumer in lock-less mode
(tests/slurm_support/lockless_consume.py) after a barrier that all 32 must reach, i.e.
all 32 were running at the same time. Then a dataset changes after the pre-build: its
jobs are refused by their own gate (exit 3, the reason in their output files) and no
cache file changes; a new pre-build job lets them through.

The cluster is shared by every test of the run (and by other users of the machine):
job names and folders are unique to this test, job ids are never assumed.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Dict, List

import pytest

from conftest import REPO, files_under, run_agent, write_records

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

SUPPORT = REPO / "tests" / "slurm_support"
SUBMIT = REPO / "recipes" / "submit.py"
# site.slurm.setup: the jobs activate the test venv (cluster-agent, datasets, inspect-ai)
SETUP = f'site.slurm.setup=["source {Path(sys.executable).parent / "activate"}"]'
TERMINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE"}


@pytest.fixture(autouse=True)
def _cluster() -> None:
    if shutil.which("sbatch") is None or subprocess.run(["scontrol", "ping"], capture_output=True).returncode != 0:
        pytest.fail("the SLURM cluster is not up: run scripts/slurm-up.sh (scripts/test.sh does)")


def submit(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SUBMIT), *args], capture_output=True, text=True, cwd=cwd,
                          timeout=120, stdin=subprocess.DEVNULL)


def states(job_id: str) -> Dict[str, Dict[str, str]]:
    """{JobId or ArrayJobId_TaskId: {JobState, ExitCode, ...}} from scontrol (no sacct here)."""
    proc = subprocess.run(["scontrol", "-o", "show", "job", job_id], capture_output=True, text=True)
    out = {}
    for line in proc.stdout.splitlines():
        fields = dict(w.split("=", 1) for w in line.split() if "=" in w)
        key = f"{fields['ArrayJobId']}_{fields['ArrayTaskId']}" if "ArrayTaskId" in fields else fields["JobId"]
        out[key] = fields
    return out


def wait_done(job_id: str, expect: int, timeout: float = 240) -> Dict[str, Dict[str, str]]:
    deadline = time.time() + timeout
    while True:
        now = states(job_id)
        if len(now) >= expect and all(s["JobState"] in TERMINAL for s in now.values()):
            return now
        if time.time() > deadline:
            pytest.fail(f"job {job_id} not finished after {timeout} s: "
                        f"{sorted({s['JobState'] for s in now.values()})}")
        time.sleep(1)


def consume_command(barrier: Path, results: Path, n: int) -> str:
    return (f"python {SUPPORT / 'lockless_consume.py'} --consumer inspect --builder {{builder}} "
            f"--data-files {{data_files}} --field {{field}} --split {{split}} "
            f"--barrier {barrier} --n {n} --results {results}")


def experiment(tmp_path: Path) -> Path:
    """3 datasets, 4 tasks (two share a dataset), 8 runs x 4 tasks = 32 eval jobs."""
    import yaml

    exp = tmp_path / "exp"
    write_records(exp / "data" / "alpha.json", 300)
    write_records(exp / "data" / "beta.json", 200)
    (exp / "data" / "gamma.jsonl").write_text(
        "".join(json.dumps({"input": f"g{i}", "output": f"G{i}"}) + "\n" for i in range(150)))
    tasks = [{"name": "alpha", "dataset": "data/alpha.json"},
             {"name": "alpha_strict", "dataset": "data/alpha.json"},
             {"name": "beta", "dataset": "data/beta.json"},
             {"name": "gamma", "dataset": "data/gamma.jsonl"}]
    runs = [f"run{i}" for i in range(8)]
    doc = {"experiment": {"name": "e2e"}, "evaluation": {
        "tasks": tasks, "matrix": [{"run": r, "tasks": [t["name"] for t in tasks]} for r in runs]}}
    path = exp / "experiment_summary.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def results(folder: Path) -> List[dict]:
    return [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))]


def cache_files(caches: Dict[str, Path]) -> Dict[str, int]:
    return {**files_under(caches["hf"]), **files_under(caches["xdg"])}


def test_prebuild_job_then_32_gated_lockless_jobs_at_once(tmp_path: Path, caches: Dict[str, Path]) -> None:
    summary = experiment(tmp_path)
    slurm_dir = summary.parent / "logs" / "slurm"
    tag = uuid.uuid4().hex[:8]
    # site.lock=soft: the agent's own locks without flock, as on the lock-less mounts the jobs stand in for
    overrides = [f"experiment={summary}", SETUP, "policy=stop", "site.lock=soft"]

    # 1. the pre-build as a job: 3 datasets > array_threshold=2 -> an array, then one job
    pre = run_agent("launcher=slurm", "launcher.array_threshold=2", "output=json", *overrides, cwd=tmp_path)
    assert pre.returncode == 0, pre.stderr
    sub = json.loads(pre.stdout)
    assert sub["entries"] == 3 and sub["array_job_id"] and sub["job_id"] != sub["array_job_id"]
    assert "PREBUILD_SUBMITTED" in pre.stderr

    # 2. all 32 eval jobs as one array chained on it (submitted while the pre-build is queued or running)
    barrier, out1 = tmp_path / "barrier1", tmp_path / "results1"
    ev = submit(*overrides, "--after", sub["job_id"], "--json", "--job-name", f"e2e-{tag}",
                "--command", consume_command(barrier, out1, 32), cwd=tmp_path)
    assert ev.returncode == 0, ev.stderr
    array = json.loads(ev.stdout)
    assert array["jobs"] == 32 and array["after"] == sub["job_id"]
    assert "#SBATCH --array=0-31\n" in Path(array["script"]).read_text()  # one array, no % throttle

    pre_states = wait_done(sub["array_job_id"], 3)
    assert {s["ExitCode"] for s in pre_states.values()} == {"0:0"}
    done = wait_done(array["job_id"], 32)
    assert wait_done(sub["job_id"], 1)[sub["job_id"]]["ExitCode"] == "0:0"
    failed = {k: (s["JobState"], s["ExitCode"]) for k, s in done.items() if s["ExitCode"] != "0:0"}
    assert not failed, (failed, [(slurm_dir / f"eval-{k}.out").read_text()[-800:] for k in list(failed)[:2]])

    manifest_path = summary.parent / ".cluster-agent" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    assert manifest["decision"] == "proceed" and manifest["slurm_job_id"] == sub["job_id"]
    # the evals start after the manifest is written (afterok) and were pure cache hits, locks or not
    assert max(cache_files(caches).values()) <= manifest_path.stat().st_mtime_ns
    assert sorted(e["rows"] for e in manifest["entries"]) == [150, 200, 300]

    got = results(out1)
    assert len(got) == 32
    expected = {"alpha": 300, "alpha_strict": 300, "beta": 200, "gamma": 150}
    tasks = array["tasks"]
    assert [r["rows"] for r in got] == [expected[tasks[r["index"]]] for r in got]
    # all 32 were running at once: every job arrived at the barrier before any left it
    assert max(r["arrived"] for r in got) <= min(r["released"] for r in got)
    assert len({r["job"] for r in got}) == 32
    assert {r["hf_cache"] for r in got} == {str(caches["hf"])}  # the manifest's env was exported
    for i in (0, 31):
        text = (slurm_dir / f"eval-{array['job_id']}_{i}.out").read_text()
        assert "GATE_OK" in text and f"rows: {expected[tasks[i]]}" in text

    # 3. beta changes after the pre-build: its jobs are refused by their own gate
    before_cache = cache_files(caches)
    manifest_bytes = (summary.parent / ".cluster-agent" / "manifest.json").read_bytes()
    write_records(summary.parent / "data" / "beta.json", 250)
    refused = submit(*overrides, "--json", "--command", "true", cwd=tmp_path)  # the login-node check refuses first
    assert refused.returncode == 3 and refused.stdout == ""
    assert "GATE_REFUSED" in refused.stderr and "beta.json changed since the pre-build" in refused.stderr
    out2 = tmp_path / "results2"
    ev2 = submit(*overrides, "--no-check", "--only", "beta", "--json", "--job-name", f"e2e-{tag}",
                 "--command", consume_command(tmp_path / "barrier2", out2, 8), cwd=tmp_path)
    assert ev2.returncode == 0, ev2.stderr
    second = json.loads(ev2.stdout)
    done2 = wait_done(second["job_id"], 8)
    assert {(s["JobState"], s["ExitCode"]) for s in done2.values()} == {("FAILED", "3:0")}
    text = (slurm_dir / f"eval-{second['job_id']}_0.out").read_text()
    assert "GATE_REFUSED" in text and "beta.json changed since the pre-build (content hash differs)" in text
    assert "not run: the launch gate refused it (exit 3)" in text
    assert not out2.exists()  # the consumer never started
    assert cache_files(caches) == before_cache
    assert (summary.parent / ".cluster-agent" / "manifest.json").read_bytes() == manifest_bytes

    # 4. a new pre-build job (one dataset to rebuild) lets them through
    pre2 = run_agent("launcher=slurm", "output=json", *overrides, cwd=tmp_path)
    assert pre2.returncode == 0, pre2.stderr
    job2 = json.loads(pre2.stdout)["job_id"]
    out3 = tmp_path / "results3"
    ev3 = submit(*overrides, "--after", job2, "--only", "beta", "--json", "--job-name", f"e2e-{tag}",
                 "--command", consume_command(tmp_path / "barrier3", out3, 8), cwd=tmp_path)
    assert ev3.returncode == 0, ev3.stderr
    done3 = wait_done(json.loads(ev3.stdout)["job_id"], 8)
    assert {s["ExitCode"] for s in done3.values()} == {"0:0"}
    assert [r["rows"] for r in results(out3)] == [250] * 8
    log = next(slurm_dir.glob(f"prebuild-{job2}.out")).read_text()
    assert "CACHE_REBUILT" in log or "CACHE_BUILT" in log


def test_inspect_eval_recipe_runs_real_inspect_eval(tmp_path: Path, caches: Dict[str, Path]) -> None:
    """The default consumer step for consumer=inspect: a real `inspect eval` (mockllm/model)."""
    from conftest import write_summary

    exp = tmp_path / "exp"
    write_records(exp / "data" / "words.json", 40)
    (exp / "tasks").mkdir(parents=True)
    shutil.copy(SUPPORT / "echo_task.py", exp / "tasks" / "echo_task.py")
    summary = write_summary(exp, [{"name": "words", "dataset": "data/words.json", "script": "tasks/echo_task.py"}])
    overrides = [f"experiment={summary}", SETUP, "policy=stop"]
    built = run_agent(*overrides, cwd=tmp_path)  # the pre-build on the "login node"
    assert built.returncode == 0, built.stderr
    ev = submit(*overrides, "--model", "mockllm/model", "--json", "--job-name", f"e2e-inspect-{uuid.uuid4().hex[:8]}",
                cwd=tmp_path)
    assert ev.returncode == 0, ev.stderr
    job = json.loads(ev.stdout)
    script = Path(job["script"]).read_text()
    assert "inspect eval tasks/echo_task.py --model mockllm/model -T data_path=" in script
    assert f"#SBATCH --chdir={exp}\n" in script  # the summary's relative script path works as written
    done = wait_done(job["job_id"], 1, timeout=180)
    out = (exp / "logs" / "slurm" / f"eval-{job['job_id']}_0.out").read_text()
    assert {s["ExitCode"] for s in done.values()} == {"0:0"}, out[-2000:]
    assert "GATE_OK" in out

    from inspect_ai.log import list_eval_logs, read_eval_log

    logs = list_eval_logs(str(exp / "logs"))  # inspect's default ./logs, in the job's cwd
    assert len(logs) == 1
    log = read_eval_log(logs[0])
    assert log.status == "success" and log.results.completed_samples == 40
    assert log.eval.task_args["data_path"] == str(exp / "data" / "words.json")
