"""The entry model (issue 9): one rule for "still good", one home for paths, consumers
as plugins — and the bugs the old spread-out code had, each shown as a user sees it.

Real `datasets` / inspect-ai builds into temporary caches (conftest.caches).
"""

from __future__ import annotations

import json
import os
from pathlib import Path


from conftest import files_under, read_manifest, run_agent, write_records, write_summary
from corehelp import events, messages


def _two_task_experiment(tmp_path: Path) -> Path:
    write_records(tmp_path / "exp" / "data" / "a.json", 4)
    write_records(tmp_path / "exp" / "data" / "b.json", 6)
    return write_summary(tmp_path / "exp", [{"name": "a", "dataset": "data/a.json"},
                                            {"name": "b", "dataset": "data/b.json"}])


# --- assess: the one rule ------------------------------------------------------------------


def test_assess_is_the_rule_of_the_prebuild_the_shared_record_and_the_gate(tmp_path, caches):
    """The pre-build (plan), the gate and the shared-record check agree on every change."""
    summary = _two_task_experiment(tmp_path)
    assert run_agent(f"experiment={summary}", "policy=stop").returncode == 0  # consumer=inspect
    data = summary.parent / "data" / "a.json"
    st = data.stat()
    # mtime only (content identical): a new HF key for every consumer, so the gate refuses
    # what the pre-build would rebuild (the old gate let inspect-manifest jobs through)
    os.utime(data, ns=(st.st_atime_ns, st.st_mtime_ns + 3_000_000_000))
    plan = json.loads(run_agent(f"experiment={summary}", "action=plan", "output=json").stdout)
    row = next(r for r in plan["entries"] if r["tasks"] == ["a"])
    assert row["action"] == "build" and "new mtime" in row["reason"]
    gate = run_agent(f"experiment={summary}", "action=check", "task=a")
    assert gate.returncode == 3 and "new mtime" in gate.stderr, gate.stderr
    assert run_agent(f"experiment={summary}", "action=check", "task=b").returncode == 0
    from agent.build import record_still_valid
    from agent.entry import EntryRecord
    from agent.fingerprint import fingerprint

    entry = next(e for e in read_manifest(summary)["entries"] if e["tasks"] == ["a"])
    assert not record_still_valid(entry, fingerprint(str(data)), "inspect")
    assert EntryRecord.parse(entry).status.value == "built"
    # the pre-build rebuilds it; then all three agree it is good again
    again = run_agent(f"experiment={summary}", "policy=stop")
    assert again.returncode == 0 and "1 rebuilt" in again.stdout and "1 unchanged" in again.stdout, again.stdout
    assert run_agent(f"experiment={summary}", "action=check", "task=a").returncode == 0
    entry = next(e for e in read_manifest(summary)["entries"] if e["tasks"] == ["a"])
    assert record_still_valid(entry, fingerprint(str(data)), "inspect")


# --- paths: one home -------------------------------------------------------------------------


def test_two_summaries_in_one_folder_never_share_a_manifest(tmp_path, caches):
    summary = _two_task_experiment(tmp_path)
    other = summary.with_name("ablation.yaml")
    other.write_text("evaluation:\n  tasks: [{name: c, dataset: data/b.json}]\n")
    assert run_agent(f"experiment={summary}", "consumer=datasets", "policy=stop").returncode == 0
    # the second summary has not been pre-built: its gate must not read the first's manifest
    gate = run_agent(f"experiment={other}", "action=check")
    assert gate.returncode == 3 and "no manifest" in gate.stderr and "ablation.manifest.json" in gate.stderr
    assert run_agent(f"experiment={other}", "consumer=datasets", "policy=stop").returncode == 0
    state = summary.parent / ".cluster-agent"
    assert sorted(p.name for p in state.glob("*.json")) == ["ablation.manifest.json", "manifest.json"]
    assert [e["tasks"] for e in json.loads((state / "ablation.manifest.json").read_text())["entries"]] == [["c"]]
    assert len(read_manifest(summary)["entries"]) == 2, "the first manifest is untouched"
    assert (summary.parent / "logs" / "cluster-agent-ablation.log").is_file()


def test_state_dir_in_a_site_profile_is_where_the_gate_looks(tmp_path, caches):
    """site.state_dir moves the manifest; the gate (any path through the CLI) finds it."""
    summary = _two_task_experiment(tmp_path)
    state = tmp_path / "state"
    args = (f"experiment={summary}", f"site.state_dir={state}")
    assert run_agent(*args, "consumer=datasets", "policy=stop").returncode == 0
    assert (state / ".cluster-agent" / "manifest.json").is_file()
    assert not (summary.parent / ".cluster-agent").exists()
    ok = run_agent(*args, "action=check")
    assert ok.returncode == 0 and str(state / ".cluster-agent" / "manifest.json") in ok.stderr, ok.stderr
    assert "GATE_OK" in (state / "logs" / "cluster-agent.log").read_text(), "gate lines reach the log file"


def test_state_dir_in_the_personal_config_is_honoured_by_the_fast_gate(tmp_path, caches, no_user_config):
    """The old fast gate read the manifest beside the summary even when the personal config
    moved it (now: a profile in ~/.config/cluster-agent chosen by its user/default.yaml)."""
    summary = _two_task_experiment(tmp_path)
    state = tmp_path / "state"
    (no_user_config / "site").mkdir(parents=True)
    (no_user_config / "site" / "moved.yaml").write_text(f"defaults: [local, _self_]\nname: moved\nstate_dir: {state}\n")
    (no_user_config / "user").mkdir(parents=True)
    (no_user_config / "user" / "default.yaml").write_text("defaults:\n  - override /site: moved\n")
    assert run_agent(f"experiment={summary}", "consumer=datasets", "policy=stop").returncode == 0
    assert (state / ".cluster-agent" / "manifest.json").is_file()
    gate = run_agent(f"experiment={summary}", "action=check")
    assert gate.returncode == 0, gate.stderr
    assert str(state / ".cluster-agent" / "manifest.json") in gate.stderr


# --- consumers: the job's consumer, not the manifest's ----------------------------------------


def test_a_datasets_manifest_does_not_let_inspect_jobs_through(tmp_path, caches):
    summary = _two_task_experiment(tmp_path)
    assert run_agent(f"experiment={summary}", "consumer=datasets", "policy=stop").returncode == 0
    assert run_agent(f"experiment={summary}", "action=check", "consumer=datasets").returncode == 0
    gate = run_agent(f"experiment={summary}", "action=check", "consumer=inspect")
    assert gate.returncode == 3, gate.stderr
    (line,) = messages(gate.stderr, "GATE_REFUSED")
    assert "consumer=datasets" in line and "consumer=inspect" in line and "inspect cache was not pre-built" in line


def test_a_narrowed_run_after_a_consumer_switch_keeps_the_other_entries_refused(tmp_path, caches):
    summary = _two_task_experiment(tmp_path)
    assert run_agent(f"experiment={summary}", "consumer=datasets", "policy=stop").returncode == 0
    narrowed = run_agent(f"experiment={summary}", "consumer=inspect", "task=a", "policy=stop")
    assert narrowed.returncode == 0, narrowed.stderr
    # the recap counts this run's entry only, not the one it never touched
    assert "1 built, 0 unchanged, 0 rebuilt" in narrowed.stdout, narrowed.stdout
    changed = messages(narrowed.stderr, "VERSIONS_CHANGED")
    assert changed and "consumer datasets -> inspect" in changed[0]
    doc = read_manifest(summary)
    assert sorted(t for e in doc["entries"] for t in e["tasks"]) == ["a", "b"], "nothing dropped"
    assert run_agent(f"experiment={summary}", "action=check", "task=a", "consumer=inspect").returncode == 0
    gate = run_agent(f"experiment={summary}", "action=check", "task=b", "consumer=inspect")
    assert gate.returncode == 3 and "another context" in gate.stderr and "consumer datasets -> inspect" in gate.stderr


# --- logging: each entry once, after verification ----------------------------------------------


def test_an_entry_that_fails_verification_is_logged_once(tmp_path, caches):
    """A job environment that points inspect-ai elsewhere: the verification misses, and
    the entry's one line is CACHE_FAILED (the old run logged CACHE_BUILT first)."""
    summary = _two_task_experiment(tmp_path)
    elsewhere = tmp_path / "elsewhere-xdg"
    proc = run_agent(f"experiment={summary}", f"+site.env.XDG_CACHE_HOME={elsewhere}", "policy=stop", "task=a")
    assert proc.returncode == 1, proc.stderr
    lines = [(ev, msg) for ev, msg in events(proc.stderr) if ev.startswith("CACHE_") and "a.json" in msg]
    assert [ev for ev, _ in lines] == ["CACHE_FAILED"], lines
    assert "verification:" in lines[0][1] and "field=test" in lines[0][1] and "needed by task a" in lines[0][1]


def test_missing_source_names_its_tasks_everywhere(tmp_path, caches):
    summary = write_summary(tmp_path / "exp", [{"name": "a", "dataset": "data/gone.json"},
                                               {"name": "b", "dataset": "data/gone.json", "field": "validation"}])
    proc = run_agent(f"experiment={summary}", "consumer=datasets", "policy=continue")
    assert proc.returncode == 0
    missing = messages(proc.stderr, "CACHE_MISSING")
    assert len(missing) == 2 and len(set(missing)) == 2, "two calls of one file must not look like duplicates"
    assert any("field=test" in m and "needed by task a" in m for m in missing), missing
    assert any("field=validation" in m and "needed by task b" in m for m in missing), missing
    gate = run_agent(f"experiment={summary}", "action=check", "task=a")
    assert gate.returncode == 3
    (line,) = messages(gate.stderr, "GATE_REFUSED")
    assert "did not exist when the pre-build ran" in line and "missing in the manifest" not in line
    assert files_under(caches["hf"]) == {} or all(".cluster-agent" in p for p in files_under(caches["hf"]))
