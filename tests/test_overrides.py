"""Strict overrides and output contracts, as a user meets them: `+` typos and no-op deletions
are one line with a suggestion (exit 2); hydra.* is honoured (hydra.searchpath) or refused;
with output=json every exit prints exactly one JSON document; output=shell only with
action=check; experiment=<folder> the same in every action; --cfg all refused clearly."""

from __future__ import annotations

import json

import pytest

from conftest import run_agent, write_records, write_summary
from corehelp import assert_one_error_line

PLUS_TYPOS = [
    ("+site.hf_cach=/x", "did you mean 'hf_cache'"),
    ("+policy.mod=stop", "did you mean 'mode'"),
    ("+site.slurm.acount=lab", "did you mean 'account'"),
    ("+site.hf_cache=/x", "site.hf_cache=/x"),  # exists: drop the +
    ("+jobs=2", "jobs=2"),
    ("+site=della", "site=della"),
    ("+nonsense=1", "unknown key 'nonsense'"),
]


@pytest.mark.parametrize("override,hint", PLUS_TYPOS, ids=[o for o, _ in PLUS_TYPOS])
@pytest.mark.parametrize("action", ["prebuild", "plan", "check"])
def test_plus_only_adds_open_keys(override, hint, action, tmp_path):
    line = assert_one_error_line(run_agent(override, f"action={action}", cwd=tmp_path))
    assert hint in line, line


def test_plus_adds_a_job_environment_variable():
    proc = run_agent("+site.env.MY_VAR=1", "--cfg", "job")
    assert proc.returncode == 0 and "MY_VAR: '1'" in proc.stdout


@pytest.mark.parametrize("override,hint", [
    ("~site.umask", "write site.umask=null"),
    ("~jobs", "cannot be deleted"),
    ("~policy", "choose one with policy=NAME"),
    ("~site.umsk", "did you mean 'umask'"),
])
def test_deleting_schema_keys_says_what_to_do(override, hint):
    line = assert_one_error_line(run_agent(override, "action=plan"))
    assert hint in line and "does not exist" not in line, line


@pytest.mark.parametrize("override", ["hydra.nonsense=1", "hydra.verbose=true", "hydra.run.dir=/tmp/x",
                                      "hydra/launcher=basic", "+hydra.foo=1"])
def test_hydra_settings_are_one_line(override):
    line = assert_one_error_line(run_agent(override, "action=plan"))
    assert "hydra.searchpath" in line  # names the one it honours


ERRORS = [
    ["+site.hf_cach=/x"], ["site=nope"], ["hydra.nonsense=1"], ["experiment=/nonexistent/s.yaml"],
    ["jobs=0"], ["--cfg", "hydra"], ["output=json", "action=check", "manifest=../../escape.json"],
    ["--bogus"], ["policy=della,local"],
]


@pytest.mark.parametrize("args", ERRORS, ids=[" ".join(a) for a in ERRORS])
def test_every_json_error_is_one_document(args, tmp_path):
    proc = run_agent(*args, "output=json", cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    doc = json.loads(proc.stdout)  # exactly one document: json.loads refuses anything after it
    assert doc["exit"] == 2 and doc["error"] and "\n" not in doc["error"]


def test_json_on_exit_0_1_3(tmp_path, caches):
    data = write_records(tmp_path / "exp" / "data" / "q.json", 3)
    summary = write_summary(tmp_path / "exp", [{"name": "ok", "dataset": str(data)},
                                               {"name": "gone", "dataset": str(tmp_path / "missing.json")}])
    gate = run_agent(f"experiment={summary}", "action=check", "output=json")  # no manifest yet
    assert gate.returncode == 3 and json.loads(gate.stdout)["gate"] == "refused"
    stop = run_agent(f"experiment={summary}", "policy=stop", "consumer=datasets", "verify=false", "output=json")
    assert stop.returncode == 1 and json.loads(stop.stdout)["decision"] == "stop"
    plan = run_agent(f"experiment={summary}", "action=plan", "output=json")
    assert plan.returncode == 0 and json.loads(plan.stdout)["action"] == "plan"


@pytest.mark.parametrize("action", ["prebuild", "plan"])
def test_output_shell_only_with_check(action, tmp_path, caches):
    proc = run_agent(f"action={action}", "output=shell", cwd=tmp_path)
    line = assert_one_error_line(proc)
    assert "action=check" in line and proc.stdout == ""
    assert not list(tmp_path.rglob("manifest.json"))


def test_experiment_folder_is_accepted_in_every_action(tmp_path, caches):
    data = write_records(tmp_path / "exp" / "data" / "q.json", 3)
    summary = write_summary(tmp_path / "exp", [{"name": "t", "dataset": str(data)}])
    folder = summary.parent
    built = run_agent(f"experiment={folder}", "consumer=datasets", "verify=false", "output=json")
    assert built.returncode == 0, built.stderr
    assert json.loads(built.stdout)["manifest"] == str(folder / ".cluster-agent" / "manifest.json")
    plan = run_agent(f"experiment={folder}", "action=plan", "consumer=datasets", "output=json")
    assert plan.returncode == 0 and json.loads(plan.stdout)["entries"][0]["action"] == "skip"
    for extra in ([], ["consumer=datasets"]):  # the fast gate and the full path
        gate = run_agent(f"experiment={folder}", "action=check", *extra)
        assert gate.returncode == 0, gate.stderr


@pytest.mark.parametrize("action", ["prebuild", "plan", "check"])
def test_folder_without_summary_is_refused_the_same_way(action, tmp_path):
    (tmp_path / "empty").mkdir()
    line = assert_one_error_line(run_agent(f"experiment={tmp_path / 'empty'}", f"action={action}"))
    assert "a folder without experiment_summary.yaml" in line


@pytest.mark.parametrize("what", ["all", "hydra"])
def test_cfg_other_than_job_is_refused_clearly(what):
    line = assert_one_error_line(run_agent("--cfg", what))
    assert f"--cfg {what}" in line and "--cfg job" in line


def test_relative_manifest_says_where_it_lands(tmp_path, caches):
    data = write_records(tmp_path / "exp" / "data" / "q.json", 3)
    summary = write_summary(tmp_path / "exp", [{"name": "t", "dataset": str(data)}])
    for extra in ([], ["consumer=datasets"]):
        proc = run_agent(f"experiment={summary}", "action=check", "manifest=mine.json", *extra, cwd=tmp_path)
        assert "manifest=mine.json is relative" in proc.stderr
        assert str(summary.parent / "mine.json") in proc.stderr


def test_checkout_user_file_is_not_read(tmp_path):
    """conf/user/default.yaml in the shipped conf/ (a checkout's git-ignored file) must not
    reach a run: personal defaults live on the search path."""
    from agent.config import CONF_DIR

    target = CONF_DIR / "user" / "default.yaml"
    if target.exists() or not (CONF_DIR / "user").is_dir():
        pytest.skip("a real conf/user/default.yaml is present (or no conf/user/): not touching it")
    target.write_text("jobs: 7\n")
    try:
        proc = run_agent("--cfg", "job")
        assert "jobs: 1" in proc.stdout and "no longer read" in proc.stderr
    finally:
        target.unlink()
