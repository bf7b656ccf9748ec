"""The launch recipes: rendered sbatch scripts against saved references, and their behaviour.

Reference files live in tests/reference/; volatile paths (the test's tmp folder) are
replaced by <TMP>. After an intended change to a template, regenerate them with
    UPDATE_REFERENCE=1 pytest tests/test_recipes.py
and review the diff. Tests marked `slurm` talk to the real cluster (scripts/slurm-up.sh).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import List

import pytest
from conftest import REPO, run_agent, write_summary

from agent import config, launcher

REFERENCE = REPO / "tests" / "reference"
SUBMIT = REPO / "recipes" / "submit.py"
SETUP = f'site.slurm.setup=["source {Path(sys.executable).parent / "activate"}"]'


def normalise(text: str, tmp_path: Path) -> str:
    return text.replace(str(tmp_path), "<TMP>")


def compare(name: str, text: str, tmp_path: Path) -> None:
    text = normalise(text, tmp_path)
    ref = REFERENCE / name
    if os.environ.get("UPDATE_REFERENCE") == "1":
        ref.write_text(text)
    assert ref.exists(), f"no reference {ref}: run UPDATE_REFERENCE=1 pytest {__file__}"
    assert text == ref.read_text(), f"{name} differs from {ref} (UPDATE_REFERENCE=1 to accept an intended change)"
    subprocess.run(["bash", "-n"], input=text, text=True, check=True)  # valid bash


def della(example: Path, *extra: str):
    return config.load([f"experiment={example}", "site=della", "site.slurm.account=lab", "launcher=slurm", *extra])


ARGV = ["launcher=slurm", "experiment=exp/experiment_summary.yaml", "site=della", "site.slurm.account=lab", "policy=stop"]


def test_prebuild_script_matches_reference(example: Path, tmp_path: Path) -> None:
    cfg = della(example)
    (stem, text), = launcher.render_prebuild(cfg, ARGV, 4, tmp_path / "slurm", tmp_path)
    assert stem == "prebuild"
    compare("prebuild_job.sbatch", text, tmp_path)
    assert "exec cluster-agent experiment=exp/experiment_summary.yaml site=della site.slurm.account=lab " \
           "policy=stop launcher=local\n" in text  # never launcher=slurm again inside the job


def test_prebuild_array_scripts_match_reference(example: Path, tmp_path: Path) -> None:
    cfg = della(example)
    scripts = launcher.render_prebuild(cfg, ARGV, 12, tmp_path / "slurm", tmp_path, array_job="4321")
    assert [s for s, _ in scripts] == ["prebuild-array", "prebuild"]
    compare("prebuild_array.sbatch", scripts[0][1], tmp_path)
    compare("prebuild_after_array.sbatch", scripts[1][1], tmp_path)
    assert "#SBATCH --array=0-11\n" in scripts[0][1] and 'entry="$SLURM_ARRAY_TASK_ID"' in scripts[0][1]
    assert "#SBATCH --dependency=afterany:4321\n" in scripts[1][1]


def test_eval_scripts_match_reference(example: Path, tmp_path: Path) -> None:
    cfg = della(example)
    manifest, jobs = launcher.eval_jobs(cfg, model="hf/meta-llama/Llama-3.2-1B-Instruct")
    assert len(jobs) == 13  # the example's matrix: 5 + 5 + 3 (run, task) pairs
    text = launcher.render_eval(cfg, manifest, jobs, tmp_path / "slurm", example.parent, after="4321")
    compare("eval_job_inspect.sbatch", text, tmp_path)
    assert "#SBATCH --array=0-12\n" in text and "%" not in text.split("--array=")[1].split("\n")[0]

    cfg = della(example, "consumer=datasets")
    manifest, jobs = launcher.eval_jobs(cfg)
    compare("eval_job_datasets.sbatch", launcher.render_eval(cfg, manifest, jobs, tmp_path / "slurm", example.parent),
            tmp_path)


def _run_eval_script(text: str, index: int, tmp_path: Path) -> subprocess.CompletedProcess:
    script = tmp_path / "job.sh"
    script.write_text(text)
    env = dict(os.environ, SLURM_ARRAY_TASK_ID=str(index), PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    return subprocess.run(["bash", str(script)], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)


def test_eval_script_runs_gate_then_env_then_consumer(example: Path, tmp_path: Path, caches) -> None:
    """The rendered script's three steps, run by bash directly (the SLURM tests run it as a job)."""
    cfg = config.load([f"experiment={example}", "consumer=datasets"])
    marker = tmp_path / "consumer-ran"
    manifest, jobs = launcher.eval_jobs(cfg, command=f"touch {marker}; echo HF=$HF_DATASETS_CACHE; python -c {{python_call}}")
    text = launcher.render_eval(cfg, manifest, jobs, tmp_path / "slurm", example.parent)

    refused = _run_eval_script(text, 2, tmp_path)  # no pre-build yet
    assert refused.returncode == 3
    assert "GATE_REFUSED: no manifest at" in refused.stderr and "not run: the launch gate refused it (exit 3)" in refused.stderr
    assert not marker.exists()

    assert run_agent(f"experiment={example}", "consumer=datasets", "policy=stop").returncode == 0
    ok = _run_eval_script(text, 2, tmp_path)  # index 2: acs_income
    assert ok.returncode == 0, ok.stderr
    assert "GATE_OK: 1 dataset(s) ready for task acs_income" in ok.stderr
    assert f"HF={caches['hf']}" in ok.stdout and "rows: 120" in ok.stdout and marker.exists()


def test_submit_refuses_without_manifest_and_submits_nothing(example: Path, tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, str(SUBMIT), f"experiment={example}", "consumer=datasets"],
                          capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 3 and proc.stdout == ""
    assert "GATE_REFUSED: no manifest at" in proc.stderr and "nothing submitted" in proc.stderr
    assert not (example.parent / "logs" / "slurm").exists()


@pytest.mark.parametrize("args, message", [
    (["--command", "run {nope}"], "unknown placeholder 'nope'"),
    ([], "consumer=inspect: pass --model NAME"),
    (["--only", "nosuch", "--command", "true"], "--only nosuch: not a task of"),
    (["site=nosuch", "--command", "true"], "site=nosuch: no such site profile"),
])
def test_submit_usage_errors_are_one_line(example: Path, tmp_path: Path, args: List[str], message: str) -> None:
    proc = subprocess.run([sys.executable, str(SUBMIT), f"experiment={example}", *args],
                          capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 2 and proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("submit: error: ") and message in lines[0], proc.stderr


def test_prebuild_job_with_bad_summary_submits_nothing(tmp_path: Path) -> None:
    summary = write_summary(tmp_path / "exp", [{"name": "t", "dataset": "data/x.txt"}])
    proc = run_agent("launcher=slurm", f"experiment={summary}", cwd=tmp_path)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()] and "unknown extension '.txt'" in proc.stderr
    assert not (tmp_path / "exp" / "logs" / "slurm").exists()


# --- against the real cluster -------------------------------------------------------------


def _cluster_up() -> None:
    if shutil.which("sbatch") is None or subprocess.run(["scontrol", "ping"], capture_output=True).returncode != 0:
        pytest.fail("the SLURM cluster is not up: run scripts/slurm-up.sh (scripts/test.sh does)")


@pytest.mark.slurm
def test_rendered_scripts_pass_sbatch_test_only(example: Path, tmp_path: Path) -> None:
    """sbatch itself accepts every directive the templates render (nothing is queued)."""
    _cluster_up()
    cfg = config.load([f"experiment={example}", "site=della", "site.slurm.partition=debug", "site.slurm.mem=1G"])
    texts = [t for _, t in launcher.render_prebuild(cfg, ARGV, 12, tmp_path / "slurm", tmp_path, array_job="1")]
    manifest, jobs = launcher.eval_jobs(cfg, model="mockllm/model")
    texts.append(launcher.render_eval(cfg, manifest, jobs, tmp_path / "slurm", example.parent))
    for i, text in enumerate(texts):
        script = tmp_path / f"s{i}.sbatch"
        script.write_text(text)
        proc = subprocess.run(["sbatch", "--test-only", str(script)], capture_output=True, text=True, cwd=tmp_path)
        assert proc.returncode == 0 and "to start at" in proc.stderr, proc.stderr


@pytest.mark.slurm
def test_after_an_unknown_job_is_refused(example: Path, tmp_path: Path) -> None:
    """SLURM runs jobs whose afterok names an unknown id: submit.py must not let that happen."""
    _cluster_up()
    proc = subprocess.run([sys.executable, str(SUBMIT), f"experiment={example}", "--command", "true",
                           "--after", "987654321"], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 2 and proc.stdout == ""
    assert "SLURM does not know this job" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


@pytest.mark.slurm
def test_sbatch_refusal_is_one_line(example: Path, tmp_path: Path) -> None:
    _cluster_up()
    proc = run_agent("launcher=slurm", f"experiment={example}", "site.slurm.partition=nosuch-partition", cwd=tmp_path)
    assert proc.returncode == 2 and proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cluster-agent: error: sbatch refused") and "partition" in lines[0]
    assert not list(example.parent.rglob("prebuild-*.sbatch")), "a refused job left its script behind"


@pytest.mark.slurm
def test_prebuild_job_id_chains(example: Path, tmp_path: Path, caches) -> None:
    """launcher=slurm prints only the job id on stdout, so `JOB=$(cluster-agent launcher=slurm ...)` works."""
    _cluster_up()
    proc = run_agent("launcher=slurm", f"experiment={example}", SETUP, "policy=stop", "consumer=datasets", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    job_id = proc.stdout.strip()
    assert job_id.isdigit() and proc.stdout == f"{job_id}\n"
    states = launcher.job_states(job_id)
    assert states and set(states) <= {"PENDING", "RUNNING", "COMPLETING", "COMPLETED"}
    subprocess.run(["scancel", job_id], capture_output=True)  # the build itself is covered by test_slurm_e2e.py


def test_job_args_never_resubmit_and_keep_the_users_overrides() -> None:
    argv = ["launcher=slurm", "launcher.array_threshold=2", "entry=1", "experiment=a b/s.yaml", "site.env={X: 1}"]
    assert launcher.job_args(argv) == "entry=1 'experiment=a b/s.yaml' 'site.env={X: 1}' launcher=local"
    assert launcher.job_args(argv, entry=True) == \
        "'experiment=a b/s.yaml' 'site.env={X: 1}' launcher=local entry=\"$SLURM_ARRAY_TASK_ID\""


def test_entry_narrowing_builds_one_dataset_and_keeps_the_others(example: Path, caches) -> None:
    """What each task of a pre-build array runs: entry=N builds the N-th dataset only, and
    the job after the array finds them all unchanged and writes one decision."""
    base = [f"experiment={example}", "consumer=datasets", "policy=stop", "verify=false"]
    plan = json.loads(run_agent(*base, "action=plan", "output=json", "entry=1").stdout)
    assert [e["source"] for e in plan["entries"]] == [str(example.parent / "data" / "acs.json")]
    assert run_agent(*base, "entry=0").returncode == 0
    assert run_agent(*base, "entry=1").returncode == 0
    doc = json.loads((example.parent / ".cluster-agent" / "manifest.json").read_text())
    assert sorted((Path(e["call"]["data_files"]).name, e["status"]) for e in doc["entries"]) == \
        [("acs.json", "built"), ("words.json", "built")]
    full = run_agent(*base, "output=json")
    assert full.returncode == 0
    statuses = sorted(e["status"] for e in json.loads(full.stdout)["entries"])
    assert statuses == ["built", "built", "unchanged", "unchanged"]
    bad = run_agent(*base, "entry=9")
    assert bad.returncode == 2 and "entry=9:" in bad.stderr and "plans 4 entries; choose 0 to 3" in bad.stderr


@pytest.mark.slurm
def test_failed_prebuild_job_cancels_the_chained_evals(tmp_path: Path, caches) -> None:
    """policy=stop + a missing dataset: the pre-build job exits 1 and SLURM cancels the eval
    array chained on it with afterok; submit.py refuses to chain on a job that already failed."""
    _cluster_up()
    summary = write_summary(tmp_path / "exp", [{"name": "gone", "dataset": "data/gone.json"}])
    go = tmp_path / "go"
    # the job's setup waits for `go`, so the evals are surely chained before the pre-build ends
    setup = f'site.slurm.setup=["source {Path(sys.executable).parent / "activate"}", ' \
            f'"while [ ! -e {go} ]; do sleep 0.2; done"]'
    overrides = [f"experiment={summary}", setup, "policy=stop", "consumer=datasets"]
    pre = run_agent("launcher=slurm", *overrides, cwd=tmp_path)
    assert pre.returncode == 0, pre.stderr
    job = pre.stdout.strip()
    ev = subprocess.run([sys.executable, str(SUBMIT), *overrides, "--after", job, "--command", "true", "--json"],
                        capture_output=True, text=True, cwd=tmp_path)
    assert ev.returncode == 0, ev.stderr
    evals = json.loads(ev.stdout)["job_id"]
    go.touch()
    deadline = time.time() + 120
    while launcher.job_states(evals) != ["CANCELLED"] and time.time() < deadline:
        time.sleep(0.5)
    assert launcher.job_states(job) == ["FAILED"] and launcher.job_states(evals) == ["CANCELLED"]
    out = (tmp_path / "exp" / "logs" / "slurm" / f"prebuild-{job}.out").read_text()
    assert "CACHE_MISSING" in out and "DECISION: stop" in out
    assert not list((tmp_path / "exp" / "logs" / "slurm").glob(f"eval-{evals}_*.out"))  # never started
    late = subprocess.run([sys.executable, str(SUBMIT), *overrides, "--after", job, "--command", "true"],
                          capture_output=True, text=True, cwd=tmp_path)
    assert late.returncode == 2 and f"--after {job}: that job ended FAILED" in late.stderr
