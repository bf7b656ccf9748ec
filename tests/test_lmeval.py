"""lm-evaluation-harness tasks: resolved with lm-eval's own task manager, pre-built with the
exact call, verified with lm-eval's own loading, and raced with real `lm_eval` processes.

Everything here is real lm-eval 0.4.13 (the `lm-eval` extra; scripts/test.sh installs it)
and real `datasets` builds into temporary caches. The tests that need lm-eval skip only
when it is not installed; the "without the extra" test runs either way.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Dict, List

import pytest

from tests.conftest import REPO, files_under

sys.path.insert(0, str(REPO / "bench"))
import race_lmeval  # noqa: E402 - the harness owns the test project (one definition of its tasks)

needs_lm_eval = pytest.mark.skipif(importlib.util.find_spec("lm_eval") is None,
                                   reason="lm-eval not installed: pip install -e '.[lm-eval]'")
PY = sys.executable


def run_module(*args: str, env: Dict[str, str], stdin: str = "", cwd: Path | None = None) -> subprocess.CompletedProcess:
    full = dict(os.environ)
    full.update(env)
    return subprocess.run([PY, "-m", "agent.lmeval_tasks", *args], input=stdin, capture_output=True, text=True,
                          env=full, cwd=cwd, timeout=900)


def last_json(proc: subprocess.CompletedProcess):
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture
def project(tmp_path: Path) -> Dict[str, Path]:
    return race_lmeval.make_project(tmp_path / "project", rows=40)


@pytest.fixture
def hf(tmp_path: Path, caches) -> Path:
    return caches["hf"]


def prebuild(entries: List[dict], hf: Path) -> List[dict]:
    from agent import lmeval_tasks

    calls = [{"load_dataset": e["load_dataset"], "cwd": e["cwd"]} for e in entries]
    return last_json(run_module("prebuild", env=lmeval_tasks.job_env(hf), stdin=json.dumps(calls)))


# --- resolving ---------------------------------------------------------------------------


@needs_lm_eval
def test_group_resolves_to_exact_calls_with_shared_file_grouped(project: Dict[str, Path]) -> None:
    from agent import lmeval_tasks

    entries = lmeval_tasks.resolve("qa_suite", str(project["tasks"]))
    data = project["data"]
    got = {json.dumps(e.call.load_kwargs()): e.tasks for e in entries}
    # lm-eval passes path=, name=, then dataset_kwargs exactly as the YAML wrote them
    assert got == {
        json.dumps({"path": "json", "name": None, "data_files": {"test": f"{data}/qa.jsonl"}}): ["qa_easy", "qa_hard"],
        json.dumps({"path": "csv", "name": None, "data_files": {"test": f"{data}/facts.csv"}}): ["facts_csv"],
        json.dumps({"path": "parquet", "name": None, "data_files": f"{data}/facts.parquet"}): ["facts_parquet"],
    }
    by_task = {t: e for e in entries for t in e.tasks}
    assert by_task["qa_hard"].sources == [f"{data}/qa.jsonl"]
    assert by_task["facts_parquet"].call.python() == (
        f"datasets.load_dataset(path='parquet', name=None, data_files='{data}/facts.parquet')")
    assert all(e.call.cwd is None and e.hazards == [] for e in entries)  # absolute paths: any cwd


@needs_lm_eval
def test_task_yaml_given_directly_and_relative_data_files(project: Dict[str, Path], tmp_path: Path) -> None:
    """`--tasks path/to/task.yaml` (no include_path); a relative data_files path is kept as
    written and tied to the jobs' working directory."""
    from agent import lmeval_tasks

    job_dir = tmp_path / "jobdir"
    (job_dir / "d").mkdir(parents=True)
    (job_dir / "d" / "rel.jsonl").write_text((project["data"] / "qa.jsonl").read_text())
    yaml_path = tmp_path / "rel_task.yaml"
    yaml_path.write_text((project["tasks"] / "qa_easy.yaml").read_text()
                         .replace("include: _qa_template_yaml\n", (project["tasks"] / "_qa_template_yaml").read_text())
                         .replace(f"{project['data']}/qa.jsonl", "d/rel.jsonl").replace("qa_easy", "rel_qa"))
    [entry] = lmeval_tasks.resolve(str(yaml_path), cwd=str(job_dir))
    assert entry.tasks == ["rel_qa"]
    assert entry.call.data_files == {"test": "d/rel.jsonl"}  # as written: the cache key is this string
    assert entry.call.cwd == str(job_dir)
    assert entry.sources == [str(job_dir / "d" / "rel.jsonl")]
    assert "jobs must start in" in entry.hazards[0]


@needs_lm_eval
def test_hub_task_is_one_line_naming_it(project: Dict[str, Path]) -> None:
    proc = run_module("resolve", "qa_easy,arc_easy", str(project["tasks"]), env={"HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr
    assert lines[0].startswith("error: lm_eval task arc_easy (allenai/ai2_arc, ARC-Easy) loads from the Hugging Face Hub")
    assert "qa_easy" not in lines[0]


@needs_lm_eval
def test_unknown_task_and_missing_file_are_one_line(project: Dict[str, Path]) -> None:
    proc = run_module("resolve", "no_such_task", str(project["tasks"]), env={})
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1
    assert "Tasks not found: no_such_task" in proc.stderr and "lm_eval ls tasks --include_path" in proc.stderr
    (project["data"] / "facts.csv").unlink()
    proc = run_module("resolve", "qa_suite", str(project["tasks"]), env={})
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1
    assert proc.stderr.startswith("error: lm_eval facts_csv: ") and "facts.csv" in proc.stderr


@needs_lm_eval
def test_resolving_loads_and_writes_nothing(project: Dict[str, Path], hf: Path) -> None:
    out = last_json(run_module("resolve", "qa_suite", str(project["tasks"]), env={}))
    assert len(out) == 3
    assert not hf.exists()  # the recorder stopped every load_dataset call


def test_without_the_extra_one_line_and_import_is_lazy(tmp_path: Path) -> None:
    """No lm-eval: importing the module works (and imports neither lm_eval nor datasets);
    using it is one ConfigError line naming the extra."""
    code = ("import sys; sys.modules['lm_eval'] = None\n"  # as if lm-eval were not installed
            "import agent.lmeval_tasks as m\n"
            "assert 'lm_eval' not in [k for k in sys.modules if sys.modules[k] is not None] and 'datasets' not in sys.modules\n"
            "from agent.errors import AgentError\n"
            "try:\n    m.resolve('x')\nexcept AgentError as e:\n    print(type(e).__name__, e.exit_code, e)\n")
    proc = subprocess.run([PY, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == ("ConfigError 2 consumer=lm_eval needs lm-eval (lm_eval is not importable): "
                                   "pip install 'cluster-agent[lm-eval]', or pass consumer=datasets")


# --- pre-build + verification ------------------------------------------------------------


@needs_lm_eval
def test_prebuild_then_lm_evals_own_loading_is_a_pure_cache_hit(project: Dict[str, Path], hf: Path) -> None:
    from agent import lmeval_tasks

    entries = [e.to_json() for e in lmeval_tasks.resolve("qa_suite", str(project["tasks"]))]
    built = prebuild(entries, hf)
    assert [b["rows"] for b in built] == [{"test": 40}, {"test": 47}, {"train": 43}]
    before = files_under(hf)
    assert any(p.endswith(".arrow") for p in before)
    res = lmeval_tasks.verify("qa_suite", str(project["tasks"]), lmeval_tasks.job_env(hf), [str(hf)],
                              watch=[d for b in built for d in b["cache_dirs"]])
    assert res["error"] is None and res["ok"] is True
    # lm-eval's own loading read, per task, the rows the build read for its call
    assert res["tasks"] == {"qa_easy": {"test": 40}, "qa_hard": {"test": 40}, "facts_csv": {"test": 47},
                            "facts_parquet": {"train": 43}}
    assert files_under(hf) == before


@needs_lm_eval
def test_verification_fails_when_the_cache_was_not_built(project: Dict[str, Path], hf: Path) -> None:
    from agent import lmeval_tasks

    res = lmeval_tasks.verify("facts_csv", str(project["tasks"]), lmeval_tasks.job_env(hf), [str(hf)])
    assert res["ok"] is False
    assert res["error"].startswith("lm-eval's loading was not a pure cache hit: it wrote ")


@needs_lm_eval
def test_verification_fails_when_the_data_file_changed(project: Dict[str, Path], hf: Path) -> None:
    """A rewritten source is a new cache key: the job's call would rebuild, so it is not a hit."""
    from agent import lmeval_tasks

    entries = [e.to_json() for e in lmeval_tasks.resolve("facts_csv", str(project["tasks"]))]
    prebuild(entries, hf)
    with open(project["data"] / "facts.csv", "a") as f:
        f.write("one more fact,1\n")
    res = lmeval_tasks.verify("facts_csv", str(project["tasks"]), lmeval_tasks.job_env(hf), [str(hf)])
    assert res["ok"] is False and "not a pure cache hit" in res["error"]


# --- real lm_eval jobs started together --------------------------------------------------


@needs_lm_eval
@pytest.mark.slow
@pytest.mark.timeout(2400)  # 2 x 12 real lm_eval processes on a shared 2-core machine
def test_twelve_lm_eval_jobs_on_a_lockless_fs_after_prebuild(tmp_path: Path) -> None:
    out = tmp_path / "race.json"
    proc = subprocess.run([PY, str(REPO / "bench" / "race_lmeval.py"), "--n", "12", "--trials", "1", "--rows", "300",
                           "--lock", "none", "--work", str(tmp_path), "--json", str(out)],
                          capture_output=True, text=True, timeout=2300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    print(proc.stdout)  # the table, cold row included (shown with -s and on failure)
    doc = json.loads(out.read_text())
    [agent] = doc["trials"]["agent"]
    assert agent["lockless_active"] is True  # the jobs really ran without working locks
    assert agent["entries"] == 3
    assert len(agent["jobs"]) == 12 and [j for j in agent["jobs"] if not j["ok"]] == []
    assert not any(j["built_itself"] for j in agent["jobs"])
    assert agent["written"] == []  # nothing created, modified or removed under the cache root
    # the cold trial ran the same jobs; its numbers vary from run to run: reported, not asserted
    assert len(doc["trials"]["cold"][0]["jobs"]) == 12
