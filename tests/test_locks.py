"""The two lock kinds (agent/locks.py), with real processes.

`soft` must hold on file systems with no working lock primitive at all, so it is tested
against the races that matter: several agents taking over the same dead owner, a new
owner appearing between an agent's look and its takeover, a slow agent creating a number
the owner had already cleaned up. A live owner's lock is never taken.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from agent import locks
from agent.errors import LockTimeout
from agent.locks import SoftLock, clean_leftovers, owner_gone, owner_record, tag_owner
from tests.conftest import REPO, read_manifest, run_agent, write_records, write_summary

PY = sys.executable


def dead_pid() -> int:
    """A pid that certainly names no process any more (started, killed, reaped)."""
    proc = subprocess.Popen(["sleep", "30"])
    proc.kill()
    proc.wait()
    return proc.pid


# --- owner_gone -------------------------------------------------------------------------


def test_owner_gone_same_host_dead_pid():
    assert owner_gone({"host": socket.gethostname(), "pid": dead_pid(), "proc_start": "1"}, 3600)


def test_owner_gone_same_host_live_owner_is_not_gone():
    me = owner_record()
    assert not owner_gone(me, 0.0)  # alive: never stale, however old


def test_owner_gone_pid_reused_by_another_process():
    # our pid, but a start time that is not ours: the recorded process is gone
    me = dict(owner_record(), proc_start="1")
    assert owner_gone(me, 3600)


def test_owner_gone_other_host_only_by_age():
    now = time.time()
    other = {"host": "node-that-is-not-" + socket.gethostname(), "pid": 1, "started": now - 100}
    assert not owner_gone(other, 3600, now=now)
    assert owner_gone(other, 50, now=now)
    # a recent heartbeat (the file's mtime) keeps a long-running owner alive
    assert not owner_gone(other, 50, now=now, last_seen=now - 10)


def test_owner_gone_after_reboot():
    assert owner_gone(dict(owner_record(), boot_id="another-boot"), 3600)


# --- soft lock: basic protocol ------------------------------------------------------------


def test_soft_lock_release_and_reacquire_grows_generation(tmp_path):
    lock = SoftLock(tmp_path / "x.lock", timeout=5, stale_s=3600)
    with lock:
        assert lock.generations() == [0]
        assert json.loads(lock.gen_path(0).read_text())["pid"] == os.getpid()
    assert json.loads(lock.gen_path(0).read_text())["released"] is True
    with lock:
        assert lock.generations() == [1]  # older generation cleaned up by the new owner
    assert lock.generations() == [1]


def test_soft_lock_live_owner_is_never_taken(tmp_path):
    path = tmp_path / "x.lock"
    holder = subprocess.Popen([PY, "-c", textwrap.dedent(f"""
        import sys, time
        from agent.locks import SoftLock
        with SoftLock({str(path)!r}, 5, 0.5):
            print("held", flush=True)
            time.sleep(60)
    """)], stdout=subprocess.PIPE, text=True, cwd=REPO)
    try:
        assert holder.stdout.readline().strip() == "held"
        time.sleep(1.0)  # older than stale_s=0.5: age alone must not matter on this host
        with pytest.raises(LockTimeout) as err:
            SoftLock(path, timeout=1.0, stale_s=0.5).acquire()
        assert f"pid {holder.pid}" in str(err.value) and "site.lock_timeout_s" in str(err.value)
        assert SoftLock(path, 1, 1).owner()["pid"] == holder.pid  # its file is untouched
    finally:
        holder.kill()
        holder.wait()


def test_soft_lock_dead_owner_taken_over(tmp_path):
    path = tmp_path / "x.lock"
    holder = subprocess.Popen([PY, "-c", textwrap.dedent(f"""
        import time
        from agent.locks import SoftLock
        SoftLock({str(path)!r}, 5, 3600).acquire()
        print("held", flush=True)
        time.sleep(60)
    """)], stdout=subprocess.PIPE, text=True, cwd=REPO)
    assert holder.stdout.readline().strip() == "held"
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    lock = SoftLock(path, timeout=5, stale_s=3600)
    with lock:
        assert lock.generations() == [1]
        assert lock.owner()["pid"] == os.getpid()


def test_soft_lock_unparseable_file_waits_until_stale(tmp_path):
    lock = SoftLock(tmp_path / "x.lock", timeout=0.3, stale_s=3600)
    lock.gen_path(4).write_text("{garbage")
    with pytest.raises(LockTimeout):
        lock.acquire()
    old = time.time() - 7200
    os.utime(lock.gen_path(4), (old, old))
    with lock:
        assert lock.generations() == [5]


def test_soft_lock_heartbeat_moves_mtime(tmp_path):
    lock = SoftLock(tmp_path / "x.lock", timeout=5, stale_s=3600, heartbeat_s=0.1)
    with lock:
        old = time.time() - 1000
        os.utime(lock.gen_path(0), (old, old))
        time.sleep(0.5)
        assert time.time() - lock.gen_path(0).stat().st_mtime < 100


# --- soft lock: the takeover races ---------------------------------------------------------


def _dead_owner_file(lock: SoftLock, gen: int) -> None:
    lock.gen_path(gen).write_text(json.dumps({"host": socket.gethostname(), "pid": dead_pid(),
                                              "proc_start": "1", "started": time.time()}))


def test_new_owner_between_look_and_takeover(tmp_path):
    """A sees a dead owner at g5; before A acts, B takes over (g6). A's takeover must fail
    and B must stay the only owner."""
    a = SoftLock(tmp_path / "x.lock", 1, 3600)
    b = SoftLock(tmp_path / "x.lock", 1, 3600)
    _dead_owner_file(a, 5)
    assert a.generations() == [5] and a._free(5)  # A has looked: free
    assert b.try_acquire()  # B takes over in between
    assert not a._create(6)  # A's takeover of g5 is the creation of g6: taken
    assert not a.try_acquire()  # and a fresh look sees B alive
    assert b.owner()["pid"] == os.getpid() and b.generations() == [6]
    b.release()


def test_slow_agent_creating_a_cleaned_number_backs_off(tmp_path, monkeypatch):
    """S looked when g2 (dead owner) was the top; by the time S creates g3, the owner is
    at g7 (g3 long cleaned up). S's g3 is created, but S must not think it holds the lock."""
    owner = SoftLock(tmp_path / "x.lock", 1, 3600)
    owner.gen_path(6).write_text(json.dumps({"released": True}))
    assert owner.try_acquire() and owner.generations() == [7]
    slow = SoftLock(tmp_path / "x.lock", 1, 3600)
    _dead_owner_file(slow, 2)
    real = slow.generations
    seen = iter([[2]])  # the stale look
    monkeypatch.setattr(slow, "generations", lambda: next(seen, None) or real())
    assert not slow.try_acquire()
    assert not slow.held
    assert real() == [2, 7]  # S removed only its own g3; the owner's g7 stands
    assert json.loads(owner.gen_path(7).read_text())["pid"] == os.getpid()
    owner.release()


WORKER = textwrap.dedent("""
    import os, sys, time
    from agent.locks import hold
    path, kind, n, log = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    start_at = float(sys.argv[5])
    while time.time() < start_at:
        time.sleep(0.001)
    from pathlib import Path
    for _ in range(n):
        with hold(Path(path), kind, 120, 3600):
            with open(log, "a") as fh:
                fh.write(f"in {os.getpid()}\\n"); fh.flush()
                time.sleep(0.002)
                fh.write(f"out {os.getpid()}\\n")
""")


def _check_log(log: Path, expected: int) -> None:
    lines = log.read_text().splitlines()
    assert len(lines) == 2 * expected
    for i in range(0, len(lines), 2):
        enter, leave = lines[i].split(), lines[i + 1].split()
        assert enter[0] == "in" and leave[0] == "out" and enter[1] == leave[1], lines[i:i + 2]


@pytest.mark.parametrize("kind", ["flock", "soft"])
def test_mutual_exclusion_across_processes(tmp_path, kind):
    path, log = tmp_path / "x.lock", tmp_path / "log"
    if kind == "soft":
        _dead_owner_file(SoftLock(path, 1, 1), 3)  # all of them start by taking over a dead owner
    start_at = str(time.time() + 1.5)
    procs = [subprocess.Popen([PY, "-c", WORKER, str(path), kind, "40", str(log), start_at], cwd=REPO)
             for _ in range(6)]
    assert [p.wait(timeout=300) for p in procs] == [0] * 6
    _check_log(log, 6 * 40)
    if kind == "soft":
        assert SoftLock(path, 1, 1).generations() == [3 + 6 * 40]  # every hand-over was one creation


# --- leftovers named with their owner -------------------------------------------------------


def test_clean_leftovers_only_when_owner_gone(tmp_path):
    host = socket.gethostname()
    dead = tmp_path / f".x.tmp-{host}-{dead_pid()}-5-{time.time_ns()}"
    dead_dashed = tmp_path / f".x.json-0e82c946.stale-{host}-{dead_pid()}-5-{time.time_ns()}"
    mine = tmp_path / f".x.tmp-{locks.owner_tag()}"
    other_new = tmp_path / f".x.tmp-othernode-12-7-{time.time_ns()}"
    other_old = tmp_path / f".x.tmp-othernode-12-7-{time.time_ns() - 10**13}"
    unrelated = tmp_path / ".x.tmp-garbage"
    for d in (dead, dead_dashed, mine, other_new, other_old, unrelated):
        d.mkdir()
        (d / "data.arrow").write_text("x")
    old = time.time() - 10**4
    for p in (other_old, other_old / "data.arrow"):
        os.utime(p, (old, old))
    removed = clean_leftovers(tmp_path, ".x.", 3600)
    assert sorted(removed) == sorted([str(dead), str(dead_dashed), str(other_old)])
    assert mine.exists() and other_new.exists() and unrelated.exists()
    assert tag_owner(mine.name)["pid"] == os.getpid()
    assert tag_owner(dead_dashed.name)["host"] == host


# --- a lock timeout goes through the failure policy -------------------------------------------


def _entry_lock(data: Path, hf_root: Path) -> Path:
    from agent.build import record_key
    from agent.layers import CacheRoots
    from agent.paths import locks_dir
    from agent.plan import LoadCall
    from agent.versions import for_consumer

    call = LoadCall("json", str(data), "test", "train")
    key = record_key(call, "datasets", for_consumer("datasets"))
    return locks_dir(CacheRoots(hf_root, hf_root)) / f"{key}.lock"


@pytest.mark.parametrize("kind", ["flock", "soft"])
def test_lock_timeout_is_a_failed_entry_and_policy_decides(tmp_path, caches, kind):
    data = write_records(tmp_path / "exp" / "data" / "a.json", 5)
    summary = write_summary(tmp_path / "exp", [{"name": "a", "dataset": "data/a.json"}])
    lock_path = _entry_lock(data, caches["hf"])
    holder = subprocess.Popen([PY, "-c", textwrap.dedent(f"""
        import time
        from pathlib import Path
        from agent.locks import hold
        with hold(Path({str(lock_path)!r}), {kind!r}, 5, 3600):
            print("held", flush=True)
            time.sleep(120)
    """)], stdout=subprocess.PIPE, text=True, cwd=REPO)
    try:
        assert holder.stdout.readline().strip() == "held"
        common = [f"experiment={summary}", "consumer=datasets", f"site.lock={kind}",
                  "site.lock_timeout_s=1", "verify=false"]
        stop = run_agent(*common, "policy=stop")
        assert stop.returncode == 1, stop.stderr
        failed = [line for line in stop.stderr.splitlines() if "CACHE_FAILED" in line]
        assert len(failed) == 1 and str(data) in failed[0] and "lock" in failed[0]
        assert "site.lock_timeout_s" in failed[0] and "Traceback" not in stop.stderr
        assert read_manifest(summary)["entries"][0]["status"] == "failed"
        go = run_agent(*common, "policy=continue", "output=json")
        assert go.returncode == 0, go.stderr
        assert json.loads(go.stdout)["decision"] == "proceed"
    finally:
        holder.kill()
        holder.wait()
    # the holder is gone: the next run builds it
    again = run_agent(f"experiment={summary}", "consumer=datasets", f"site.lock={kind}", "policy=stop")
    assert again.returncode == 0, again.stderr
    assert read_manifest(summary)["entries"][0]["status"] in ("built", "rebuilt")


def test_manifest_lock_timeout_is_one_line_and_keeps_the_manifest(tmp_path, caches):
    """Another agent holds the manifest merge lock for too long: exit 1 (stop), one line
    naming the lock and its owner, and the manifest it is writing is not touched."""
    write_records(tmp_path / "exp" / "data" / "a.json", 5)
    summary = write_summary(tmp_path / "exp", [{"name": "a", "dataset": "data/a.json"}])
    first = run_agent(f"experiment={summary}", "consumer=datasets", "site.lock=soft", "verify=false")
    assert first.returncode == 0, first.stderr
    manifest = summary.parent / ".cluster-agent" / "manifest.json"
    before = manifest.read_bytes()
    holder = subprocess.Popen([PY, "-c", textwrap.dedent(f"""
        import time
        from agent.locks import SoftLock
        with SoftLock({str(manifest) + '.lock'!r}, 5, 3600):
            print("held", flush=True)
            time.sleep(120)
    """)], stdout=subprocess.PIPE, text=True, cwd=REPO)
    try:
        assert holder.stdout.readline().strip() == "held"
        result = run_agent(f"experiment={summary}", "consumer=datasets", "site.lock=soft", "site.lock_timeout_s=1",
                           "force=true", "verify=false")
        assert result.returncode == 1, result.stderr
        errors = [line for line in result.stderr.splitlines() if line.startswith("cluster-agent: error: ")]
        assert len(errors) == 1 and "manifest.json.lock" in errors[0] and f"pid {holder.pid}" in errors[0]
        assert "Traceback" not in result.stderr
        assert manifest.read_bytes() == before
    finally:
        holder.kill()
        holder.wait()
