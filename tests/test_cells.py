"""agent.cells: every scaffolded cell of tests/scaffold.py as the exact call its job makes.

The key test runs the REAL inspect-ai task loading and hf_dataset call from each cell
folder (in a subprocess with cwd=cell folder and fresh cache roots) and compares the
folder it creates with the one computed from the CellCall.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path
from typing import Dict

import pytest

from agent import cells
from agent.errors import EXIT_USAGE, CellError, TaskScriptError
from scaffold import CONDITION_HASH, MOCKLLM_JOB, Scaffold, build


@pytest.fixture
def scaffold(tmp_path: Path) -> Scaffold:
    return build(tmp_path)


def by_name(s: Scaffold) -> Dict[str, cells.CellCall]:
    return {f"{c.run}/{c.cell.name}": c for c in cells.discover(s.experiment)}


# (data_files with <EXP> for the experiment folder as the user sees it, field, kwargs keys in order,
#  options, rows the job reads (None = the call fails))
EXPECTED = {
    "base/cap_run": ("<EXP>/data/words.json", "test", ["data_files", "field"], (), 60),
    "base/organism": ("<EXP>/data/organism.json", "validation", ["data_files", "field"], (), 24),
    "run_a/acs_extra_epoch1": ("<EXP>/data/acs.json", "test", ["data_files", "field", "keep_in_memory"],
                               (("shuffle", False), ("limit", 25)), 50),
    "run_a/acs_relative_epoch1": ("../data/acs.json", "test", ["data_files", "field"], (), 50),
    "run_a/cap_reordered_epoch1": ("<EXP>/data/words.json", "test", ["field", "data_files"], (), 60),
    "run_a/cap_run_epoch1": ("<EXP>/data/words_a.json", "test", ["data_files", "field"], (), 33),
    "run_a/cap_slashes_epoch1": ("<EXP>/data//words.json", "test", ["data_files", "field"], (), 60),
    "run_a/cap_tilde_epoch1": ("~/cruijff-data/words.json", "test", ["data_files", "field"], (), None),
    "run_a/cap_validation_epoch1": ("<EXP>/data/words.json", "validation", ["data_files", "field"], (), 40),
    "run_a/capitalization_epoch1": ("<EXP>/data/words.json", "test", ["data_files", "field"], (), 60),
    "run_a/heldout_epoch1": (f"<EXP>/conditions/heldout_test_{CONDITION_HASH}.json", "test",
                             ["data_files", "field"], (), 18),
    "run_a/organism_epoch1": ("<EXP>/data/organism.json", "validation", ["data_files", "field"], (), 24),
    "run_b/cap_run_epoch1": ("<EXP>/data/words_b_eval.json", "test", ["data_files", "field"], (), 35),
    "run_b/capitalization_epoch1": ("<EXP>/data/words.json", "test", ["data_files", "field"], (), 60),
}


def test_every_cell_is_the_call_its_job_makes(scaffold: Scaffold) -> None:
    got = by_name(scaffold)
    assert sorted(got) == sorted(EXPECTED)
    exp = str(scaffold.experiment)
    for name, (data_files, field, keys, options, rows) in EXPECTED.items():
        call = got[name]
        data_files = data_files.replace("<EXP>", exp)
        assert call.data_files == data_files, name  # verbatim: no normalising, no '~' expansion
        assert call.field == field and call.split == "train" and call.builder == "json", name
        assert [k for k, _ in call.kwargs] == keys, name
        assert dict(call.kwargs)["data_files"] == data_files and dict(call.kwargs)["field"] == field, name
        assert call.options == options, name
        assert call.consumer == "inspect" and call.name is None and call.revision is None, name
        assert call.cell == scaffold.cells[name] and call.cell.is_absolute(), name  # the cd target, as written
        assert call.workdir == scaffold.experiment / "tasks", name  # where inspect eval runs the task
        assert call.run == name.split("/")[0] and call.epoch == (None if name.startswith("base/") else 1), name
        assert (call.failure is None) == (rows is not None), (name, call.failure)
    assert got["run_a/cap_reordered_epoch1"].task == "capitalization_reordered"
    assert got["run_a/organism_epoch1"].task == "model_organism"
    assert got["run_a/heldout_epoch1"].summary_task == "heldout"
    # the task script's defaults vs the cell's explicit split
    assert dict(got["run_a/cap_validation_epoch1"].task_args)["split"] == "validation"
    assert "split" not in dict(got["run_a/organism_epoch1"].task_args)


def test_hazards_and_failures_name_the_reason(scaffold: Scaffold) -> None:
    got = by_name(scaffold)
    tasks = scaffold.experiment / "tasks"
    tilde = got["run_a/cap_tilde_epoch1"]
    assert "starts with '~'" in tilde.failure and f"{os.path.realpath(tasks)}/~/cruijff-data/words.json" in tilde.failure
    rel = got["run_a/acs_relative_epoch1"]
    assert any(h.startswith("relative path: `inspect eval` runs the task in the task script's folder") for h in rel.hazards)
    assert "contains '//'" in got["run_a/cap_slashes_epoch1"].hazards
    assert any("passes through a symlink" in h for h in got["run_a/capitalization_epoch1"].hazards)
    assert all("\n" not in h for c in got.values() for h in c.hazards)


def test_source_file_is_the_real_file_for_grouping(scaffold: Scaffold) -> None:
    got = by_name(scaffold)
    real = scaffold.real
    assert real.resolve() == real and not str(real).startswith(str(scaffold.experiment))
    src = {n: cells.source_file(c) for n, c in got.items()}
    # relative (taken in tasks/), '//' and the symlinked path all name the same real files
    assert src["run_a/acs_relative_epoch1"] == src["run_a/acs_extra_epoch1"] == real / "data" / "acs.json"
    assert src["run_a/cap_slashes_epoch1"] == src["run_a/capitalization_epoch1"] == real / "data" / "words.json"
    assert not src["run_a/cap_tilde_epoch1"].exists()
    # ...but the recorded strings differ, and so do inspect-ai's keys
    v = version("inspect_ai")
    names = {got[n].inspect_folder_name(v) for n in ("run_a/cap_slashes_epoch1", "run_a/capitalization_epoch1",
                                                       "run_a/cap_reordered_epoch1")}
    assert len(names) == 3


# The real job side: inspect-ai loads the task from the cell folder the way `inspect eval`
# does (task_args parsed by inspect's own -T parser), each cell with fresh cache roots.
# mockllm with outputs that carry token usage: plain mockllm/model counts tokens with
# tiktoken, which downloads its encoding (no network here).
_REAL = "import json, os, sys\n" + MOCKLLM_JOB + r"""
import datasets
results = {}
for job in json.loads(sys.argv[1]):
    os.chdir(job["cell"])
    os.environ["XDG_CACHE_HOME"] = job["xdg"]
    root = os.path.join(job["xdg"], "inspect_ai", "hf_datasets")
    try:
        logs = inspect_eval(job["task_script"], model=get_model("mockllm/model", custom_outputs=outputs()),
                            task_args=parse_cli_args(job["targs"]), limit=1, log_dir=job["logs"], display="none")
        error = None if logs[0].status == "success" else str(logs[0].error.message)[:400]
    except Exception as exc:
        error = f"{type(exc).__name__}: {exc}"[:400]
    folders = sorted(os.listdir(root)) if os.path.isdir(root) else []
    rows = [datasets.load_from_disk(os.path.join(root, f)).num_rows for f in folders]
    results[job["name"]] = {"folders": folders, "rows": rows, "error": error}
print(json.dumps(results))
"""


def test_key_equals_the_folder_a_real_job_creates(scaffold: Scaffold, tmp_path: Path) -> None:
    got = by_name(scaffold)
    jobs = []
    for name, call in got.items():
        slurm = cells.read_slurm(call.slurm)
        jobs.append({"name": name, "cell": str(call.cell), "task_script": call.task_script,
                     "targs": [f"{k}={v}" for k, v in slurm.task_args],
                     "xdg": str(tmp_path / "xdg" / name.replace("/", "-")), "logs": str(tmp_path / "logs")})
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "XDG_"))}
    env.update(HF_DATASETS_CACHE=str(tmp_path / "hf"), HF_HOME=str(tmp_path / "hf-home"), HF_HUB_OFFLINE="1",
               HF_DATASETS_OFFLINE="1")
    proc = subprocess.run([sys.executable, "-c", _REAL, json.dumps(jobs)], capture_output=True, text=True,
                          env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    v = version("inspect_ai")
    for name, call in got.items():
        res, rows = results[name], EXPECTED[name][4]
        if rows is None:  # the literal '~': the job fails, exactly as CellCall.failure says
            assert res["folders"] == [] and "FileNotFoundError" in res["error"] and "/~/cruijff-data" in res["error"]
            continue
        assert res["error"] is None, (name, res["error"])
        assert res["folders"] == [call.inspect_folder_name(v)], name
        assert res["rows"] == [rows], name


def test_inspect_task_arg_is_inspects_own_parser() -> None:
    from inspect_ai._util.config import parse_cli_args

    for raw in ["/a/b.json", "data//x.json", "~/x.json", "../d/acs.json", "validation", "2024", "a,b.json",
                "true", "/p/heldout_test_3f9a1c2e.json", "x: y"]:
        assert cells.inspect_task_arg(raw) == parse_cli_args([f"k={raw}"])["k"], raw


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, (path, old)
    path.write_text(text.replace(old, new))


def test_cell_disagreements_are_one_clear_line(scaffold: Scaffold) -> None:
    cell = scaffold.cell("run_a", "cap_validation_epoch1")
    slurm, yml = cell / "cell.slurm", cell / "eval.yaml"
    exp = str(scaffold.experiment)
    original = slurm.read_text()
    cases = [
        (lambda: _edit(slurm, f'-T data_path="{exp}/data/words.json"', f'-T data_path="{exp}/data/acs.json"'),
         "but eval.yaml data_path is"),
        (lambda: _edit(slurm, '  -T split="validation" \\\n', ""), "passes no -T split but eval.yaml has split"),
        (lambda: _edit(slurm, f"cd {cell}\n", f"cd {cell.parent}\n"), "the job would run in another folder"),
        (lambda: _edit(slurm, f"cd {cell}\n", "cd eval\n"), "is relative, so the job's folder depends"),
        (lambda: _edit(slurm, f"cd {cell}\n", ""), "no `cd <cell folder>` before inspect eval"),
        (lambda: _edit(slurm, "capitalization.py@capitalization \\", "organism.py@model_organism \\"),
         "but eval.yaml task_script is"),
        (lambda: _edit(slurm, '-T split="validation"', '-T split="$SPLIT"'), "a shell expansion is only known"),
        (lambda: _edit(slurm, "inspect eval", "python run.py"), "no `inspect eval` command"),
        (lambda: slurm.unlink(), "no cell.slurm beside eval.yaml"),
    ]
    for change, message in cases:
        slurm.write_text(original)
        change()
        with pytest.raises(CellError) as err:
            cells.read_cell(cell)
        text = str(err.value)
        assert "\n" not in text and str(cell) in text and message in text, (message, text)
        assert err.value.exit_code == EXIT_USAGE
    slurm.write_text(original)
    _edit(yml, "split: validation\n", "")
    with pytest.raises(CellError, match=r"passes -T split='validation' but eval.yaml has no split"):
        cells.read_cell(cell)


def test_a_comma_in_data_path_is_refused(scaffold: Scaffold) -> None:
    cell = scaffold.cell("base", "cap_run")
    exp = str(scaffold.experiment)
    for f in (cell / "cell.slurm", cell / "eval.yaml"):
        _edit(f, f"{exp}/data/words.json", f"{exp}/data/words,v2.json")
    with pytest.raises(CellError, match=r"inspect-ai reads -T data_path=.*words,v2\.json as \[.*\(YAML; a comma makes a list\)"):
        cells.read_cell(cell)


def test_a_bad_task_script_names_the_script(scaffold: Scaffold) -> None:
    script = scaffold.experiment / "tasks" / "organism.py"
    _edit(script, "field=split,", "**{'field': split},")
    with pytest.raises(TaskScriptError, match=r"organism\.py:25: task 'model_organism': hf_dataset\(\*args/\*\*kwargs\)"):
        cells.discover(scaffold.experiment)


def test_find_experiment_and_has_cells(scaffold: Scaffold, tmp_path: Path) -> None:
    cell = scaffold.cell("run_b", "cap_run_epoch1")
    assert cells.find_experiment(cell) == scaffold.summary
    assert cells.has_cells(scaffold.experiment) and cells.has_cells(scaffold.summary)
    assert not cells.has_cells(tmp_path / "gpfs")
    with pytest.raises(CellError, match="no experiment_summary.yaml in it or any folder above it"):
        cells.find_experiment(tmp_path / "gpfs")


def test_key_message_forms(scaffold: Scaffold) -> None:
    """0.3.221 and later hash {revision}; 0.3.220 and before do not (agent.layers)."""
    call = by_name(scaffold)["run_a/cap_reordered_epoch1"]
    kw = "{'field': 'test', 'data_files': '" + call.data_files + "'}"
    assert call.inspect_key_message("0.3.285") == f"jsonNoneNonetrainNone{kw}"
    assert call.inspect_key_message("0.3.209") == f"jsonNoneNonetrain{kw}"


def test_same_relative_path_in_two_script_folders_collides(scaffold: Scaffold, caches) -> None:
    """inspect keys on the string: '../data/acs.json' from tasks/ and from other/tasks/ are
    two files behind one inspect cache folder. The plan refuses both calls (the pre-build
    would otherwise certify one file's rows for both jobs)."""
    import shutil

    from agent import consumers
    from agent.jobcall import load_call
    from conftest import run_agent

    inspect_consumer = consumers.get("inspect")
    assert inspect_consumer.conflicts([load_call(c) for c in cells.discover(scaffold.experiment)]) == {}
    exp = scaffold.experiment
    (exp / "other" / "tasks").mkdir(parents=True)
    shutil.copy(exp / "tasks" / "acs.py", exp / "other" / "tasks" / "acs.py")
    shutil.copytree(exp / "data", exp / "other" / "data")
    src = scaffold.cell("run_a", "acs_relative_epoch1")
    dst = exp / "run_b" / "eval" / src.name
    shutil.copytree(src, dst)
    _edit(dst / "cell.slurm", str(src), str(dst))
    for f in (dst / "cell.slurm", dst / "eval.yaml"):
        _edit(f, f"{exp}/tasks/acs.py@", f"{exp}/other/tasks/acs.py@")
    clashes = inspect_consumer.conflicts([load_call(c) for c in cells.discover(exp)])
    assert len(clashes) == 2 and len(set(clashes.values())) == 1
    (line,) = set(clashes.values())
    assert f"{scaffold.real}/data/acs.json" in line and f"{scaffold.real}/other/data/acs.json" in line
    plan = run_agent(f"experiment={scaffold.summary}", "action=plan", "output=json")
    rows = [r for r in json.loads(plan.stdout)["entries"] if r["source"] == "../data/acs.json"]
    assert [r["action"] for r in rows] == ["failed", "failed"], rows
    assert all("keys its cache on this string alone" in r["reason"] for r in rows)


_BUILD = r"""
import json, os, sys
from inspect_ai.dataset import hf_dataset
out = {}
for job in json.loads(sys.argv[1]):
    os.chdir(job["workdir"])
    os.environ["XDG_CACHE_HOME"] = job["xdg"]
    ds = hf_dataset(**job["kwargs"])
    root = os.path.join(job["xdg"], "inspect_ai", "hf_datasets")
    out[job["name"]] = {"folders": sorted(os.listdir(root)), "rows": len(ds)}
print(json.dumps(out))
"""


def test_build_kwargs_build_the_folder_the_job_reads(scaffold: Scaffold, tmp_path: Path) -> None:
    """What a pre-build does with a CellCall: the real hf_dataset(**build_kwargs()) in workdir."""
    got = by_name(scaffold)
    names = ["run_a/acs_relative_epoch1", "run_a/cap_reordered_epoch1", "run_a/acs_extra_epoch1"]
    jobs = [{"name": n, "workdir": str(got[n].workdir), "kwargs": got[n].build_kwargs(),
             "xdg": str(tmp_path / "xdg" / n.replace("/", "-"))} for n in names]
    assert list(jobs[1]["kwargs"]) == ["path", "split", "field", "data_files"]
    env = dict(os.environ, HF_DATASETS_CACHE=str(tmp_path / "hf"), HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    proc = subprocess.run([sys.executable, "-c", _BUILD, json.dumps(jobs)], capture_output=True, text=True,
                          env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    v = version("inspect_ai")
    assert {n: r["folders"] for n, r in results.items()} == {n: [got[n].inspect_folder_name(v)] for n in names}
    assert [results[n]["rows"] for n in names] == [50, 60, 50]  # no limit when building: the whole field


_JOB = "import json, os, sys\n" + MOCKLLM_JOB + r"""
job = json.loads(sys.argv[1])
log = inspect_eval(job["task_script"], model=get_model("mockllm/model", custom_outputs=outputs()),
                   task_args=parse_cli_args(job["targs"]), log_dir=job["logs"], display="none")[0]
print(json.dumps({"status": log.status, "samples": log.results.completed_samples if log.results else None}))
"""


@pytest.mark.slow
def test_prebuilt_by_cluster_agent_then_13_gated_jobs_at_once(scaffold: Scaffold, tmp_path: Path) -> None:
    """cluster-agent pre-builds the experiment from its cells; then every cell's gate
    (action=check cell=DIR, from the cell folder) passes and exports the manifest's
    environment, and every cell's real job (inspect's own task loading + hf_dataset) is
    started together from its folder: all pass, each reads its rows, and nothing under
    either cache root is created or modified. The one cell whose call cannot work (a
    literal '~') is refused by the pre-build and by its gate."""
    from conftest import run_agent

    got = {n: c for n, c in by_name(scaffold).items() if c.failure is None}
    assert len(got) == 13
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "XDG_"))}
    env.update(HF_DATASETS_CACHE=str(tmp_path / "hf"), XDG_CACHE_HOME=str(tmp_path / "xdg"),
               HF_HOME=str(tmp_path / "hf-home"), HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    pre = run_agent(f"experiment={scaffold.summary}", "policy=continue", env=env)
    assert pre.returncode == 0, pre.stderr[-3000:]
    assert "1 failed" in pre.stdout and "0 missing" in pre.stdout, pre.stdout  # the '~' cell
    tilde = by_name(scaffold)["run_a/cap_tilde_epoch1"]
    refused = run_agent("action=check", f"cell={tilde.cell}", env=env, cwd=tilde.cell)
    assert refused.returncode == 3 and "starts with '~'" in refused.stderr

    def tree() -> Dict[str, tuple]:
        out = {}
        for root in (tmp_path / "hf", tmp_path / "xdg"):
            for folder, dirs, files in os.walk(root):
                out.update({os.path.join(folder, d) + "/": () for d in dirs})
                for f in files:
                    if not f.endswith(".lock"):
                        st = os.stat(os.path.join(folder, f))
                        out[os.path.join(folder, f)] = (st.st_size, st.st_mtime_ns)
        return out

    before = tree()
    job_env = {}
    for n, c in got.items():  # the one line a cell template adds: the gate, from the cell folder
        gate = run_agent("action=check", f"cell={c.cell}", "output=shell", env=env, cwd=c.cell)
        assert gate.returncode == 0, (n, gate.stderr)
        job_env = dict(line.split(" ", 1)[1].split("=", 1) for line in gate.stdout.splitlines())
    procs = {}
    for n, c in got.items():
        job = {"task_script": c.task_script, "targs": [f"{k}={v}" for k, v in cells.read_slurm(c.slurm).task_args],
               "logs": str(tmp_path / "logs" / n.replace("/", "-"))}
        procs[n] = subprocess.Popen([sys.executable, "-c", _JOB, json.dumps(job)], cwd=str(c.cell),
                                    env={**env, **job_env}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    results = {}
    for n, p in procs.items():
        out, err = p.communicate(timeout=900)
        assert p.returncode == 0, (n, err[-2000:])
        results[n] = json.loads(out.strip().splitlines()[-1])
    want = {n: EXPECTED[n][4] for n in got}
    want["run_a/acs_extra_epoch1"] = 25  # its task's own limit=25 (after the cache is read)
    assert {n: (r["status"], r["samples"]) for n, r in results.items()} == {n: ("success", w) for n, w in want.items()}
    assert tree() == before, "a job missed a cache and wrote it itself"
