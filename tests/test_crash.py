"""Crash safety and poisoned caches.

- Poisoned caches (seen after lock-less races and killed jobs): an HF folder whose
  dataset_info.json is there but whose Arrow file is missing or truncated, an inspect-ai
  folder without state.json. `action=check` refuses (exit 3) naming the folder;
  `prebuild` repairs it, with or without a manifest record of it.
- What a killed builder leaves (temporary folders, graves of replaced folders, datasets'
  `.incomplete`, temporary manifests and lock files) is removed by the next run, but
  only when its owner is provably gone; a live owner's files stay.
- A few random kill -9 trials (bench/kill_trials.py does 24; see docs/robustness.md).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from agent.locks import _proc_start
from tests.conftest import REPO, run_agent, write_records, write_summary


def build(tmp_path: Path, n: int = 40):
    data = write_records(tmp_path / "exp" / "data" / "a.json", n)
    summary = write_summary(tmp_path / "exp", [{"name": "a", "dataset": "data/a.json"}])
    first = run_agent(f"experiment={summary}", "verify=false")
    assert first.returncode == 0, first.stderr
    doc = json.loads((summary.parent / ".cluster-agent" / "manifest.json").read_text())
    return summary, data, doc["entries"][0]


def forget_everything(summary: Path, hf_root: Path) -> None:
    """No manifest and no shared record: the agent meets the poisoned folder cold."""
    (summary.parent / ".cluster-agent" / "manifest.json").unlink()
    shutil.rmtree(hf_root / ".cluster-agent" / "entries")


def poison(entry: dict, how: str) -> Path:
    hf = Path(entry["layers"]["hf"]["dir"])
    ins = Path(entry["layers"]["inspect"]["dir"])
    if how == "hf-arrow-missing":
        (hf / "json-train.arrow").unlink()
        return hf
    if how == "hf-arrow-truncated":
        arrow = hf / "json-train.arrow"
        arrow.write_bytes(arrow.read_bytes()[: arrow.stat().st_size // 2])
        return hf
    if how == "inspect-state-missing":
        (ins / "state.json").unlink()
        return ins
    raise AssertionError(how)


@pytest.mark.parametrize("record", ["with-manifest", "no-manifest"])
@pytest.mark.parametrize("how", ["hf-arrow-missing", "hf-arrow-truncated", "inspect-state-missing"])
def test_poisoned_cache_reported_then_repaired(tmp_path, caches, how, record):
    summary, data, entry = build(tmp_path)
    folder = poison(entry, how)
    if record == "with-manifest":
        gate = run_agent(f"experiment={summary}", "action=check")
        assert gate.returncode == 3
        refused = [line for line in gate.stderr.splitlines() if "GATE_REFUSED" in line]
        assert refused and str(folder) in refused[0], gate.stderr
    else:
        forget_everything(summary, caches["hf"])
    fix = run_agent(f"experiment={summary}", "policy=stop")  # verify=true: inspect-ai loads it
    assert fix.returncode == 0, fix.stderr
    doc = json.loads((summary.parent / ".cluster-agent" / "manifest.json").read_text())
    assert doc["entries"][0]["status"] in ("built", "rebuilt") and doc["entries"][0]["rows"] == 40
    gate = run_agent(f"experiment={summary}", "action=check")
    assert gate.returncode == 0, gate.stderr
    from agent.build import hf_layer_whole

    assert hf_layer_whole(Path(doc["entries"][0]["layers"]["hf"]["dir"]), "train")
    assert (Path(doc["entries"][0]["layers"]["inspect"]["dir"]) / "state.json").is_file()


# --- leftovers of dead and live builders ---------------------------------------------------------


def tag(pid: int) -> str:
    return f"{socket.gethostname()}-{pid}-{_proc_start(pid) or 'x'}-{time.time_ns()}"


def dead_pid() -> int:
    proc = subprocess.Popen(["sleep", "30"])
    proc.kill()
    proc.wait()
    return proc.pid


@pytest.mark.parametrize("kind", ["flock", "soft"])
def test_leftovers_removed_only_when_owner_gone(tmp_path, caches, kind):
    summary, data, entry = build(tmp_path)
    hf = Path(entry["layers"]["hf"]["dir"])
    ins = Path(entry["layers"]["inspect"]["dir"])
    live = subprocess.Popen(["sleep", "120"])
    try:
        time.sleep(0.2)
        dead = dead_pid()
        planted = {
            "dead-inspect-tmp": (ins.parent / f".{ins.name}.tmp-{tag(dead)}", True),
            "dead-inspect-grave": (ins.parent / f".{ins.name}.stale-{tag(dead)}", True),
            "dead-hf-grave": (hf.parent / f".{hf.name}.stale-{tag(dead)}", True),
            "live-inspect-tmp": (ins.parent / f".{ins.name}.tmp-{tag(live.pid)}", False),
            "live-hf-grave": (hf.parent / f".{hf.name}.stale-{tag(live.pid)}", False),
            "other-host-recent": (ins.parent / f".{ins.name}.tmp-othernode-7-9-{time.time_ns()}", False),
        }
        for path, _ in planted.values():
            path.mkdir()
            (path / "data-00000-of-00001.arrow").write_bytes(b"half")
        manifest_tmp = summary.parent / ".cluster-agent" / f".manifest.json.tmp-{tag(dead)}"
        manifest_tmp.write_text('{"half')
        incomplete = Path(f"{hf}.incomplete")
        incomplete.mkdir()
        (incomplete / "json-train-00000-00000-of-NNNNN.arrow").write_bytes(b"half")
        if kind == "soft":  # with soft locks datasets' flock proves nothing: age must
            old = time.time() - 7200
            for p in (incomplete, *incomplete.iterdir()):
                os.utime(p, (old, old))

        result = run_agent(f"experiment={summary}", f"site.lock={kind}", "policy=stop")
        assert result.returncode == 0, result.stderr
        for name, (path, gone) in planted.items():
            assert path.exists() != gone, name
        assert not manifest_tmp.exists()
        assert not incomplete.exists()
        assert "CACHE_NOTE: removed" in result.stderr
        assert run_agent(f"experiment={summary}", "action=check").returncode == 0
    finally:
        live.kill()
        live.wait()


def test_incomplete_of_a_live_datasets_builder_is_kept(tmp_path, caches):
    """A job (not an agent) is building the HF folder right now: it holds datasets' own
    builder lock, so its `.incomplete` folder must not be touched."""
    summary, data, entry = build(tmp_path)
    hf = Path(entry["layers"]["hf"]["dir"])
    incomplete = Path(f"{hf}.incomplete")
    incomplete.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import time
        from datasets.utils._filelock import FileLock
        with FileLock({str(hf) + '_builder.lock'!r}):
            print("held", flush=True)
            time.sleep(120)
    """)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        result = run_agent(f"experiment={summary}", "policy=stop")
        assert result.returncode == 0, result.stderr
        assert incomplete.is_dir()
    finally:
        holder.kill()
        holder.wait()
    again = run_agent(f"experiment={summary}", "policy=stop")  # now the builder is gone
    assert again.returncode == 0 and not incomplete.exists(), again.stderr


@pytest.mark.slow
def test_random_kill_trials_smoke():
    """Three kill -9 trials of bench/kill_trials.py on small files (the 24-trial run and
    its results are in docs/robustness.md)."""
    out = subprocess.run([sys.executable, str(REPO / "bench" / "kill_trials.py"), "--trials", "3", "--scale", "2000",
                          "--seed", str(int(time.time()) % 1000)], capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "0 with problems" in out.stdout


def _descendants(pid: int) -> dict:
    """{pid: command line} of every live process below `pid` (from /proc)."""
    parents = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
                parents[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                pass
    found, todo = {}, [pid]
    while todo:
        parent = todo.pop()
        for child, ppid in parents.items():
            if ppid == parent and child not in found:
                try:
                    found[child] = Path(f"/proc/{child}/cmdline").read_bytes().replace(b"\0", b" ").decode()
                except OSError:
                    continue
                todo.append(child)
    return found


def _alive(pid: int) -> bool:
    """Running, not a zombie (this VM's init may not reap reparented children)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_kill_9_of_the_agent_during_a_jobs_2_build_leaves_no_process(tmp_path, caches):
    """jobs=2 forks its build workers from a fork server that imported datasets once
    (agent.schedule). That server lives as long as any worker holds its pipe, and a worker
    waits on its task pipe forever: after a kill -9 of the agent, the whole tree must
    still go, not spin or hang on the node (found while building it)."""
    from tests.conftest import CLI

    tasks = []
    for i in range(4):
        write_records(tmp_path / "exp" / "data" / f"d{i}.json", 150_000)
        tasks.append({"name": f"t{i}", "dataset": f"data/d{i}.json"})
    summary = write_summary(tmp_path / "exp", tasks)
    proc = subprocess.Popen([CLI, f"experiment={summary}", "jobs=2", "verify=false", "consumer=datasets"],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        tree: dict = {}
        while time.time() < deadline and proc.poll() is None:
            tree = _descendants(proc.pid)
            if sum("multiprocessing.forkserver" in cmd for cmd in tree.values()) >= 3:  # the server + 2 workers
                break
            time.sleep(0.1)
        assert sum("multiprocessing.forkserver" in cmd for cmd in tree.values()) >= 3, (proc.poll(), tree)
        time.sleep(0.5)  # the workers are building now
        tree.update(_descendants(proc.pid))
    finally:
        proc.kill()
        proc.wait()
    deadline = time.time() + 15
    while time.time() < deadline and any(_alive(p) for p in tree):
        time.sleep(0.2)
    assert not [cmd[:120] for p, cmd in tree.items() if _alive(p)]
