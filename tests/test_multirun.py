"""-m/--multirun as a user meets it: Hydra's sweep grammar over any key, one run (and one
manifest) per combination, a recap line per run, the worst exit code, one JSON document."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import run_agent, write_records, write_summary
from corehelp import assert_one_error_line


def _two_experiments(tmp_path: Path):
    out = []
    for name in ("a", "b"):
        data = write_records(tmp_path / name / "data" / "q.json", 4, prefix=name)
        out.append(write_summary(tmp_path / name, [{"name": f"t{name}", "dataset": str(data)}]))
    return out


def test_two_experiments_by_two_sites_make_four_manifests(tmp_path, caches, no_user_config):
    a, b = _two_experiments(tmp_path)
    root = tmp_path / "mylab-hf"
    (no_user_config / "site").mkdir(parents=True)
    (no_user_config / "site" / "mylab.yaml").write_text(f"defaults: [local, _self_]\nname: mylab\nhf_cache: {root}\n")
    proc = run_agent("-m", f"experiment={a},{b}", "site=local,mylab", "consumer=datasets", "verify=false")
    assert proc.returncode == 0, proc.stderr
    manifests = sorted(tmp_path.rglob("manifest.json"))
    assert len(manifests) == 4, manifests
    assert {m.parent.name for m in manifests} == {"site=local", "site=mylab"}
    for m in manifests:
        doc = json.loads(m.read_text())
        assert doc["decision"] == "proceed"
        assert (doc["env"]["HF_DATASETS_CACHE"] == str(root)) == (m.parent.name == "site=mylab")
    assert list(root.rglob("*.arrow"))  # the user profile's cache root got the builds
    recap = [ln for ln in proc.stdout.splitlines() if ln.lstrip().startswith("[")]
    assert len(recap) == 4 and all("exit 0" in ln for ln in recap), proc.stdout
    # the gate over the same sweep finds the same manifests
    gate = run_agent("-m", "action=check", f"experiment={a},{b}", "site=local,mylab", "output=json")
    doc = json.loads(gate.stdout)
    assert gate.returncode == 0 and [r["result"]["gate"] for r in doc["runs"]] == ["ok"] * 4


def test_exit_code_is_the_worst_and_json_is_one_document(tmp_path, caches):
    data = write_records(tmp_path / "e" / "data" / "q.json", 3)
    summary = write_summary(tmp_path / "e", [{"name": "ok", "dataset": str(data)},
                                             {"name": "gone", "dataset": str(tmp_path / "missing.json")}])
    proc = run_agent("-m", f"experiment={summary}", "policy=continue,stop", "consumer=datasets",
                     "verify=false", "output=json")
    doc = json.loads(proc.stdout)
    assert proc.returncode == 1 and doc["exit"] == 1
    assert [(r["overrides"][-1] if False else r["exit"]) for r in doc["runs"]] == [0, 1]
    assert [r["result"]["decision"] for r in doc["runs"]] == ["proceed", "stop"]


def test_range_and_glob_come_from_hydras_grammar(tmp_path):
    proc = run_agent("-m", "action=plan", "policy=glob(*)", "jobs=range(1,3)", "output=json", cwd=tmp_path)
    doc = json.loads(proc.stdout)
    assert proc.returncode == 0, proc.stderr
    combos = sorted(tuple(sorted(r["overrides"])) for r in doc["runs"])
    assert len(combos) == 6
    assert {o for c in combos for o in c if o.startswith("policy=")} == {"policy=ask", "policy=continue", "policy=stop"}
    assert {o for c in combos for o in c if o.startswith("jobs=")} == {"jobs=1", "jobs=2"}


def test_a_bad_sweep_is_one_line(tmp_path):
    assert_one_error_line(run_agent("-m", "jobs=range(1,", "action=plan", cwd=tmp_path))
    proc = run_agent("-m", "site=local,nope", "action=plan", "output=json", cwd=tmp_path)
    doc = json.loads(proc.stdout)
    assert proc.returncode == 2 and doc["exit"] == 2 and doc["runs"][1]["result"]["exit"] == 2
    assert "output=shell" in assert_one_error_line(run_agent("-m", "action=check", "output=shell", cwd=tmp_path))
