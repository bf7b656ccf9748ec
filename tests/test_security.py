"""Security: the summary is data; no remote code; file modes; nothing written outside the
configured folders; and the `ask` policy under a real pseudo-terminal.

The terminal is the one thing that cannot be real in a test run: a real pseudo-terminal
(`pty.fork`) stands in for it, so the agent sees isatty() true, a controlling terminal,
and the kernel's own handling of Ctrl-D (end of input) and Ctrl-C (SIGINT).
"""

from __future__ import annotations

import ast
import json
import os
import pty
import select
import signal
import stat
import subprocess
import time
from pathlib import Path
from typing import List

import pytest

from tests.conftest import CLI, REPO, run_agent, write_records, write_summary

# --- the summary is data ------------------------------------------------------------------------


@pytest.mark.parametrize("doc, phrase", [
    ({"_target_": "os.system", "evaluation": {"tasks": [{"name": "a", "dataset": "a.json"}]}}, "'._target_' found"),
    ({"evaluation": {"tasks": [{"name": "a", "dataset": "a.json", "_target_": "builtins.exec"}]}},
     "evaluation.tasks[0]._target_"),
    ({"evaluation": {"tasks": [{"name": "a", "dataset": "${oc.env:HOME}/a.json"}]}}, "looks like an interpolation"),
    ({"evaluation": {"tasks": [{"name": "${now:%H}", "dataset": "a.json"}]}}, "looks like an interpolation"),
    ({"experiment": {"name": "x", "cmd": ["${oc.decode:'1'}"]}, "evaluation": {"tasks": [{"name": "a", "dataset": "a.json"}]}},
     "experiment.cmd[0]"),
])
def test_summary_code_is_refused(tmp_path, caches, doc, phrase):
    summary = tmp_path / "experiment_summary.yaml"
    summary.write_text(json.dumps(doc))
    result = run_agent(f"experiment={summary}")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cluster-agent: error: ") and phrase in lines[0], result.stderr
    assert not (tmp_path / ".cluster-agent").exists() and not caches["hf"].exists()


def test_trust_remote_code_is_never_passed(tmp_path, caches):
    """No call in the package passes trust_remote_code, and the recorded consumer call
    (what jobs are told to run) does not either."""
    for source in (REPO / "agent").glob("*.py"):
        tree = ast.parse(source.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                assert all(k.arg != "trust_remote_code" for k in node.keywords), f"{source}:{node.lineno}"
            if isinstance(node, ast.Dict):
                keys = [k.value for k in node.keys if isinstance(k, ast.Constant)]
                assert "trust_remote_code" not in keys, f"{source}:{node.lineno}"
    write_records(tmp_path / "exp" / "a.json", 3)
    summary = write_summary(tmp_path / "exp", [{"name": "a", "dataset": "a.json"}])
    result = run_agent(f"experiment={summary}", "verify=false")
    assert result.returncode == 0, result.stderr
    doc = json.loads((tmp_path / "exp" / ".cluster-agent" / "manifest.json").read_text())
    entry = doc["entries"][0]  # (the tmp path holds this test's name: look at the calls only)
    assert "trust_remote_code=" not in entry["python"] and "trust_remote_code" not in entry["call"]
    assert set(entry["call"]) == {"builder", "data_files", "field", "split"}


# --- file modes ------------------------------------------------------------------------------------


def _modes(roots: List[Path]) -> dict:
    out = {}
    for root in roots:
        for p in [root, *root.rglob("*")]:
            if p.exists() and not p.is_symlink():
                out[str(p)] = stat.S_IMODE(p.stat().st_mode)
    return out


@pytest.mark.parametrize("site_umask, inherited", [("0002", 0o022), ("0002", 0o000), (None, 0o000)])
def test_written_files_get_site_mode_never_world_writable(tmp_path, caches, site_umask, inherited):
    write_records(tmp_path / "exp" / "a.json", 3)
    summary = write_summary(tmp_path / "exp", [{"name": "a", "dataset": "a.json"}])
    args = [CLI, f"experiment={summary}", "site.lock=soft"] + ([f"site.umask={site_umask}"] if site_umask else [])
    result = subprocess.run(args, capture_output=True, text=True, env=dict(os.environ),
                            preexec_fn=lambda: os.umask(inherited), timeout=600)
    assert result.returncode == 0, result.stderr
    written = _modes([caches["hf"], caches["xdg"] / "inspect_ai", tmp_path / "exp" / ".cluster-agent",
                      tmp_path / "exp" / "logs"])
    assert written and not [p for p, m in written.items() if m & 0o002], "world-writable files written"
    if site_umask == "0002":
        data_files = [p for p in written if p.endswith((".arrow", "dataset_info.json", "state.json", "manifest.json"))]
        assert len(data_files) >= 5
        assert all(written[p] & 0o020 for p in data_files), {p: oct(written[p]) for p in data_files}


def test_world_writable_umask_is_refused(tmp_path, caches):
    result = run_agent("site.umask=0000")
    assert result.returncode == 2 and "world-writable" in result.stderr


# --- nothing written outside the configured folders --------------------------------------------------


@pytest.mark.parametrize("key, action", [("manifest", "prebuild"), ("log_file", "prebuild"), ("manifest", "check")])
def test_relative_paths_may_not_escape_the_state_folder(tmp_path, caches, key, action):
    write_records(tmp_path / "exp" / "a.json", 3)
    summary = write_summary(tmp_path / "exp", [{"name": "a", "dataset": "a.json"}])
    def outside_the_caches():  # (the agent's own config cache under XDG_CACHE_HOME may be written)
        return sorted(str(p) for p in tmp_path.rglob("*") if not p.is_relative_to(tmp_path / "cache"))

    before = outside_the_caches()
    result = run_agent(f"experiment={summary}", f"{key}=../../escaped.json", f"action={action}", cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    line = result.stderr.strip().splitlines()
    assert len(line) == 1 and f"{key}=../../escaped.json: a relative path must stay inside" in line[0], result.stderr
    assert outside_the_caches() == before  # nothing written anywhere
    assert not caches["hf"].exists() and not (caches["xdg"] / "inspect_ai").exists()
    assert not (tmp_path.parent / "escaped.json").exists()


def test_relative_manifest_resolves_in_the_state_folder_not_the_cwd(tmp_path, caches):
    write_records(tmp_path / "exp" / "a.json", 3)
    summary = write_summary(tmp_path / "exp", [{"name": "a", "dataset": "a.json"}])
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    result = run_agent(f"experiment={summary}", "manifest=sub/m.json", "log_file=sub/a.log", "verify=false", cwd=elsewhere)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "exp" / "sub" / "m.json").is_file() and (tmp_path / "exp" / "sub" / "a.log").is_file()
    assert list(elsewhere.iterdir()) == []
    gate = run_agent(f"experiment={summary}", "manifest=sub/m.json", "action=check", cwd=elsewhere)
    assert gate.returncode == 0, gate.stderr
    # an absolute path is the user's explicit choice
    target = tmp_path / "abs" / "m.json"
    target.parent.mkdir()
    result = run_agent(f"experiment={summary}", f"manifest={target}", "verify=false")
    assert result.returncode == 0 and target.is_file(), result.stderr


# --- ask under a real pseudo-terminal ------------------------------------------------------------------


def _ask_experiment(tmp_path: Path) -> Path:
    """One dataset is missing: policy=ask has to ask."""
    write_records(tmp_path / "exp" / "a.json", 3)
    return write_summary(tmp_path / "exp", [{"name": "a", "dataset": "a.json"}, {"name": "b", "dataset": "gone.json"}])


def _run_on_pty(args: List[str], answer: bytes, timeout: float = 300):
    """Run the CLI with a pseudo-terminal as its controlling terminal and stdin/stdout/
    stderr; send `answer` once the prompt shows. Returns (exit code, everything shown)."""
    pid, fd = pty.fork()
    if pid == 0:  # the child: exec the agent on the terminal
        os.execv(CLI, [CLI, *args])
    shown = b""
    sent = False
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.5)
        if ready:
            try:
                chunk = os.read(fd, 4096)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            shown += chunk
        if not sent and b"[y/N]" in shown:
            os.write(fd, answer)
            sent = True
    else:
        os.kill(pid, signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    os.close(fd)
    return os.waitstatus_to_exitcode(status), shown.decode(errors="replace"), sent


@pytest.mark.parametrize("answer, code, decision", [
    (b"y\n", 0, "policy=ask: answered yes"),
    (b"yes\n", 0, "policy=ask: answered yes"),
    (b"n\n", 1, "policy=ask: answered no"),
    (b"\n", 1, "policy=ask: answered no"),  # the default is No
    (b"\x04", 1, "policy=ask: answered no"),  # Ctrl-D at the start of a line: end of input
    (b"\x03", 1, "policy=ask: answered no"),  # Ctrl-C: the terminal sends SIGINT
])
def test_ask_on_a_real_terminal(tmp_path, caches, answer, code, decision):
    summary = _ask_experiment(tmp_path)
    exit_code, shown, sent = _run_on_pty([f"experiment={summary}", "policy=ask", "verify=false"], answer)
    assert sent, shown
    assert "Continue with eval submission anyway? [y/N]" in shown
    assert exit_code == code, shown
    assert decision in shown and "Traceback" not in shown
    doc = json.loads((tmp_path / "exp" / ".cluster-agent" / "manifest.json").read_text())
    assert doc["decision"] == ("proceed" if code == 0 else "stop")


@pytest.mark.parametrize("stdin", ["devnull", "open-pipe"])
def test_ask_without_a_terminal_never_waits(tmp_path, caches, stdin):
    """stdin closed, or a pipe nobody writes to and nobody closes: not a terminal, so the
    agent must not read it. The timeout only guards against a hang (no timing asserted)."""
    summary = _ask_experiment(tmp_path)
    proc = subprocess.Popen([CLI, f"experiment={summary}", "policy=ask", "verify=false"],
                            stdin=subprocess.DEVNULL if stdin == "devnull" else subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=300) if stdin == "devnull" else _wait_keep_stdin_open(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 1, err
    assert "policy=ask without a terminal: doing policy.non_interactive=stop" in err
    assert "[y/N]" not in err + out


def _wait_keep_stdin_open(proc: subprocess.Popen):
    proc.wait(timeout=300)  # stdin stays open the whole time
    return proc.stdout.read(), proc.stderr.read()
