"""Two nodes on a real shared file system (scripts/sharedfs-up.sh): sshfs and MooseFS.

Each node is a mount + UTS namespace (hostname nodeA / nodeB) with its own client mount
of one export at the same path, so each caches attributes and directory entries on its
own, as NFS / GPFS clients do. The scenarios are those of bench/sharedfs_trials.py (one
trial each here; the bench runs >= 5 for docs/robustness.md). Needs root (namespaces,
FUSE); CI runs as root through scripts/test.sh.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))

import sharedfs_trials as T  # noqa: E402

pytestmark = [pytest.mark.sharedfs, pytest.mark.skipif(os.geteuid() != 0, reason="the rig needs root")]


@pytest.fixture(scope="module", params=["sshfs", "moosefs"])
def rig(request):
    """The rig of one file system, up for this module's tests of that kind, then down
    (also when a test fails: sharedfs-down.sh unmounts in each node first)."""
    T.up(request.param)
    try:
        yield request.param
    finally:
        T.down()


def test_cold_race_without_the_tool_is_reported(rig, capsys):
    """Not asserted beyond "the jobs ran": it shows whether the rig reproduces the
    users' failure (docs/robustness.md has the counts over many trials)."""
    res = T.sc_cold(0, {})
    with capsys.disabled():
        print(f"\n[{rig}] cold race, 8+8 jobs, no cluster-agent: {res['failures']} failed, "
              f"{res['wrong_rows']} wrong rows {res['errors']}")
    assert res["jobs"] == 16


def test_agent_on_a_then_gate_and_12_jobs_on_b(rig):
    res = T.sc_a_then_b(0, {})
    assert res["jobs"] == 12
    assert (res["failures"], res["wrong_rows"], res["false_refused"]) == (0, 0, 0), res


@pytest.mark.slow
@pytest.mark.timeout(2400)  # 12 real lm_eval processes, each indexing lm-eval's task YAMLs, on 2 cores
@pytest.mark.skipif(importlib.util.find_spec("lm_eval") is None, reason="lm-eval not installed: pip install -e '.[lm-eval]'")
def test_lm_eval_agent_on_a_then_gate_and_12_lm_eval_jobs_on_b(rig, capsys):
    """consumer=lm_eval pre-builds on A; 12 real `lm_eval run --model dummy` jobs on B,
    each gated first (the recipe's steps): all pass, none builds, nothing written."""
    res = T.sc_lm_eval(0, {})
    with capsys.disabled():
        print(f"\n[{rig}] lm_eval: agent {res['agent_status']}, {res.get('jobs')} jobs in {res.get('jobs_s')} s")
    assert res["agent_status"] == ["built", "built", "built"], res  # 3 calls: qa.jsonl is shared by 2 tasks
    assert res["jobs"] == 12 and res["gated"] == 12, res
    assert res["lockless_active"] is True and res["cache_paths"] > 0, res
    assert (res["failures"], res["false_refused"], res["built_itself"]) == (0, 0, 0), res
    assert res["written"] == [], res  # nothing created, modified or removed under the HF cache root


def test_two_agents_at_once_build_each_entry_once(rig):
    res = T.sc_two_agents(0, {})
    assert res["failures"] == 0, res
    assert res["built"] == 2, res  # 2 datasets, each built by exactly one of the agents
    assert res["wrong_rows"] == 0


def test_rewrite_with_same_size_and_mtime_is_rebuilt_and_gated(rig):
    """B rewrites the data keeping size and mtime; at once the gate on both nodes refuses
    and A's next pre-build rebuilds it (no CACHE_UNCHANGED from a cached stat)."""
    res = T.sc_rewrite(0, {})
    assert res["agent_status"] == ["rebuilt"], res
    assert (res["false_ready"], res["false_refused"], res["wrong_rows"], res["failures"]) == (0, 0, 0, 0), res


def test_manifest_replaced_while_the_other_nodes_gate_reads_it(rig):
    res = T.sc_torn(0, {}, seconds=5)
    assert res["failures"] == 0 and res["checks"] > 10, res
    assert res["false_refused"] == 0, res["refusals"]


def test_kill_9_of_the_lock_holder_while_the_other_node_waits(rig):
    res = T.sc_kill(0, {})
    assert res["failures"] == 0, res
    assert res["b_status"] in (["built"], ["rebuilt"]), res
    assert res["wrong_rows"] == 0


def test_lock_auto_detects_the_mount_and_flock_is_warned_about(rig):
    t = T.Trial("auto", 0)
    first = t.agent("A", "datasets")
    assert first.returncode == 0, first.stderr
    fs = json.loads(T.on("A", ["cat", str(t.manifest("datasets"))]).stdout)["filesystem"]
    assert fs["lock"] == "soft" and fs["configured"] == "auto"
    assert fs["hf_cache"]["mount"] == str(T.SHARED) and fs["hf_cache"]["network"] is True
    assert fs["hf_cache"]["type"] == ("fuse.sshfs" if rig == "sshfs" else "fuse")
    forced = t.agent("A", "datasets", "site.lock=flock")
    warns = [line for line in forced.stderr.splitlines() if "LOCK_KIND" in line]
    assert forced.returncode == 0 and len(warns) >= 1
    assert str(T.SHARED) in warns[0] and "site.lock=soft" in warns[0]


def test_folder_made_by_the_other_node_behind_a_negative_entry(rig):
    """B looks a folder up (caching "no such file"), A creates it: B's ensure_dir still
    succeeds, where os.makedirs(exist_ok=True) may say File exists (reported)."""
    base = T.SHARED / f"neg-{os.getpid()}"
    T.on("A", ["mkdir", "-p", str(base)])
    probe = ("import os,sys; from agent.netfs import ensure_dir; from pathlib import Path; p=sys.argv[1]\n"
             "os.path.exists(p) if sys.argv[2]=='look' else None\n"
             "if sys.argv[2]=='make':\n"
             " try: os.makedirs(p, exist_ok=True); print('makedirs ok')\n"
             " except OSError as e: print('makedirs', e.errno)\n"
             " ensure_dir(Path(p)); print('ensure_dir ok', os.path.isdir(p))")
    for name in ("d1", "d2"):
        path = str(base / name)
        T.on("B", [sys.executable, "-c", probe, path, "look"])
        T.on("A", ["mkdir", path])
        out = T.on("B", [sys.executable, "-c", probe, path, "make"])
        assert out.returncode == 0, out.stderr
        assert "ensure_dir ok True" in out.stdout, out.stdout


def test_lost_exclusive_create_is_not_an_error(rig):
    """A soft-lock generation created by A, seen stale by B: B's link() loses (EEXIST, or
    EPERM on sshfs) and B's attempt returns False (no exception, no st_nlink trust)."""
    lockdir = T.SHARED / f"lk-{os.getpid()}"
    T.on("A", ["mkdir", "-p", str(lockdir)])
    code = ("import sys; from pathlib import Path; from agent.locks import SoftLock\n"
            "l=SoftLock(Path(sys.argv[1])/'e.lock', 5, 3600); l.generations()\n"
            "if sys.argv[2]=='own': print(l._create(0))\n"
            "if sys.argv[2]=='lose': print(l._create(0), l.owner()['host'])")
    T.on("B", [sys.executable, "-c", code, str(lockdir), "look"])  # B lists first (cache)
    a = T.on("A", [sys.executable, "-c", code, str(lockdir), "own"])
    assert a.stdout.strip() == "True", a.stderr
    b = T.on("B", [sys.executable, "-c", code, str(lockdir), "lose"])
    assert b.returncode == 0, b.stderr
    assert b.stdout.split() == ["False", "nodeA"], b.stdout
