"""Faults of the machine: read-only or unwritable cache roots, a disk that fills up in the
middle of a build, a manifest folder that cannot be written, a source file deleted while
it is being built. Each: one clear line, the documented exit code, nothing half-written
left marked ready.

Real faults, not simulated ones: the tests run as root here, where permission bits do not
bite, so they use real tmpfs mounts (read-only, or 2 MiB small) and run the agent as the
unprivileged user `nobody` (setpriv) for "permission denied". Where mounting or setpriv
is not allowed the test is skipped and says why.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Iterator, Optional

import pytest

from tests.conftest import CLI, run_agent, write_records, write_summary


def _mount(target: Path, options: str) -> Optional[str]:
    target.mkdir(parents=True, exist_ok=True)
    out = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(target)], capture_output=True, text=True)
    return None if out.returncode == 0 else (out.stderr.strip() or "mount failed")


@pytest.fixture
def mounts() -> Iterator:
    done = []

    def mount(target: Path, options: str) -> Path:
        err = _mount(target, options)
        if err:
            pytest.skip(f"cannot mount tmpfs here ({err})")
        done.append(target)
        return target

    yield mount
    for target in reversed(done):
        subprocess.run(["umount", "-l", str(target)], capture_output=True)


def one_error(stderr: str, *phrases: str) -> None:
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if line.startswith("cluster-agent: error: ")]
    assert len(lines) == 1, stderr
    for phrase in phrases:
        assert phrase in lines[0], lines[0]


def experiment(tmp_path: Path, n: int = 20) -> Path:
    write_records(tmp_path / "exp" / "data" / "a.json", n)
    return write_summary(tmp_path / "exp", [{"name": "a", "dataset": "data/a.json"}])


# --- cache root or manifest folder not writable ------------------------------------------------


def test_cache_root_on_read_only_mount(tmp_path, caches, mounts):
    ro = mounts(tmp_path / "ro", "ro,size=1m")
    summary = experiment(tmp_path)
    result = run_agent(f"experiment={summary}", f"site.hf_cache={ro / 'hf'}")
    assert result.returncode == 2
    one_error(result.stderr, "HF cache root", "not writable", "Read-only file system")
    assert not (summary.parent / ".cluster-agent" / "manifest.json").exists()


def test_cache_root_under_a_regular_file(tmp_path, caches):
    (tmp_path / "afile").write_text("x")
    summary = experiment(tmp_path)
    result = run_agent(f"experiment={summary}", f"site.xdg_cache_home={tmp_path / 'afile' / 'xdg'}")
    assert result.returncode == 2
    one_error(result.stderr, "inspect cache folder", "not writable", "Not a directory")


def test_cache_root_permission_denied_for_an_unprivileged_user(tmp_path, caches):
    """The agent runs as `nobody`; the cache root belongs to root, mode 0755."""
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv not installed")
    tmp_path.chmod(0o755)
    for p in tmp_path.parents:
        if str(p).startswith("/tmp/"):
            p.chmod(p.stat().st_mode | 0o005)
    summary = experiment(tmp_path)
    (summary.parent).chmod(0o777)  # nobody may write the manifest and log, not the cache
    root_cache = tmp_path / "rootcache"
    root_cache.mkdir(mode=0o755)
    home = tmp_path / "nobody-home"
    home.mkdir(mode=0o777)
    env = dict(os.environ, HOME=str(home), XDG_CACHE_HOME=str(home / "xdg"), HF_HOME=str(home / "hf-home"),
               HF_DATASETS_CACHE=str(root_cache / "hf"))
    result = subprocess.run(["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", CLI,
                             f"experiment={summary}"], capture_output=True, text=True, env=env, timeout=300)
    if "Permission denied" in result.stderr and "experiment" in result.stderr and "HF cache" not in result.stderr:
        pytest.skip(f"nobody cannot read the test tree here: {result.stderr.strip()}")
    assert result.returncode == 2, result.stderr
    one_error(result.stderr, "HF cache root", "Permission denied")
    assert list(root_cache.iterdir()) == []


def test_manifest_folder_read_only_keeps_the_earlier_manifest(tmp_path, caches, mounts):
    state = mounts(tmp_path / "state", "size=1m")
    summary = experiment(tmp_path)
    manifest = state / "m.json"
    first = run_agent(f"experiment={summary}", f"manifest={manifest}", "verify=false")
    assert first.returncode == 0, first.stderr
    before = manifest.read_bytes()
    subprocess.run(["mount", "-o", "remount,ro", str(state)], check=True)
    (summary.parent / "data" / "a.json").write_text(json.dumps({"test": [{"input": "new", "output": "x"}]}))
    result = run_agent(f"experiment={summary}", f"manifest={manifest}", "verify=false")
    assert result.returncode == 2
    one_error(result.stderr, "manifest folder", "not writable", "Read-only file system")
    assert manifest.read_bytes() == before


# --- the disk fills up in the middle of a build ------------------------------------------------------


@pytest.mark.parametrize("where", ["hf", "inspect"])
def test_disk_full_mid_build(tmp_path, caches, mounts, where):
    """A 2 MiB tmpfs holds the caches. `hf`: the data's Arrow file (about 3 MiB) cannot
    fit. `inspect`: the HF Arrow file (about 1.2 MiB) fits, inspect-ai's copy of it does not."""
    small = mounts(tmp_path / "small", "size=2m")
    n = 25000 if where == "hf" else 15000
    data = write_records(tmp_path / "exp" / "data" / "a.json", n, prefix="q" * 60)
    summary = write_summary(tmp_path / "exp", [{"name": "a", "dataset": "data/a.json"}])
    result = run_agent(f"experiment={summary}", f"site.hf_cache={small / 'hf'}", f"site.xdg_cache_home={small / 'xdg'}",
                       "policy=stop")
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    failed = [line for line in result.stderr.splitlines() if "] CACHE_FAILED: " in line]
    assert len(failed) == 1 and str(data) in failed[0] and "No space left on device" in failed[0], result.stderr
    if where == "inspect":
        assert "inspect-ai cache" in failed[0]
    doc = json.loads((summary.parent / ".cluster-agent" / "manifest.json").read_text())
    assert doc["entries"][0]["status"] == "failed" and doc["decision"] == "stop"
    # nothing half-written is left where a job would find it
    leftovers = [str(p) for p in small.rglob("*") if p.name.endswith(".incomplete") or ".tmp-" in p.name]
    assert leftovers == []
    assert not list((small / "xdg").rglob("state.json"))
    gate = run_agent(f"experiment={summary}", "action=check")
    assert gate.returncode == 3
    # room again: the next run completes
    subprocess.run(["mount", "-o", "remount,size=64m", str(small)], check=True)
    again = run_agent(f"experiment={summary}", f"site.hf_cache={small / 'hf'}", f"site.xdg_cache_home={small / 'xdg'}",
                      "policy=stop", "verify=false")
    assert again.returncode == 0, again.stderr


# --- the source file is deleted while it is being built ------------------------------------------------


def test_source_deleted_during_build(tmp_path, caches):
    data = write_records(tmp_path / "exp" / "data" / "a.json", 400000)  # a build of a few seconds
    summary = write_summary(tmp_path / "exp", [{"name": "a", "dataset": "data/a.json"}])
    proc = subprocess.Popen([CLI, f"experiment={summary}", "consumer=datasets", "policy=stop"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
    lines = []
    for line in proc.stderr:
        lines.append(line)
        if "CACHE_PREBUILD:" in line:  # the agent has fingerprinted the file; now remove it
            data.unlink()
            break
    rest_out, rest_err = proc.communicate(timeout=300)
    stderr = "".join(lines) + rest_err
    assert proc.returncode == 1, stderr
    assert "Traceback" not in stderr
    bad = [line for line in stderr.splitlines() if "] CACHE_FAILED: " in line or "] CACHE_MISSING: " in line]
    assert len(bad) == 1 and str(data) in bad[0], stderr
    assert "no such file" in bad[0] or "removed or unreadable while it was being built" in bad[0]
    doc = json.loads((summary.parent / ".cluster-agent" / "manifest.json").read_text())
    assert doc["entries"][0]["status"] in ("failed", "missing")
    assert not list((caches["hf"] / ".cluster-agent" / "entries").glob("*.json"))  # no shared record either
    assert run_agent(f"experiment={summary}", "action=check").returncode == 3
