"""consumer=lm_eval end to end, through the real CLI: a summary naming lm-eval tasks, the
pre-build (lm-eval's own task manager resolves them; real `datasets` builds; verification
with lm-eval's own loading in a fresh process), the manifest, the launch gate, and a real
`lm_eval run --model dummy` job on the result. Real lm-eval 0.4.13 (scripts/test.sh
installs the extra); `dummy` is lm-eval's own test model (no weights, no network).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Dict

import pytest

from tests.conftest import CLI, REPO, run_agent

sys.path.insert(0, str(REPO / "bench"))
import race_lmeval  # noqa: E402 - the harness owns the test project (one definition of its tasks)

pytestmark = pytest.mark.skipif(importlib.util.find_spec("lm_eval") is None,
                                reason="lm-eval not installed: pip install -e '.[lm-eval]'")

EXAMPLE = REPO / "examples" / "lm_eval"  # the bundled lm-eval experiment (its summary says what it holds)
TWO_FILES = (EXAMPLE / "direct" / "two_files.yaml").read_text()
SUMMARY = (EXAMPLE / "experiment_summary.yaml").read_text()


@pytest.fixture
def exp(tmp_path: Path, caches) -> Dict[str, Path]:
    """A private copy of examples/lm_eval (relative data paths: the jobs run in its folder)."""
    root = tmp_path / "project"
    shutil.copytree(EXAMPLE, root, ignore=shutil.ignore_patterns(".cluster-agent", "logs"))
    return {"root": root, "data": root / "data", "tasks": root / "tasks", "summary": root / "experiment_summary.yaml",
            "hf": caches["hf"]}


def tree(root: Path) -> Dict[str, int]:
    return race_lmeval.cache_state(root)


def gate(exp: Dict[str, Path], task: str) -> subprocess.CompletedProcess:
    return run_agent("action=check", f"experiment={exp['summary']}", f"task={task}", "consumer=lm_eval",
                     "output=shell", cwd=exp["root"])


def test_prebuild_writes_the_exact_calls_and_gates_each_task(exp: Dict[str, Path]) -> None:
    proc = run_agent("consumer=lm_eval", f"experiment={exp['summary']}", "output=json", cwd=exp["root"], timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert "CACHE_VERIFY: Loaded 3 dataset(s) with the real lm_eval call in a fresh process: 3 pure cache hit(s)" in proc.stderr
    doc = json.loads(Path(json.loads(proc.stdout)["manifest"]).read_text())
    assert doc["consumer"] == "lm_eval" and doc["versions"]["lm_eval"]
    by_tasks = {tuple(e["tasks"]): e for e in doc["entries"]}
    assert set(by_tasks) == {("easy", "hard"), ("facts",), ("two",)}
    qa = by_tasks[("easy", "hard")]
    # the call lm-eval makes, nothing rewritten: the mapping of splits stays a mapping, the
    # relative path stays relative, taken in the jobs' folder
    assert qa["python"] == "datasets.load_dataset(path='json', name=None, data_files={'test': 'data/qa.jsonl'})"
    assert qa["call"]["cwd"] == str(exp["root"].resolve())
    assert qa["job"] == {"lm_eval_tasks": ["qa_easy", "qa_hard"], "tasks_arg": ["qa_easy", "qa_hard"],
                         "include_path": str(exp["tasks"].resolve()), "cwd": str(exp["root"].resolve())}
    assert qa["rows"] == 30 and qa["status"] == "built"
    assert by_tasks[("facts",)]["call"]["data_files"] == "data/facts.parquet"
    two = by_tasks[("two",)]
    # relative paths: taken in the jobs' folder (the summary's), one fingerprint per file
    assert two["call"]["data_files"] == {"test": "data/facts.csv", "validation": "data/more_facts.csv"}
    assert two["call"]["cwd"] == str(exp["root"].resolve()) and two["call"]["split"] is None
    assert list(two["more_sources"]) == [str(exp["root"].resolve() / "data" / "more_facts.csv")]
    assert two["rows"] == 37 + 11  # both splits
    assert any("relative path" in h for h in two["hazards"])

    again = run_agent("consumer=lm_eval", f"experiment={exp['summary']}", cwd=exp["root"], timeout=900)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "0 built, 3 unchanged" in again.stdout

    for task in ("easy", "hard", "facts", "two"):
        ok = gate(exp, task)
        assert ok.returncode == 0, ok.stderr
        assert f"export HF_DATASETS_CACHE={exp['hf']}" in ok.stdout and "export HF_DATASETS_OFFLINE=1" in ok.stdout

    # the lm-eval job's own words: what it passes to --tasks and --include_path, from its folder
    def job_gate(*words: str) -> subprocess.CompletedProcess:
        return run_agent("action=check", *words, cwd=exp["root"])

    assert job_gate("lm_eval_task=qa_easy", "include_path=tasks").returncode == 0
    assert job_gate("lm_eval_task=qa_easy,qa_hard", "include_path=tasks").returncode == 0
    assert job_gate("lm_eval_task=direct/two_files.yaml", "include_path=tasks").returncode == 0
    other = job_gate("lm_eval_task=qa_easy")  # no --include_path: lm-eval would not even find it
    assert other.returncode == 3
    assert (f"GATE_REFUSED: this job's lm_eval --tasks qa_easy loads qa_easy, which {exp['root'] / '.cluster-agent'}"
            "/manifest.json did not pre-build with that include path") in other.stderr

    # the second file of a two-file call is watched as the first is: a new mtime moves the HF key
    second = exp["data"] / "more_facts.csv"
    st = second.stat()
    os.utime(second, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    refused = gate(exp, "two")
    assert refused.returncode == 3
    assert (f"GATE_REFUSED: {exp['root'].resolve() / 'data' / 'more_facts.csv'} has a new mtime since the pre-build: "
            "datasets looks under a new HF cache key; run cluster-agent again") in refused.stderr
    assert gate(exp, "easy").returncode == 0  # the other tasks' jobs may still start
    rebuilt = run_agent("consumer=lm_eval", f"experiment={exp['summary']}", cwd=exp["root"], timeout=900)
    assert rebuilt.returncode == 0 and "0 built, 2 unchanged, 1 rebuilt" in rebuilt.stdout, rebuilt.stdout + rebuilt.stderr[-2000:]
    assert gate(exp, "two").returncode == 0


def test_a_task_yaml_with_absolute_paths_is_verified_from_the_jobs_folder(exp: Dict[str, Path], tmp_path: Path) -> None:
    """The call does not depend on a folder (absolute data_files), but the job's --tasks
    argument does (a YAML path taken in the summary's folder): verification must load it
    from there, whatever folder cluster-agent was started in."""
    absolute = TWO_FILES.replace("data/", f"{exp['data'].resolve()}/")
    (exp["root"] / "direct" / "two_files.yaml").write_text(absolute)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    proc = run_agent("consumer=lm_eval", f"experiment={exp['summary']}", "task=two", "output=json", cwd=elsewhere,
                     timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    [entry] = json.loads(proc.stdout)["entries"]
    assert entry["status"] == "built" and entry["cwd"] is None  # the call itself is folder-free
    assert "1 pure cache hit(s)" in proc.stderr


def test_a_real_lm_eval_job_after_the_gate_reads_only_the_cache(exp: Dict[str, Path]) -> None:
    built = run_agent("consumer=lm_eval", f"experiment={exp['summary']}", "task=two", cwd=exp["root"], timeout=900)
    assert built.returncode == 0, built.stderr[-2000:]
    ok = gate(exp, "two")
    assert ok.returncode == 0, ok.stderr
    env = dict(os.environ)
    for line in ok.stdout.splitlines():  # what `eval "$(cluster-agent ... output=shell)"` exports
        key, value = line.removeprefix("export ").split("=", 1)
        env[key] = value
    before = tree(exp["hf"])
    job = subprocess.run([str(Path(CLI).parent / "lm_eval"), "run", "--model", "dummy", "--tasks", "direct/two_files.yaml"],
                         capture_output=True, text=True, env=env, cwd=exp["root"], timeout=900)
    assert job.returncode == 0, job.stderr[-2000:]
    assert any(line.startswith("|facts_two") and "|acc" in line for line in job.stdout.splitlines()), job.stdout
    assert "Generating " not in job.stderr  # it did not build the dataset itself
    assert race_lmeval.changes(before, tree(exp["hf"])) == []


def test_bad_input_is_one_line_and_keeps_the_manifest(exp: Dict[str, Path]) -> None:
    built = run_agent("consumer=lm_eval", f"experiment={exp['summary']}", "task=facts", cwd=exp["root"], timeout=900)
    assert built.returncode == 0, built.stderr[-2000:]
    manifest = exp["root"] / ".cluster-agent" / "manifest.json"
    kept = manifest.read_bytes()

    def refused(summary_text: str, *args: str) -> str:
        exp["summary"].write_text(summary_text)
        proc = run_agent(f"experiment={exp['summary']}", *args, cwd=exp["root"], timeout=900)
        assert proc.returncode == 2, proc.stderr
        lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
        assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
        assert manifest.read_bytes() == kept
        return lines[0]

    hub = ("evaluation:\n  tasks:\n    - {name: arc, lm_eval_task: hub_task}\n  include_path: tasks\n")
    (exp["tasks"] / "hub_task.yaml").write_text("task: hub_task\ndataset_path: allenai/ai2_arc\ndataset_name: ARC-Easy\n"
                                               "test_split: test\noutput_type: multiple_choice\ndoc_to_text: q\n"
                                               "doc_to_choice: [a, b]\ndoc_to_target: 0\n")
    assert "lm_eval task hub_task (allenai/ai2_arc, ARC-Easy) loads from the Hugging Face Hub" in refused(hub, "consumer=lm_eval")
    plain = "evaluation:\n  tasks:\n    - {name: plain, dataset: data/qa.jsonl}\n"
    assert "consumer=lm_eval, but task plain names no lm_eval_task: add lm_eval_task: NAME" in refused(plain, "consumer=lm_eval")
    assert "task 'easy' is an lm-eval task (lm_eval_task: qa_easy) with no dataset: pass consumer=lm_eval" in refused(
        SUMMARY, "consumer=datasets")
    globbed = SUMMARY.replace("facts_parquet", "direct/glob.yaml")
    (exp["root"] / "direct" / "glob.yaml").write_text(TWO_FILES.replace("task: facts_two", "task: globbed").replace(
        "data/more_facts.csv", "data/*.csv"))
    assert "data_files data/*.csv is a glob" in refused(globbed, "consumer=lm_eval", "task=facts")
    missing = SUMMARY.replace("include_path: tasks", "include_path: no_such_folder")
    assert "include_path no_such_folder is not a folder" in refused(missing, "consumer=lm_eval")


def test_without_lm_eval_installed_consumer_lm_eval_is_one_line() -> None:
    # lm-eval is installed in this environment; what check_installed sees without it (its
    # distribution lookup returns None) is given directly
    from agent import consumers
    from agent.errors import ConfigError

    with pytest.raises(ConfigError) as err:
        consumers.get("lm_eval").check_installed({"datasets": "5.2.0", "lm_eval": None})
    assert str(err.value) == ("consumer=lm_eval needs lm-eval: pip install 'cluster-agent[lm-eval]', "
                              "or pass consumer=datasets")


def test_a_rerun_reuses_the_resolution_until_a_task_yaml_changes(exp: Dict[str, Path], tmp_path: Path) -> None:
    """Resolving indexes lm-eval's ~14,000 task YAMLs (seconds); an unchanged re-run reuses
    the resolution (memo beside the config memo), and an edited task YAML is seen at once."""
    env = {"CLUSTER_AGENT_CONFIG_MEMO": str(tmp_path / "memo" / "config")}
    args = ("consumer=lm_eval", f"experiment={exp['summary']}", "task=two", "output=json")
    first = run_agent(*args, env=env, cwd=exp["root"], timeout=900)
    assert first.returncode == 0, first.stderr[-2000:]
    assert len(list((tmp_path / "memo" / "lm_eval_tasks").glob("*.json"))) == 1
    again = run_agent(*args, "action=plan", env=env, cwd=exp["root"], timeout=900)
    assert again.returncode == 0 and [e["action"] for e in json.loads(again.stdout)["entries"]] == ["skip"]
    # the job's task YAML now reads another validation file: the plan must follow it
    (exp["data"] / "other.csv").write_text("fact,label\nother,1\n")
    yaml_file = exp["root"] / "direct" / "two_files.yaml"
    yaml_file.write_text(TWO_FILES.replace("data/more_facts.csv", "data/other.csv"))
    moved = run_agent(*args, "action=plan", env=env, cwd=exp["root"], timeout=900)
    assert moved.returncode == 0, moved.stderr[-2000:]
    [entry] = json.loads(moved.stdout)["entries"]
    assert entry["source"] == {"test": "data/facts.csv", "validation": "data/other.csv"} and entry["action"] == "build"
