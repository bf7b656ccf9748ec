"""CI's small version of the benchmark suite (bench/run.py --small): it runs, every
command in it behaves, and it prints the table. No timing is asserted -- timings belong
in bench/ as ratios against the baseline measured in the same run (docs/benchmarks.md).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, write_records, write_summary

BENCH = REPO / "bench"


def _bench(tmp_path: Path, *args: str, timeout: float = 1200) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(BENCH / "run.py"), "--small", "--runs", "1", "--quiet",
                           "--work", str(tmp_path / "work"), "--json", str(tmp_path / "out.json"), *args],
                          capture_output=True, text=True, timeout=timeout)


def _table_rows(stdout: str):
    """The markdown table's data rows as lists of cells."""
    lines = [ln for ln in stdout.splitlines() if ln.startswith("| ") and not ln.startswith("| benchmark")]
    return [[c.strip() for c in ln.strip("|").split("|")] for ln in lines]


def test_baseline_prints_one_line_per_unique_path(tmp_path, caches):
    a = write_records(tmp_path / "data" / "a.json", 4)
    b = write_records(tmp_path / "data" / "b.json", 2)
    summary = write_summary(tmp_path / "exp", [
        {"name": "t1", "dataset": str(a)}, {"name": "t2", "dataset": str(a)},
        {"name": "t3", "dataset": str(b)}, {"name": "t4", "dataset": str(tmp_path / "gone.json")}])
    proc = subprocess.run([sys.executable, str(BENCH / "baseline.py"), str(summary)],
                          capture_output=True, text=True, timeout=300)
    lines = proc.stdout.splitlines()
    assert lines[:2] == [f"OK {a} (4 rows)", f"OK {b} (2 rows)"]
    assert len(lines) == 3 and lines[2].startswith(f"FAILED {tmp_path / 'gone.json'}")
    assert proc.returncode == 1
    assert list(Path(caches["hf"]).glob("json/*/0.0.0/*/dataset_info.json")), "the baseline builds the HF layer"


def test_quick_subset_prints_the_table(tmp_path):
    proc = _bench(tmp_path, "--only", "rerun,scaling,gate")
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = _table_rows(proc.stdout)
    benches = [r[0] for r in rows]
    # the two --small sizes, each for a repeated and a new command line
    assert benches.count("1 unchanged re-run") == 4
    assert {r[1] for r in rows if r[0] == "1 unchanged re-run"} == {
        f"{n} datasets, {what} command line" for n in (3, 6) for what in ("repeated", "new")}
    assert "5 scaling" in benches and benches.count("2 gate") == 2
    for row in rows:
        if row[4] != "-":
            assert float(row[4]) > 0
    assert "median of 1 run(s)" in proc.stdout and "load average before" in proc.stdout
    out = json.loads((tmp_path / "out.json").read_text())
    assert all(len(v) == 1 for v in out["raw"].values())  # --runs 1: one timing per figure
    assert (tmp_path / "work" / "last-table.md").read_text() == proc.stdout


def test_unknown_benchmark_is_a_usage_error(tmp_path):
    proc = _bench(tmp_path, "--only", "rerun,bogus")
    assert proc.returncode == 2
    assert "bogus" in proc.stderr


@pytest.mark.slow
def test_every_benchmark_runs_small(tmp_path):
    proc = _bench(tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    benches = {r[0].split(",")[0] for r in _table_rows(proc.stdout)}
    assert {"1 unchanged re-run", "2 gate", "3 cold build", "4 peak memory", "5 scaling",
            "6 consumer start", "7 disk use"} <= benches
    assert re.search(r"consumer=datasets .*\| [0-9.]+ +\| <= 1.1", proc.stdout)
    # the big cold-build caches are removed after measuring; the data stays for the next run
    caches = tmp_path / "work" / "caches"
    assert not (caches / "cold-one").exists() or not any((caches / "cold-one").rglob("*.arrow"))
    assert (tmp_path / "work" / "data" / "one" / "one0.json").is_file()
