"""Issue 10 end to end: cluster-agent pre-builds the scaffolded experiment of
tests/scaffold.py (every case of the issue) from its cells, and the gate checks the exact
call a job makes — refusing every call the pre-build did not cover, with exit 3 and one
line naming the job's call, its folder and the nearest covered call.

Real `datasets` + inspect-ai builds into temporary caches; the real jobs run in
test_cells.py::test_prebuilt_by_cluster_agent_then_13_gated_jobs_at_once (slow).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import run_agent
from corehelp import messages
from scaffold import Scaffold, build


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("exact")
    scaffold = build(root)
    env = {"HF_DATASETS_CACHE": str(root / "c" / "hf"), "XDG_CACHE_HOME": str(root / "c" / "xdg"),
           "HF_HOME": str(root / "c" / "hf-home"), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    proc = run_agent(f"experiment={scaffold.summary}", "policy=continue", "output=json", env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return scaffold, env, json.loads(proc.stdout)


def _gate(scaffold: Scaffold, env, cell: Path, *extra: str):
    return run_agent("action=check", f"cell={cell}", *extra, env=env, cwd=cell)


def test_one_entry_per_distinct_call_of_the_cells(built):
    scaffold, _, out = built
    calls = {(e["source"], e["cwd"], e["field"]) for e in out["entries"]}
    exp = str(scaffold.experiment)
    # reordered kwargs, an extra kwarg, '//', a relative path, a per-run path, an
    # eval_condition file with a hash, a validation default: each its own call
    assert (f"{exp}/data//words.json", None, "test") in calls
    assert ("../data/acs.json", f"{scaffold.real}/tasks", "test") in calls  # the physical folder: os.getcwd()
    assert (f"{exp}/data/words.json", None, "validation") in calls
    assert any("heldout_test_" in s for s, _, _ in calls)
    assert any(s.endswith("words_b_eval.json") for s, _, _ in calls)
    by_status = {e["status"] for e in out["entries"]}
    assert by_status == {"built", "failed"}
    (failed,) = [e for e in out["entries"] if e["status"] == "failed"]
    assert failed["source"].startswith("~/") and "starts with '~'" in failed["error"]


def test_every_cell_gate_passes_with_its_own_call(built):
    scaffold, env, _ = built
    for key, cell in scaffold.cells.items():
        proc = _gate(scaffold, env, cell)
        if key.endswith("cap_tilde_epoch1"):
            assert proc.returncode == 3, proc.stderr
            continue
        assert proc.returncode == 0, (key, proc.stderr)
        (ok,) = messages(proc.stderr, "GATE_OK")
        assert ok.startswith("1 dataset(s) ready for this job's call"), ok


def test_an_edited_cell_is_refused_naming_the_nearest_call(built, tmp_path):
    scaffold, env, _ = built
    cell = scaffold.cell("run_a", "capitalization_epoch1")
    originals = {f: f.read_text() for f in (cell / "eval.yaml", cell / "cell.slurm")}
    try:
        for f, text in originals.items():  # the user points the cell at another spelling after the pre-build
            f.write_text(text.replace("/data/words.json", "/data/./words.json"))
        proc = _gate(scaffold, env, cell)
        assert proc.returncode == 3, proc.stderr
        (line,) = messages(proc.stderr, "GATE_REFUSED")
        assert "data/./words.json" in line and "is not in" in line
        assert "the nearest pre-built call is" in line and "data/words.json (field=test)" in line
    finally:
        for f, text in originals.items():
            f.write_text(text)
    assert _gate(scaffold, env, cell).returncode == 0


def test_data_files_form_from_the_jobs_folder(built):
    scaffold, env, _ = built
    exp = scaffold.experiment
    cell = scaffold.cell("run_a", "cap_validation_epoch1")
    ok = run_agent("action=check", f"data_files={exp}/data/words.json", "field=validation", env=env, cwd=cell)
    assert ok.returncode == 0, ok.stderr
    # the same file under another string is another cache key for both layers
    other = run_agent("action=check", f"data_files={exp}/data//words.json", "field=validation", env=env, cwd=cell)
    assert other.returncode == 3 and "not in" in other.stderr
    # a relative string is taken in the folder the gate (the job) runs in
    rel = run_agent("action=check", "data_files=../data/acs.json", env=env, cwd=exp / "tasks")
    assert rel.returncode == 0, rel.stderr
    elsewhere = run_agent("action=check", "data_files=../data/acs.json", f"experiment={scaffold.summary}",
                          env=env, cwd=cell)
    assert elsewhere.returncode == 3 and "../data/acs.json in " in elsewhere.stderr


def test_a_datasets_manifest_refuses_the_cells_inspect_jobs(tmp_path, caches):
    scaffold = build(tmp_path)
    assert run_agent(f"experiment={scaffold.summary}", "consumer=datasets", "policy=continue").returncode == 0
    proc = run_agent("action=check", f"cell={scaffold.cell('base', 'cap_run')}", cwd=scaffold.experiment)
    assert proc.returncode == 3
    (line,) = messages(proc.stderr, "GATE_REFUSED")
    assert "consumer=datasets" in line and "consumer=inspect" in line


def test_a_cell_outside_any_experiment_is_one_line(tmp_path):
    (tmp_path / "lonely").mkdir()
    proc = run_agent("action=check", f"cell={tmp_path / 'lonely'}")
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
