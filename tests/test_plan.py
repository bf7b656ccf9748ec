"""action=plan (writes nothing, lists what prebuild would do) and real builds of every
builder the plan picks from a file's extension (.json + field, .jsonl, .csv, .parquet)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from conftest import files_under, run_agent, write_records, write_summary
from corehelp import assert_one_error_line, load_rows_many, messages


def _everything_under(folder: Path):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def test_plan_on_a_fresh_example_writes_nothing(example, caches, tmp_path):
    before = _everything_under(example.parent)
    proc = run_agent(f"experiment={example}", "action=plan", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "nothing is written" in out and "4 unique datasets" in out
    assert out.count("  build ") == 4
    for call in ("data/words.json', field='test'", "data/acs.json', field='test'", "data/arith.jsonl'",
                 "data/words.json', field='validation'"):
        assert call in out, call
    assert "tasks: capitalization, capitalization_strict" in out
    assert "inspect_ai.dataset.hf_dataset(path='json'" in out, "the default consumer is inspect"
    # nothing written: no manifest, no log, no cache root, nothing in the cwd
    assert _everything_under(example.parent) == before
    assert not (example.parent / ".cluster-agent").exists() and not (example.parent / "logs").exists()
    assert not caches["hf"].exists() and not caches["hf_home"].exists()
    # XDG_CACHE_HOME holds inspect-ai's cache layer; the only thing allowed there is the
    # agent's own config memo (agent/confcache.py, a speed-up outside any cache layer)
    memo = caches["xdg"] / "cluster-agent" / "config"
    stray = [p for p in caches["xdg"].rglob("*") if p.is_file() and memo not in p.parents] \
        if caches["xdg"].exists() else []
    assert stray == [] and not (caches["xdg"] / "inspect_ai").exists()
    assert list(tmp_path.iterdir()) == [p for p in tmp_path.iterdir() if p.name in ("exp", "cache")]


def test_plan_json_lists_calls_tasks_and_roots(example, caches):
    proc = run_agent(f"experiment={example}", "action=plan", "output=json", "consumer=datasets")
    assert proc.returncode == 0, proc.stderr
    plan = json.loads(proc.stdout)
    assert plan["action"] == "plan"
    assert plan["manifest"] == str(example.parent / ".cluster-agent" / "manifest.json")
    assert plan["hf_cache"] == str(caches["hf"])
    rows = plan["entries"]
    assert [(Path(r["source"]).name, r["field"], r["action"]) for r in rows] == [
        ("words.json", "test", "build"), ("acs.json", "test", "build"), ("arith.jsonl", None, "build"),
        ("words.json", "validation", "build")]
    assert rows[0]["tasks"] == ["capitalization", "capitalization_strict"]
    assert rows[0]["call"].startswith("datasets.load_dataset('json', data_files=")
    assert not caches["hf"].exists()


def test_plan_reports_a_missing_file_and_narrows_to_a_task(tmp_path, caches):
    write_records(tmp_path / "a.json", 2)
    summary = write_summary(tmp_path, [{"name": "a", "dataset": "a.json"}, {"name": "gone", "dataset": "gone.json"}])
    proc = run_agent(f"experiment={summary}", "action=plan", "output=json", "consumer=datasets")
    assert proc.returncode == 0, proc.stderr
    rows = {tuple(r["tasks"]): r for r in json.loads(proc.stdout)["entries"]}
    assert rows[("gone",)]["action"] == "missing" and "no such file" in rows[("gone",)]["reason"]
    assert rows[("a",)]["action"] == "build"
    proc = run_agent(f"experiment={summary}", "action=plan", "output=json", "consumer=datasets", "task=a")
    assert [r["tasks"] for r in json.loads(proc.stdout)["entries"]] == [["a"]]
    proc = run_agent(f"experiment={summary}", "action=plan", "consumer=datasets", "task=nope")
    line = assert_one_error_line(proc, 2)
    assert "task=nope" in line and "a, gone" in line
    assert not (tmp_path / ".cluster-agent").exists() and not caches["hf"].exists()


def _formats(folder: Path):
    """One small real file per builder; returns {task: (path, expected rows as dicts)}."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    rows = [{"input": f"j{i}", "output": f"o{i}"} for i in range(5)]
    (folder / "d.json").write_text(json.dumps({"train": rows[:1], "test": rows}))
    out["json"] = (folder / "d.json", rows)
    rows = [{"input": f"l{i}", "output": f"o{i}"} for i in range(4)]
    (folder / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out["jsonl"] = (folder / "d.jsonl", rows)
    rows = [{"input": f"c{i}", "output": f"o{i}"} for i in range(6)]
    with open(folder / "d.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["input", "output"])
        writer.writeheader()
        writer.writerows(rows)
    out["csv"] = (folder / "d.csv", rows)
    rows = [{"input": f"p{i}", "output": f"o{i}"} for i in range(7)]
    pq.write_table(pa.Table.from_pylist(rows), folder / "d.parquet")
    out["parquet"] = (folder / "d.parquet", rows)
    return out


@pytest.mark.slow
def test_every_builder_builds_for_real(tmp_path, caches):
    """.json with a field, .jsonl, .csv, .parquet: built with the default consumer (inspect:
    both layers) and verified; a job's load_dataset then returns exactly the file's rows."""
    files = _formats(tmp_path / "exp" / "data")
    summary = write_summary(tmp_path / "exp", [{"name": k, "dataset": f"data/{p.name}"} for k, (p, _) in files.items()])
    proc = run_agent(f"experiment={summary}")
    assert proc.returncode == 0, proc.stderr
    assert len(messages(proc.stderr, "CACHE_BUILT")) == 4
    doc = json.loads((summary.parent / ".cluster-agent" / "manifest.json").read_text())
    by_task = {e["tasks"][0]: e for e in doc["entries"]}
    builders = {k: (e["call"]["builder"], e["call"]["field"]) for k, e in by_task.items()}
    assert builders == {"json": ("json", "test"), "jsonl": ("json", None), "csv": ("csv", None),
                        "parquet": ("parquet", None)}
    before = files_under(caches["hf"])
    got = load_rows_many([by_task[task]["call"] for task in files], doc["env"])
    for (task, (path, rows)), loaded in zip(files.items(), got):
        entry = by_task[task]
        assert entry["status"] == "built" and entry["rows"] == len(rows)
        assert set(entry["layers"]) == {"hf", "inspect"}
        assert loaded == rows
    assert files_under(caches["hf"]) == before, "every consumer call was a cache hit"
