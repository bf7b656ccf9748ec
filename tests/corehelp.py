"""Small helpers shared by the core (issue 2) test files; fixtures live in conftest.py."""

from __future__ import annotations

import fcntl
import json
import os
import re
import select
import shutil
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path
from typing import Dict, List, Optional

from conftest import CLI, EXAMPLES

LINE = re.compile(r"^\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\] ([A-Z][A-Z_]*): (.*)$")


def cache_env(root: Path) -> Dict[str, str]:
    """Cache roots under `root`, for module-scoped fixtures (the `caches` fixture is per test)."""
    return {"HF_DATASETS_CACHE": str(root / "hf-datasets"), "HF_HOME": str(root / "hf-home"),
            "XDG_CACHE_HOME": str(root / "xdg"), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


def copy_example(dest: Path) -> Path:
    shutil.copytree(EXAMPLES, dest, ignore=shutil.ignore_patterns(".cluster-agent", "logs"))
    return dest / "experiment_summary.yaml"


def prebuilt_example(root: Path) -> tuple:
    """A copy of the bundled example under `root`, pre-built (verify=false) into caches
    under root/cache: (job env for those caches, summary path)."""
    from conftest import run_agent

    env = cache_env(root / "cache")
    summary = copy_example(root / "exp")
    proc = run_agent(f"experiment={summary}", "verify=false", env=env)
    assert proc.returncode == 0, proc.stderr
    return env, summary


def events(stderr: str) -> List[tuple]:
    """(EVENT, message) for every log line of DESIGN §6 format."""
    return [m.groups() for m in map(LINE.match, stderr.splitlines()) if m]


def messages(stderr: str, name: str) -> List[str]:
    return [msg for ev, msg in events(stderr) if ev == name]


def assert_one_error_line(proc: subprocess.CompletedProcess, code: int = 2) -> str:
    """Exit `code`, exactly one stderr line `cluster-agent: error: ...`, no traceback."""
    lines = proc.stderr.splitlines()
    assert proc.returncode == code, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("cluster-agent: error: "), lines[0]
    return lines[0]


def snapshot_bytes(path: Path) -> Optional[bytes]:
    return path.read_bytes() if path.exists() else None


def run_python(code: str, env: Dict[str, str], timeout: float = 600) -> subprocess.CompletedProcess:
    """Run code in a fresh interpreter (the project's venv) with exactly the given job env on top
    of the current one; stdout's last line is expected to be JSON."""
    full = dict(os.environ)
    full.update(env)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=full,
                          timeout=timeout)


def load_rows_many(calls: List[dict], env: Dict[str, str]) -> List[List[dict]]:
    """The real consumer calls `datasets.load_dataset(...)` in one fresh process (what a job
    does after exporting `env`); returns each call's rows."""
    code = ("import json, os, sys, datasets\n"
            "out = []\n"
            "for c in json.loads(sys.argv[1]):\n"
            "    os.chdir(c.get('cwd') or os.getcwd())  # the job runs in the folder the manifest names\n"
            "    kw = {'data_files': c['data_files']}\n"
            "    if c.get('field') is not None:\n"
            "        kw['field'] = c['field']\n"
            "    out.append(datasets.load_dataset(c['builder'], split=c['split'], **kw).to_list())\n"
            "print(json.dumps(out))\n")
    full = dict(os.environ)
    full.update(env)
    proc = subprocess.run([sys.executable, "-c", code, json.dumps(calls)], capture_output=True, text=True,
                          env=full, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def load_rows(call: dict, env: Dict[str, str]) -> List[dict]:
    return load_rows_many([call], env)[0]


def run_on_pty(args, env, answer=None, timeout=300, prompt="[y/N]"):
    """Run the CLI with a real pseudo-terminal as stdin/stdout/stderr; type `answer` at the prompt."""
    master, slave = os.openpty()
    # a fresh pty is 0x0 characters; a real terminal window has a size (tqdm draws nothing at 0 columns)
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 160, 0, 0))
    full = dict(os.environ)
    full.update(env)
    proc = subprocess.Popen([CLI, *args], stdin=slave, stdout=slave, stderr=slave, env=full,
                            start_new_session=True, close_fds=True)
    os.close(slave)
    out, answered, deadline = b"", False, time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.5)
            if ready:
                try:
                    chunk = os.read(master, 4096)
                except OSError:  # EIO: the agent exited and closed the terminal
                    break
                if not chunk:
                    break
                out += chunk
                if answer is not None and not answered and prompt.encode() in out:
                    os.write(master, answer.encode() + b"\n")
                    answered = True
            elif proc.poll() is not None:
                break
        else:
            proc.kill()
            raise AssertionError(f"agent still running after {timeout} s on a terminal; output: {out[-2000:]!r}")
        return proc.wait(timeout=60), out.decode("utf-8", "replace"), answered
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()


__all__ = ["CLI", "LINE", "cache_env", "copy_example", "events", "messages", "assert_one_error_line",
           "snapshot_bytes", "run_python", "load_rows", "load_rows_many", "run_on_pty"]


def as_unprivileged() -> List[str]:
    """Command prefix that runs a program as an ordinary user, so permission bits bite
    (root bypasses them). As root: setpriv to nobody; otherwise nothing is needed."""
    if os.geteuid() != 0:
        return []
    if shutil.which("setpriv") is None:
        import pytest

        pytest.skip("running as root without setpriv: permission bits cannot be tested")
    return ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]


def shared_tmp(prefix: str) -> Path:
    """A world-accessible scratch folder (pytest's tmp_path is 0700, closed to other users)."""
    import tempfile

    folder = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    folder.chmod(0o777)
    return folder
