"""Reading the experiment summary: every error of issue 2 is one line + exit 2 and leaves an
earlier manifest and the caches alone; the accepted shapes turn into the right entries.

The error cases share one real pre-build (consumer=datasets, into a module-scoped cache):
each broken summary is written beside the good one, so the default manifest
(<summary folder>/.cluster-agent/manifest.json) is the one the failed run must not touch.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml

from conftest import files_under, run_agent, write_records, write_summary
from corehelp import assert_one_error_line, cache_env

from agent.errors import SummaryError
from agent.plan import make_plan
from agent.summary import read_summary


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A small experiment pre-built once: (folder, env, manifest bytes, cache files)."""
    root = tmp_path_factory.mktemp("summary-errors")
    env = cache_env(root / "cache")
    folder = root / "exp"
    write_records(folder / "data" / "a.json", 5)
    summary = write_summary(folder, [{"name": "a", "dataset": "data/a.json"}])
    proc = run_agent(f"experiment={summary}", "consumer=datasets", "policy=stop", env=env)
    assert proc.returncode == 0, proc.stderr
    manifest = folder / ".cluster-agent" / "manifest.json"
    return {"folder": folder, "env": env, "manifest": manifest, "bytes": manifest.read_bytes(),
            "files": files_under(Path(env["HF_DATASETS_CACHE"])),
            "log": (folder / "logs" / "cluster-agent.log").read_bytes()}


BAD_SUMMARIES = {
    "malformed-yaml": (b"evaluation:\n  tasks: [ {name: a, dataset: x.json\n", ["malformed YAML", "line"]),
    "not-utf8": (b"evaluation:\n  tasks: \xff\xfe\n", ["not UTF-8"]),
    "empty-file": (b"", ["empty", "mapping"]),
    "a-list": (b"- name: a\n  dataset: x.json\n", ["is a list", "mapping"]),
    "a-scalar": (b"just some words\n", ["is a str", "mapping"]),
    "no-evaluation": (b"experiment: {name: x}\n", ["evaluation"]),
    "no-tasks": (b"evaluation:\n  matrix: []\n", ["evaluation.tasks"]),
    "tasks-null": (b"evaluation:\n  tasks:\n", ["evaluation.tasks"]),
    "tasks-a-mapping": (b"evaluation:\n  tasks: {name: a, dataset: x.json}\n", ["evaluation.tasks", "must be a list"]),
    "tasks-a-string": (b"evaluation:\n  tasks: a.json\n", ["evaluation.tasks", "must be a list"]),
    "tasks-empty": (b"evaluation:\n  tasks: []\n", ["evaluation.tasks", "empty"]),
    "task-not-mapping": (b"evaluation:\n  tasks: [data/a.json]\n", ["evaluation.tasks[0]", "mapping"]),
    "task-without-name": (b"evaluation:\n  tasks: [{dataset: data/a.json}]\n", ["evaluation.tasks[0].name"]),
    "no-dataset-no-training": (b"evaluation:\n  tasks: [{name: a}]\n", ["'a'", "no dataset", "data.training.path"]),
    "training-without-path": (b"data: {training: {label: w}}\nevaluation:\n  tasks: [{name: a}]\n",
                              ["no dataset", "data.training.path"]),
    "duplicate-task": (b"evaluation:\n  tasks: [{name: a, dataset: data/a.json}, {name: a, dataset: data/a.json}]\n",
                       ["'a'", "twice"]),
    "unknown-extension": (b"evaluation:\n  tasks: [{name: a, dataset: data/a.txt}]\n", ["'.txt'", ".jsonl"]),
    "field-on-jsonl": (b"evaluation:\n  tasks: [{name: a, dataset: data/a.jsonl, field: test}]\n", ["field", ".jsonl"]),
}


@pytest.mark.parametrize("name", sorted(BAD_SUMMARIES))
def test_bad_summary_one_line_exit_2_nothing_touched(built, name, tmp_path):
    content, needles = BAD_SUMMARIES[name]
    bad = built["folder"] / f"bad-{name}.yaml"
    bad.write_bytes(content)
    # run from an unrelated cwd: nothing may appear there either
    proc = run_agent(f"experiment={bad}", "consumer=datasets", env=built["env"], cwd=tmp_path)
    line = assert_one_error_line(proc, 2)
    for needle in needles:
        assert needle in line, line
    assert str(bad) in line, "the message names the summary file"
    assert built["manifest"].read_bytes() == built["bytes"], "earlier manifest must stay byte-identical"
    assert files_under(Path(built["env"]["HF_DATASETS_CACHE"])) == built["files"], "caches untouched"
    assert (built["folder"] / "logs" / "cluster-agent.log").read_bytes() == built["log"]
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("override", ["polcy=stop", "policy=maybe", "consumer.kind=torch", "jobs=0"])
def test_bad_override_leaves_an_earlier_manifest_alone(built, override, tmp_path):
    summary = built["folder"] / "experiment_summary.yaml"
    proc = run_agent(f"experiment={summary}", override, env=built["env"], cwd=tmp_path)
    assert_one_error_line(proc, 2)
    assert built["manifest"].read_bytes() == built["bytes"]
    assert files_under(Path(built["env"]["HF_DATASETS_CACHE"])) == built["files"]


@pytest.mark.parametrize("how", ["missing", "folder"])
def test_unreadable_summary_path(built, how, tmp_path):
    # (a folder holding experiment_summary.yaml means that file: tests/test_overrides.py)
    target = tmp_path / "nope.yaml" if how == "missing" else built["folder"] / "data"
    proc = run_agent(f"experiment={target}", env=built["env"], cwd=tmp_path)
    line = assert_one_error_line(proc, 2)
    assert str(target) in line
    assert ("no such file" if how == "missing" else "a folder without experiment_summary.yaml") in line
    assert built["manifest"].read_bytes() == built["bytes"]
    # a bad experiment= leaves no logs/ or .cluster-agent/ folder anywhere
    assert list(tmp_path.iterdir()) == []
    assert not (built["folder"].parent / "logs").exists()


def test_relative_paths_resolve_against_the_summary_folder_not_the_cwd(tmp_path):
    folder = tmp_path / "sweep"
    write_records(folder / "data" / "a.json", 3)
    summary = write_summary(folder, [{"name": "a", "dataset": "data/a.json"},
                                     {"name": "b", "dataset": "./data/../data/a.json"}])
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "data").mkdir(parents=True)  # a decoy data/ folder in the cwd
    proc = run_agent("experiment=../sweep/experiment_summary.yaml", "action=plan", "output=json",
                     "consumer=datasets", cwd=elsewhere)
    assert proc.returncode == 0, proc.stderr
    plan = json.loads(proc.stdout)
    want = str(folder / "data" / "a.json")
    assert [e["source"] for e in plan["entries"]] == [want], "one normalised absolute path"
    assert plan["entries"][0]["tasks"] == ["a", "b"]
    assert plan["manifest"] == str(folder / ".cluster-agent" / "manifest.json")
    assert summary.exists()


def test_tasks_without_dataset_inherit_training_path(tmp_path):
    folder = tmp_path / "exp"
    summary = write_summary(folder, [{"name": "fit", "field": "validation"}, {"name": "plain"}],
                            training="data/train.json")
    s = read_summary(summary)
    assert [(t.name, t.dataset, t.inherited) for t in s.tasks] == [
        ("fit", "data/train.json", True), ("plain", "data/train.json", True)]
    entries = make_plan(s, "train", "test")
    assert [(e.call.data_files, e.call.field, e.tasks) for e in entries] == [
        (str(folder / "data" / "train.json"), "validation", ["fit"]),
        (str(folder / "data" / "train.json"), "test", ["plain"])]


def test_per_task_field_and_split_and_default(tmp_path):
    folder = tmp_path / "exp"
    summary = write_summary(folder, [
        {"name": "default", "dataset": "d.json"},
        {"name": "by-field", "dataset": "d.json", "field": "validation"},
        {"name": "by-split-key", "dataset": "d.json", "split": "train"},  # cruijff_kit spelling
    ])
    entries = make_plan(read_summary(summary), "train", "test")
    assert [(e.call.field, e.call.split, e.tasks) for e in entries] == [
        ("test", "train", ["default"]), ("validation", "train", ["by-field"]), ("train", "train", ["by-split-key"])]
    # the consumer's default field is configurable
    entries = make_plan(read_summary(summary), "train", "eval")
    assert entries[0].call.field == "eval"


@pytest.mark.parametrize("name,builder,field", [
    ("d.json", "json", "test"), ("d.jsonl", "json", None), ("d.JSONL", "json", None),
    ("d.csv", "csv", None), ("d.parquet", "parquet", None)])
def test_builder_from_extension(tmp_path, name, builder, field):
    summary = write_summary(tmp_path, [{"name": "t", "dataset": name}])
    (entry,) = make_plan(read_summary(summary), "train", "test")
    assert (entry.call.builder, entry.call.field) == (builder, field)
    assert entry.call.kwargs() == ({"data_files": str(tmp_path / name), "field": field} if field
                                   else {"data_files": str(tmp_path / name)})


def test_one_entry_per_unique_consumer_call(tmp_path):
    summary = write_summary(tmp_path, [
        {"name": "t1", "dataset": "shared.json"},
        {"name": "t2", "dataset": "shared.json"},
        {"name": "t3", "dataset": str(tmp_path / "shared.json")},  # absolute spelling, same call
        {"name": "t4", "dataset": "shared.json", "field": "validation"},
        {"name": "t5", "dataset": "other.jsonl"},
    ])
    entries = make_plan(read_summary(summary), "train", "test")
    assert [(Path(e.call.data_files).name, e.call.field, e.tasks) for e in entries] == [
        ("shared.json", "test", ["t1", "t2", "t3"]),
        ("shared.json", "validation", ["t4"]),
        ("other.jsonl", None, ["t5"])]


def test_bundled_example_has_the_issue_shape():
    """At least three tasks, two sharing one file, one inheriting data.training.path."""
    from agent.config import EXAMPLE_SUMMARY

    doc = yaml.safe_load(EXAMPLE_SUMMARY.read_text())
    for key in ("experiment", "data", "runs", "evaluation"):
        assert key in doc
    assert "matrix" in doc["evaluation"]
    s = read_summary(EXAMPLE_SUMMARY)
    assert len(s.tasks) >= 3 and any(t.inherited for t in s.tasks)
    entries = make_plan(s, "train", "test")
    assert any(len(e.tasks) >= 2 for e in entries)
    for e in entries:
        if e.call.builder == "json" and e.call.field:
            data = json.loads(Path(e.call.data_files).read_text())
            assert {"train", "validation", "test"} <= set(data)
            assert set(data["test"][0]) == {"input", "output"}
    assert all(os.path.isabs(e.call.data_files) for e in entries)


def test_summary_without_read_permission():
    """Run as an ordinary user (root reads anything): a mode-000 summary is one line, exit 2."""
    import shutil
    import subprocess

    from conftest import CLI
    from corehelp import as_unprivileged, shared_tmp

    prefix = as_unprivileged()
    base = shared_tmp("ca-perm-")
    try:
        summary = write_summary(base, [{"name": "a", "dataset": "a.json"}])
        summary.chmod(0o000)
        proc = subprocess.run([*prefix, CLI, f"experiment={summary}"], capture_output=True, text=True,
                              cwd=base, env=dict(os.environ, HOME=str(base), XDG_CACHE_HOME=str(base / "xdg")),
                              timeout=300)
        line = assert_one_error_line(proc, 2)
        assert str(summary) in line and "permission denied" in line
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_eval_condition_resolves_through_the_configured_folder(tmp_path):
    folder = tmp_path / "exp"
    write_records(folder / "conds" / "easy.json", 2)
    summary = write_summary(folder, [{"name": "t", "eval_condition": "easy"}])
    proc = run_agent(f"experiment={summary}", "action=plan", "output=json", "consumer=datasets",
                     "conditions.dir=conds", "conditions.pattern={condition}.json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    (entry,) = json.loads(proc.stdout)["entries"]
    assert entry["source"] == str(folder / "conds" / "easy.json") and entry["action"] == "build"
    # without a configured folder: one clear line, exit 2
    proc = run_agent(f"experiment={summary}", "action=plan", "consumer=datasets", cwd=tmp_path)
    line = assert_one_error_line(proc, 2)
    assert "eval_condition 'easy'" in line and "conditions.dir" in line


def test_client_order_for_data_paths_without_cells(tmp_path):
    """eval_condition (hash in the file name), task dataset, run eval_dataset_path, run
    dataset_path, data.training.path; every string kept as written."""
    from scaffold import CONDITION_HASH, build

    s = build(tmp_path)
    exp = str(s.experiment)
    summary = read_summary(s.summary)
    got = [(t.name, t.dataset, t.runs, t.origin) for t in summary.tasks]
    assert ("heldout", f"{exp}/conditions/heldout_test_{CONDITION_HASH}.json", (), "eval_condition") in got
    assert ("acs_relative", "../data/acs.json", (), "dataset") in got
    assert ("cap_slashes", f"{exp}/data//words.json", (), "dataset") in got
    assert ("cap_tilde", "~/cruijff-data/words.json", (), "dataset") in got
    assert [g for g in got if g[0] == "cap_run"] == [
        ("cap_run", f"{exp}/data/words_a.json", ("run_a",), "runs[0].parameters.dataset_path"),
        ("cap_run", f"{exp}/data/words_b_eval.json", ("run_b",), "runs[1].parameters.eval_dataset_path"),
        ("cap_run", f"{exp}/data/words.json", ("base",), "data.training.path")]
    # the same strings the scaffolded cells pass (cells are the truth; the summary agrees here)
    from agent.cells import discover

    for call in discover(s.experiment):
        match = [t for t in summary.tasks if t.name == call.summary_task and (not t.runs or call.run in t.runs)]
        assert [t.dataset for t in match] == [call.data_files], call.cell


def test_two_condition_files_are_refused(tmp_path):
    folder = tmp_path / "exp"
    for h in ("aaaa1111", "bbbb2222"):
        write_records(folder / "conds" / f"easy_test_{h}.json", 2)
    summary = write_summary(folder, [{"name": "t", "eval_condition": "easy"}])
    with pytest.raises(SummaryError, match=r"eval_condition 'easy' matches 2 files in conds \(easy_test_aaaa1111.json, "
                                           r"easy_test_bbbb2222.json\)"):
        read_summary(summary, Path("conds"))


# --- the parse memo (issue 14): an unchanged re-run need not import PyYAML -------------------

MEMO_PROBE = """
import json, sys
from pathlib import Path
from agent import confcache
from agent.summary import read_summary
s = read_summary(Path(sys.argv[1]), memo=True)
print(json.dumps({"yaml": "yaml" in sys.modules, "name": s.name,
                  "tasks": [[t.name, t.dataset, t.field, t.field_set] for t in s.tasks]}))
"""


def _memo_read(summary: Path) -> dict:
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", MEMO_PROBE, str(summary)], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def _plain_read(summary: Path) -> dict:
    s = read_summary(summary)
    return {"name": s.name, "tasks": [[t.name, t.dataset, t.field, t.field_set] for t in s.tasks]}


def test_summary_memo_gives_the_yaml_parse_and_follows_every_edit(tmp_path):
    memo = Path(os.environ["CLUSTER_AGENT_CONFIG_MEMO"])
    summary = write_summary(tmp_path / "exp", [{"name": "a", "dataset": "data/a.json", "field": "test"},
                                               {"name": "b", "dataset": "data/b.jsonl"}])
    first, second = _memo_read(summary), _memo_read(summary)
    assert first["yaml"] is True and second["yaml"] is False, "the second read must come from the memo"
    assert {k: v for k, v in second.items() if k != "yaml"} == _plain_read(summary)
    assert len(list(memo.glob("summary-*.json"))) == 1
    # the same size and mtime, other bytes: the memo is keyed on the bytes, not the stat
    text = summary.read_text()
    stat = summary.stat()
    summary.write_text(text.replace("data/a.json", "data/x.json"))
    os.utime(summary, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    third = _memo_read(summary)
    assert third["yaml"] is True and third["tasks"][0][1] == "data/x.json"
    assert {k: v for k, v in third.items() if k != "yaml"} == _plain_read(summary)


def test_summary_that_json_cannot_carry_is_parsed_by_yaml_every_time(tmp_path):
    """A date (or a non-string key) would come back as a string from JSON: never memoised."""
    memo = Path(os.environ["CLUSTER_AGENT_CONFIG_MEMO"])
    folder = tmp_path / "exp"
    folder.mkdir()
    summary = folder / "experiment_summary.yaml"
    summary.write_text("experiment: {name: dated, created: 2026-12-01}\n"
                       "evaluation:\n  tasks:\n    - {name: a, dataset: data/a.json}\n")
    assert _memo_read(summary)["yaml"] is True
    assert _memo_read(summary)["yaml"] is True
    assert not list(memo.glob("summary-*.json"))
