"""Several agents started at the same instant (real processes, real `datasets` builds).

Each entry must be built exactly once across all agents, every agent exits 0, and every
manifest is valid, complete and accepted by the launch gate. Proof of "exactly once":
across all agents' logs, one CACHE_BUILT line per entry (the others log CACHE_UNCHANGED
with "built by another agent"), one shared record per entry, and the Arrow files the
first build wrote are the ones still on disk at the end (same inode, not rewritten).

Three lock set-ups: site.lock=flock; site.lock=soft; and site.lock=soft on a lock-less
file system (tests/lockless/sitecustomize.py makes every flock a no-op, as on NFS/GPFS/
Lustre mounts where flock does not hold across nodes; datasets' own builder lock then
protects nothing either, which is the point).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from pathlib import Path
from typing import Dict, List

import pytest

from tests.conftest import CLI, REPO, write_records, write_summary

LOCKLESS = REPO / "tests" / "lockless"
MODES = {"flock": ("flock", False), "soft": ("soft", False), "soft-lockless": ("soft", True)}


def agent_env(lockless: bool) -> Dict[str, str]:
    env = dict(os.environ)
    if lockless:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(LOCKLESS), env.get("PYTHONPATH")]))
    return env


def start_together(commands: List[List[str]], env: Dict[str, str], timeout: float = 900) -> List[subprocess.CompletedProcess]:
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                              text=True, env=env) for cmd in commands]
    out = []
    deadline = time.monotonic() + timeout
    for cmd, proc in zip(commands, procs):
        stdout, stderr = proc.communicate(timeout=max(1, deadline - time.monotonic()))
        out.append(subprocess.CompletedProcess(cmd, proc.returncode, stdout, stderr))
    return out


def shared_data(folder: Path, n_files: int, rows: int = 20000) -> List[Path]:
    return [write_records(folder / f"d{i}.json", rows + i, prefix=f"f{i}-") for i in range(n_files)]


def events(results: List[subprocess.CompletedProcess], name: str) -> List[str]:
    return [line for r in results for line in r.stderr.splitlines() if f"] {name}: " in line]


def built_sources(results: List[subprocess.CompletedProcess]) -> List[str]:
    out = []
    for line in events(results, "CACHE_BUILT") + events(results, "CACHE_REBUILT"):
        out.append(re.sub(r"^\[[^]]+\] CACHE_(RE)?BUILT: ", "", line).split(" (")[0] + "|" +
                   (re.search(r"field=(\w+)", line).group(1) if "field=" in line else ""))
    return out


def arrow_inodes(hf_root: Path, xdg: Path) -> Dict[str, int]:
    files = list(hf_root.rglob("*.arrow")) + list(xdg.rglob("*.arrow"))
    return {str(p): p.stat().st_ino for p in files}


def check_manifest_and_gate(summary: Path, env: Dict[str, str], n_entries: int) -> None:
    doc = json.loads((summary.parent / ".cluster-agent" / "manifest.json").read_text())
    assert len(doc["entries"]) == n_entries
    assert all(e["status"] in ("built", "unchanged", "rebuilt") for e in doc["entries"]), doc["entries"]
    assert doc["decision"] == "proceed"
    gate = subprocess.run([CLI, f"experiment={summary}", "action=check"], capture_output=True, text=True, env=env)
    assert gate.returncode == 0, gate.stderr


def assert_exactly_once(results, expected: List[str], hf_root: Path, inodes_before: Dict[str, int]) -> None:
    assert [r.returncode for r in results] == [0] * len(results), [r.stderr[-2000:] for r in results if r.returncode]
    assert sorted(built_sources(results)) == sorted(expected), built_sources(results)
    assert not events(results, "CACHE_FAILED") and not [r for r in results if "Traceback" in r.stderr]
    records = list((hf_root / ".cluster-agent" / "entries").glob("*.json"))
    assert len(records) == len(expected)


@pytest.mark.slow
@pytest.mark.parametrize("mode", list(MODES))
def test_eight_agents_same_experiment(tmp_path, caches, mode):
    kind, lockless = MODES[mode]
    data = shared_data(tmp_path / "data", 3)
    tasks = [{"name": f"t{i}", "dataset": str(p)} for i, p in enumerate(data)]
    tasks.append({"name": "t0-again", "dataset": str(data[0])})  # same call: same entry
    summary = write_summary(tmp_path / "exp", tasks)
    env = agent_env(lockless)
    cmd = [CLI, f"experiment={summary}", f"site.lock={kind}", "verify=false", "policy=stop"]
    results = start_together([cmd] * 8, env)
    expected = [f"{p}|test" for p in data]
    assert_exactly_once(results, expected, caches["hf"], {})
    assert len(events(results, "CACHE_UNCHANGED")) == 8 * 3 - 3
    check_manifest_and_gate(summary, env, 3)
    # every later run is a pure no-op: the caches the race left behind are whole
    inodes = arrow_inodes(caches["hf"], caches["xdg"])
    again = subprocess.run(cmd[:-2] + ["verify=true", "policy=stop"], capture_output=True, text=True, env=env)
    assert again.returncode == 0, again.stderr
    assert arrow_inodes(caches["hf"], caches["xdg"]) == inodes


@pytest.mark.slow
@pytest.mark.parametrize("mode", list(MODES))
def test_two_experiments_sharing_datasets(tmp_path, caches, mode):
    """Two people pre-build two experiments that share two of their datasets: 2 agents each."""
    kind, lockless = MODES[mode]
    data = shared_data(tmp_path / "shared", 4)
    a = write_summary(tmp_path / "expA", [{"name": f"a{i}", "dataset": str(data[i])} for i in (0, 1, 2)])
    b = write_summary(tmp_path / "expB", [{"name": f"b{i}", "dataset": str(data[i])} for i in (1, 2, 3)])
    env = agent_env(lockless)
    cmds = [[CLI, f"experiment={s}", f"site.lock={kind}", "verify=false", "policy=stop"] for s in (a, b, a, b)]
    results = start_together(cmds, env)
    assert_exactly_once(results, [f"{p}|test" for p in data], caches["hf"], {})
    check_manifest_and_gate(a, env, 3)
    check_manifest_and_gate(b, env, 3)


@pytest.mark.slow
def test_agents_with_verify_on_lockless_fs(tmp_path, caches):
    """Four agents, each also re-loading every entry with inspect-ai in a fresh process: the
    consumer's call must be a pure cache hit for every agent, with no working flock."""
    data = shared_data(tmp_path / "data", 2)
    summary = write_summary(tmp_path / "exp", [{"name": f"t{i}", "dataset": str(p)} for i, p in enumerate(data)])
    env = agent_env(True)
    cmd = [CLI, f"experiment={summary}", "site.lock=soft", "policy=stop"]
    results = start_together([cmd] * 4, env)
    assert_exactly_once(results, [f"{p}|test" for p in data], caches["hf"], {})
    check_manifest_and_gate(summary, env, 2)


def test_lockless_stand_in_really_has_no_lock(tmp_path):
    """The fake above must really break flock, or the soft-lockless tests prove nothing."""
    code = ("from datasets.utils._filelock import FileLock\n"
            f"a = FileLock({str(tmp_path / 'x.lock')!r}, timeout=0); b = FileLock({str(tmp_path / 'x.lock')!r}, timeout=0)\n"
            "a.acquire(); b.acquire(); print(a.is_locked and b.is_locked)")
    import sys

    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=agent_env(True))
    assert out.stdout.strip() == "True", out.stderr
    real = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=agent_env(False))
    assert real.returncode != 0 and "Timeout" in real.stderr
